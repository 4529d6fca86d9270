"""int8 quantization of an exported featurizer: own fingerprint, metadata kept, close to float32, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from core.backbones import Backbone
from core.errors import ArtifactError
from core.preprocessing import Preprocessing, fingerprint_of
from export.onnx_export import export_onnx
from export.onnx_featurizer import OnnxFeaturizer, OrtConfig
from export.quantize import quantize_dynamic_onnx, quantize_onnx, quantize_static_onnx

SIZE = 32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small seeded CNN exported like a real backbone (fast to export and to quantize)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    backbone = Backbone("tiny_cnn", model, Preprocessing(SIZE, SIZE, (0.5,) * 3, (0.5,) * 3), "seed0", 32)
    path = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    export_onnx(backbone, path)
    return backbone, path


def smooth_pixels(rng, n):
    """Images with structure (gradients plus noise), closer to photos than uniform noise."""
    ramp = np.linspace(0, 200, SIZE)[None, :, None, None] + np.linspace(0, 50, SIZE)[None, None, :, None]
    noise = rng.normal(0, 12, (n, SIZE, SIZE, 3)) + rng.uniform(0, 40, (n, 1, 1, 3))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def test_static_int8_keeps_metadata_with_its_own_fingerprint_and_stays_close(tiny_model, tmp_path):
    backbone, path = tiny_model
    rng = np.random.default_rng(0)
    target = tmp_path / "tiny-int8.onnx"
    metadata = quantize_static_onnx(path, target, smooth_pixels(rng, 40), batch_size=16)
    assert metadata.weights_id == "seed0+int8-static"
    assert metadata.fingerprint == fingerprint_of("tiny_cnn", "seed0+int8-static", backbone.preprocessing)
    float_model = OnnxFeaturizer(path, OrtConfig(intra_op_threads=1))
    int8_model = OnnxFeaturizer(target, OrtConfig(intra_op_threads=1))
    assert int8_model.fingerprint == metadata.fingerprint != float_model.fingerprint  # never one feature cache
    assert int8_model.preprocessing == float_model.preprocessing
    held_out = smooth_pixels(rng, 7)  # not the calibration images, another batch size
    expected, got = float_model.embed_pixels(held_out), int8_model.embed_pixels(held_out)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (got * expected).sum(1).min() > 0.99
    assert not np.allclose(got, expected, atol=1e-6)  # it really is another model


def test_dynamic_int8_and_mode_names(tiny_model, tmp_path):
    _, path = tiny_model
    metadata = quantize_onnx(path, tmp_path / "dynamic.onnx", mode="dynamic")
    assert metadata.weights_id == "seed0+int8-dynamic"
    assert OnnxFeaturizer(tmp_path / "dynamic.onnx").fingerprint == metadata.fingerprint
    assert quantize_dynamic_onnx(path, tmp_path / "again.onnx") == metadata
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantize_onnx(path, tmp_path / "x.onnx", mode="int4")
    with pytest.raises(ValueError, match="calibration pixels"):
        quantize_onnx(path, tmp_path / "x.onnx", mode="static")


def test_bad_calibration_input_is_refused(tiny_model, tmp_path):
    _, path = tiny_model
    with pytest.raises(ValueError, match=r"uint8\[N>0, 32, 32, 3\]"):
        quantize_static_onnx(path, tmp_path / "x.onnx", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown calibration"):
        quantize_static_onnx(path, tmp_path / "x.onnx", np.zeros((4, SIZE, SIZE, 3), np.uint8), calibration="median")
    assert not (tmp_path / "x.onnx").exists()


def test_non_workbench_model_is_refused(tmp_path, tiny_model):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="bogus.onnx: not a loadable ONNX model"):
        quantize_dynamic_onnx(bogus, tmp_path / "out.onnx")
    foreign = tmp_path / "foreign.onnx"
    import onnx

    model = onnx.load(str(tiny_model[1]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(ArtifactError, match="foreign.onnx: no workbench metadata"):
        quantize_static_onnx(foreign, tmp_path / "out.onnx", np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert not (tmp_path / "out.onnx").exists()
