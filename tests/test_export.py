"""ONNX export and the onnxruntime featurizer: parity with PyTorch on real photos, metadata, bad files, providers."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from core.backbones import build_backbone
from core.errors import ArtifactError
from core.featurize import TorchFeaturizer, embed_files
from core.preprocessing import preprocess, resize_crop
from export.metadata import ModelMetadata
from export.onnx_export import MAX_IR_VERSION, ExportConfig, export_onnx, pin_ir_version
from export.onnx_featurizer import OnnxFeaturizer, OrtConfig, cuda_device_count, default_providers

MIN_COSINE = 0.9999
TOP_K = 10


@pytest.fixture(scope="session")
def exported(tmp_path_factory, lite0_featurizer):
    """The pretrained default exported with batch 2."""
    path = tmp_path_factory.mktemp("onnx") / "lite0.onnx"
    return export_onnx(
        lite0_featurizer.backbone, path, config=ExportConfig(export_batch_size=2, validation_batch_size=3)
    )


@pytest.fixture(scope="session")
def onnx_featurizer(exported):
    return OnnxFeaturizer(exported.path, OrtConfig(intra_op_threads=2))


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory):
    """Pretrained weights perturbed by seeded noise: a stand-in for a fine-tuned model, with its run id."""
    backbone = build_backbone("efficientnet_lite0")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in backbone.model.parameters():  # not the BatchNorm buffers: a negative variance is no model
            if tensor.numel() > 1:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05 * tensor.std())
    backbone = dataclasses.replace(backbone, weights_id="finetune-test:seed0")
    path = tmp_path_factory.mktemp("onnx") / "finetuned.onnx"
    result = export_onnx(backbone, path, training_run="run-2024-test")
    return TorchFeaturizer(backbone, device="cpu"), OnnxFeaturizer(path, OrtConfig(intra_op_threads=2)), result


def cosine_rows(a, b):
    """Per-row cosine similarity, as an explicit loop."""
    return np.array([float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a, b, strict=True)])


def top_k_lists(embeddings, k):
    """Indices of the k most similar gallery images per query (the gallery itself), by a plain loop."""
    lists = []
    for query in embeddings:
        scores = [float(query @ item) for item in embeddings]
        lists.append(sorted(range(len(scores)), key=lambda index: -scores[index])[:k])
    return lists


def assert_parity(torch_featurizer, ort_featurizer, images, label):
    expected, got = torch_featurizer.embed(images), ort_featurizer.embed(images)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = cosine_rows(got, expected)
    max_abs_diff = float(np.abs(got - expected).max())
    print(f"{label}: {len(images)} images, max |diff| {max_abs_diff:.3e}, min cosine {cosines.min():.8f}")
    assert cosines.min() >= MIN_COSINE, cosines
    assert max_abs_diff < 1e-4
    return max_abs_diff


def test_export_validates_on_another_batch_size(exported, lite0_featurizer):
    assert exported.validation.batch_size == 3 != 2
    assert exported.validation.max_abs_diff < 1e-4 and exported.validation.min_cosine >= MIN_COSINE
    assert exported.metadata.fingerprint == lite0_featurizer.fingerprint
    assert exported.path.is_file() and not list(exported.path.parent.glob(".*.tmp*"))


def test_onnx_matches_pytorch_on_five_other_real_photos(onnx_featurizer, lite0_featurizer, tiny_images):
    _, images = tiny_images
    assert_parity(lite0_featurizer, onnx_featurizer, images[1::4][:5], "pretrained")


def test_retrieval_top10_is_identical(onnx_featurizer, lite0_featurizer, tiny_images):
    _, images = tiny_images
    torch_lists = top_k_lists(lite0_featurizer.embed(images), TOP_K)
    onnx_lists = top_k_lists(onnx_featurizer.embed(images), TOP_K)
    assert onnx_lists == torch_lists


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_fine_tuned_weights_export_with_parity(finetuned, tiny_images, lite0_featurizer):
    torch_featurizer, ort_featurizer, result = finetuned
    _, images = tiny_images
    assert_parity(torch_featurizer, ort_featurizer, images[::4][:5], "fine-tuned stand-in")
    assert top_k_lists(ort_featurizer.embed(images), TOP_K) == top_k_lists(torch_featurizer.embed(images), TOP_K)
    assert ort_featurizer.fingerprint == torch_featurizer.fingerprint != lite0_featurizer.fingerprint
    assert ort_featurizer.metadata.training_run == "run-2024-test" == result.metadata.training_run


def test_metadata_round_trip(exported, onnx_featurizer, lite0_featurizer):
    import onnx

    metadata = onnx_featurizer.metadata
    assert metadata == exported.metadata == ModelMetadata.from_props(metadata.to_props(), "round trip")
    assert metadata.preprocessing == lite0_featurizer.preprocessing  # floats round-trip exactly
    assert (metadata.backbone, metadata.feature_dim, metadata.training_run) == ("efficientnet_lite0", 1280, "")
    assert metadata.weights_id == lite0_featurizer.backbone.weights_id
    assert {"torch", "onnx", "exporter"} <= set(metadata.versions)
    props = {entry.key: entry.value for entry in onnx.load(str(exported.path)).metadata_props}
    assert props["workbench.input_size"] == "224" and props["workbench.interpolation"] == "bicubic"


def test_fingerprint_is_the_torch_one(onnx_featurizer, lite0_featurizer):
    assert onnx_featurizer.fingerprint == lite0_featurizer.fingerprint
    assert onnx_featurizer.preprocessing == lite0_featurizer.preprocessing


def test_ir_version_loadable_by_onnxruntime(exported):
    import onnx
    import onnxruntime

    model = onnx.load(str(exported.path))
    assert model.ir_version == exported.ir_version <= MAX_IR_VERSION
    # A model built by this onnx package gets its newest IR version; pinning brings it back in range.
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "g", [value("x", onnx.TensorProto.FLOAT, [1])], [value("y", onnx.TensorProto.FLOAT, [1])]
    )
    fresh = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    fresh.ir_version = onnx.IR_VERSION
    assert pin_ir_version(fresh) == 8 == fresh.ir_version
    session = onnxruntime.InferenceSession(fresh.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones(1, np.float32)})[0].tolist() == [1.0]


def test_resize_crop_is_preprocess_without_normalisation(tiny_images, lite0_featurizer):
    _, images = tiny_images
    spec = lite0_featurizer.preprocessing
    for image in images:
        pixels = resize_crop(image, spec)
        normalised = (pixels.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(
            spec.std, np.float32
        )
        np.testing.assert_array_equal(normalised.transpose(2, 0, 1), preprocess(image, spec))


def test_array_and_file_routes_equal_the_image_route(onnx_featurizer, tiny_images):
    paths, images = tiny_images
    from_images = onnx_featurizer.embed(images[:5])
    batch = np.stack([preprocess(image, onnx_featurizer.preprocessing) for image in images[:5]])
    np.testing.assert_array_equal(onnx_featurizer.embed_arrays(batch), from_images)  # exact: same uint8 pixels
    np.testing.assert_allclose(embed_files(onnx_featurizer, paths[:5], batch_size=2), from_images, atol=1e-6)
    one_by_one = np.concatenate([onnx_featurizer.embed([image]) for image in images[:5]])
    np.testing.assert_allclose(one_by_one, from_images, atol=1e-5)
    assert onnx_featurizer.embed([]).shape == (0, 1280)


def test_wrong_input_shape_is_a_clear_error(onnx_featurizer):
    with pytest.raises(ValueError, match=r"uint8\[N, 224, 224, 3\]"):
        onnx_featurizer.embed_pixels(np.zeros((1, 3, 224, 224), np.uint8))


def test_missing_and_corrupt_files_are_named(tmp_path, exported):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ArtifactError, match="nope.onnx: ONNX model not found"):
        OnnxFeaturizer(missing)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ArtifactError, match="garbage.onnx: not a loadable ONNX model"):
        OnnxFeaturizer(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.path.read_bytes()[:100_000])
    with pytest.raises(ArtifactError, match="truncated.onnx: not a loadable ONNX model"):
        OnnxFeaturizer(truncated)


def test_model_without_our_metadata_is_refused(tmp_path):
    import onnx

    node = onnx.helper.make_node("ReduceMean", ["pixels"], ["embedding"], axes=[1, 2], keepdims=0)
    graph = onnx.helper.make_graph(
        [node],
        "foreign",
        [onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["batch", 4, 4, 3])],
        [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    pin_ir_version(model)
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="foreign.onnx: no workbench metadata"):
        OnnxFeaturizer(path)


def test_tampered_metadata_is_refused(tmp_path, exported):
    import onnx

    model = onnx.load(str(exported.path))
    for entry in model.metadata_props:
        if entry.key == "workbench.resize_size":
            entry.value = "300"
    path = tmp_path / "tampered.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="tampered.onnx: stored fingerprint .* does not match"):
        OnnxFeaturizer(path)


def test_failed_validation_leaves_the_previous_file(tmp_path, lite0_featurizer):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ArtifactError, match="ONNX and PyTorch disagree"):
        export_onnx(lite0_featurizer.backbone, target, config=ExportConfig(atol=-1.0))
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with pytest.raises(ValueError, match="must differ"):
        export_onnx(
            lite0_featurizer.backbone, target, config=ExportConfig(export_batch_size=2, validation_batch_size=2)
        )


def test_providers_are_cpu_only_and_quiet_without_a_gpu(exported, capfd, caplog):
    if cuda_device_count() > 0:
        pytest.skip("a CUDA device is present: CUDA is expected first")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        featurizer = OnnxFeaturizer(exported.path)
        featurizer.embed_pixels(np.zeros((1, 224, 224, 3), np.uint8))
    assert default_providers() == ["CPUExecutionProvider"]
    assert featurizer.providers == ["CPUExecutionProvider"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    captured = capfd.readouterr()
    assert "[E:" not in captured.err and "error" not in captured.err.lower(), captured.err


def test_export_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, export; print(' '.join(sorted(sys.modules)))"
    modules = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not {"torch", "onnx", "onnxruntime", "streamlit"} & modules
    assert not any(name == "workbench" or name.startswith("workbench.") for name in modules)


def test_onnx_featurizer_for_exports_once_then_reuses(tmp_path, lite0_featurizer, tiny_images, monkeypatch):
    import export.onnx_export as onnx_export

    exports = []
    real_export = onnx_export.export_onnx
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: exports.append(a) or real_export(*a, **k))
    backbone = lite0_featurizer.backbone
    first = onnx_export.onnx_featurizer_for(backbone, tmp_path / "onnx")
    assert len(exports) == 1 and first.path == tmp_path / "onnx" / f"{lite0_featurizer.fingerprint}.onnx"
    assert first.fingerprint == lite0_featurizer.fingerprint
    assert first.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    again = onnx_export.onnx_featurizer_for(backbone, tmp_path / "onnx")
    assert len(exports) == 1 and again.fingerprint == lite0_featurizer.fingerprint
    _, images = tiny_images
    np.testing.assert_allclose(again.embed(images[:4]), lite0_featurizer.embed(images[:4]), atol=1e-5)


@pytest.mark.slow
def test_onnx_featurizer_for_reexports_a_corrupt_or_foreign_cached_file(tmp_path, lite0_featurizer, exported, caplog):
    from export.onnx_export import onnx_featurizer_for

    path = tmp_path / f"{lite0_featurizer.fingerprint}.onnx"
    path.write_bytes(exported.path.read_bytes()[:5000])  # truncated
    with caplog.at_level(logging.WARNING, logger="export.onnx_export"):
        featurizer = onnx_featurizer_for(lite0_featurizer.backbone, tmp_path)
    assert any(str(path) in message and "exporting it again" in message for message in caplog.messages)
    assert featurizer.fingerprint == lite0_featurizer.fingerprint and path.stat().st_size > 100_000


@pytest.mark.slow
def test_onnx_featurizer_for_racing_callers_export_once(tmp_path, lite0_featurizer, monkeypatch):
    """Two callers at once (threads here; the lock is a file lock, so processes too): one export, both served."""
    from concurrent.futures import ThreadPoolExecutor

    import export.onnx_export as onnx_export

    exports = []
    real_export = onnx_export.export_onnx
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: exports.append(a) or real_export(*a, **k))
    with ThreadPoolExecutor(2) as pool:
        featurizers = list(
            pool.map(lambda _: onnx_export.onnx_featurizer_for(lite0_featurizer.backbone, tmp_path), [0, 1])
        )
    assert len(exports) == 1
    assert [f.fingerprint for f in featurizers] == [lite0_featurizer.fingerprint] * 2
