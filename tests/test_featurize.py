"""Featurizer contract on real photos: shape, unit norm, batch invariance, file route, cache."""

import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import featurize
from core.data import ImageRecord
from core.errors import ImageLoadError
from core.featurize import (
    FeatureCache,
    ParallelFeaturizer,
    SingleThreadEmbedder,
    default_workers,
    embed_files,
    iter_embed_files,
)
from core.images import content_hash
from core.preprocessing import Preprocessing, fingerprint_of, preprocess, resize_crop

ROOT = Path(__file__).resolve().parent.parent


def test_embeddings_are_unit_rows_and_batch_invariant(lite0_featurizer, tiny_images):
    _, images = tiny_images
    all_at_once = lite0_featurizer.embed(images[:6])
    assert all_at_once.shape == (6, 1280) and all_at_once.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(all_at_once, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([lite0_featurizer.embed([image]) for image in images[:6]])
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)


def test_file_route_equals_image_route(lite0_featurizer, tiny_images):
    paths, images = tiny_images
    from_files = embed_files(lite0_featurizer, paths[:5], batch_size=2)
    np.testing.assert_allclose(from_files, lite0_featurizer.embed(images[:5]), atol=1e-5)


def test_same_label_photos_are_closer_than_other_labels(lite0_featurizer, tiny_images):
    """Pretrained features already carry the signal the product relies on."""
    paths, images = tiny_images
    embeddings = lite0_featurizer.embed(images)
    labels = np.array([path.parent.name for path in paths])
    similarity = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.05


def test_preprocess_output_and_normalisation():
    from PIL import Image

    spec = Preprocessing(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    array = preprocess(Image.new("RGB", (100, 50), (255, 0, 127)), spec)
    assert array.shape == (3, 32, 32) and array.dtype == np.float32
    np.testing.assert_allclose(array[:, 16, 16], [1.0, -1.0, 127 / 255 * 2 - 1], atol=1e-6)


class CountingFeaturizer:
    """A stand-in featurizer that records how many images it was asked to embed."""

    preprocessing = Preprocessing(8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    fingerprint = "counting-test"

    def __init__(self):
        self.calls = 0

    def embed_pixels(self, pixels):
        self.calls += len(pixels)
        return pixels.reshape(len(pixels), -1)[:, :4].astype(np.float32) + 1.0


def test_feature_cache_computes_only_missing_images(tmp_path, tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:4]
    records = [ImageRecord(p, p.parent.name, content_hash(p.read_bytes())) for p in paths]
    cache = FeatureCache(tmp_path / "features")
    featurizer = CountingFeaturizer()
    first = cache.embed(featurizer, records[:3])
    assert featurizer.calls == 3
    second = cache.embed(featurizer, records)
    assert featurizer.calls == 4  # only the new image
    np.testing.assert_array_equal(second[:3], first)
    cache.embed(featurizer, list(reversed(records)))
    assert featurizer.calls == 4
    assert not list((tmp_path / "features").glob(".*tmp*"))  # no temp files left behind


def test_embed_files_names_a_bad_file(lite0_featurizer, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        embed_files(lite0_featurizer, [bad])


def test_fingerprint_depends_on_weights_and_preprocessing():
    spec = Preprocessing(224, 256, (0.5,) * 3, (0.5,) * 3)
    base = fingerprint_of("net", "sha256:1", spec)
    assert base == fingerprint_of("net", "sha256:1", spec)
    assert base != fingerprint_of("net", "sha256:2", spec)
    assert base != fingerprint_of("net", "sha256:1", Preprocessing(224, 256, (0.5,) * 3, (0.25,) * 3))


class MeanColourFeaturizer:
    """A stand-in featurizer whose embedding is a function of the pixels: mean colour and mean top-left block."""

    preprocessing = Preprocessing(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    fingerprint = "mean-colour-test"

    def __init__(self):
        self.calls = 0

    def embed_pixels(self, pixels):
        self.calls += len(pixels)
        pixels = pixels.astype(np.float32)
        return np.concatenate([pixels.mean((1, 2)), pixels[:, :4, :4].mean((1, 2))], axis=1) + 1.0


def records_of(paths):
    return [ImageRecord(p, p.parent.name, content_hash(p.read_bytes())) for p in paths]


def test_file_changed_after_listing_never_poisons_the_cache(tmp_path, tiny_dataset):
    """The cache key is the hash of the bytes decoded: a changed-then-restored file gets its own embedding back."""
    first, other = sorted(tiny_dataset.glob("*/*.jpg"))[:2]
    photo = tmp_path / "photo.jpg"
    shutil.copy(first, photo)
    record = records_of([photo])[0]  # listed ("prepared") with the original content
    expected = FeatureCache(tmp_path / "fresh").embed(MeanColourFeaturizer(), [record])
    cache = FeatureCache(tmp_path / "features")
    shutil.copy(other, photo)  # changed between prepare and featurize
    changed = cache.embed(MeanColourFeaturizer(), [record])
    assert not np.allclose(changed, expected)  # the new content was embedded...
    assert record.sha256 not in cache.load("mean-colour-test")  # ...but not under the old content's hash
    shutil.copy(first, photo)  # restored
    featurizer = MeanColourFeaturizer()
    np.testing.assert_array_equal(cache.embed(featurizer, [record]), expected)
    assert featurizer.calls == 1


def test_one_worker_and_many_give_the_same_rows_in_order(tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:7]
    one = embed_files(MeanColourFeaturizer(), paths, batch_size=3, workers=1)
    many = embed_files(MeanColourFeaturizer(), paths, batch_size=3, workers=4)
    single = np.concatenate([embed_files(MeanColourFeaturizer(), [path], batch_size=1) for path in paths])
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one, single)


def test_embed_files_rejects_a_zero_batch_size(tiny_dataset):
    with pytest.raises(ValueError, match="batch_size"):
        embed_files(MeanColourFeaturizer(), sorted(tiny_dataset.glob("*/*.jpg"))[:1], batch_size=0)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong arrays"])
def test_corrupt_cache_file_is_a_logged_miss(tmp_path, tiny_dataset, caplog, damage):
    records = records_of(sorted(tiny_dataset.glob("*/*.jpg"))[:3])
    cache = FeatureCache(tmp_path / "features")
    expected = cache.embed(MeanColourFeaturizer(), records)
    path = cache.path_for("mean-colour-test")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    else:
        np.savez(path, sha256=np.array(["a", "b"]), embeddings=np.zeros((3, 6), np.float32))
    featurizer = MeanColourFeaturizer()
    with caplog.at_level(logging.WARNING, logger="core.featurize"):
        again = cache.embed(featurizer, records)
    assert featurizer.calls == 3
    np.testing.assert_array_equal(again, expected)
    assert any(str(path) in message and "unreadable" in message for message in caplog.messages)
    with caplog.at_level(logging.WARNING, logger="core.featurize"):
        caplog.clear()
        cache.embed(featurizer, records)  # the rewritten file is whole again
    assert featurizer.calls == 3 and not caplog.messages


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    from pathlib import Path
    from core.data import ImageRecord
    from core.featurize import FeatureCache
    from core.images import content_hash
    from core.preprocessing import Preprocessing

    class Slow:
        preprocessing = Preprocessing(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        fingerprint = "mean-colour-test"
        def embed_pixels(self, pixels):
            time.sleep(0.15)
            pixels = pixels.astype(np.float32)
            return np.concatenate([pixels.mean((1, 2)), pixels[:, :4, :4].mean((1, 2))], axis=1) + 1.0

    paths = [Path(line) for line in sys.argv[2:]]
    records = [ImageRecord(p, p.parent.name, content_hash(p.read_bytes())) for p in paths]
    progress = lambda done, total: print(done, flush=True)
    FeatureCache(sys.argv[1], save_every_s=0).embed(Slow(), records, batch_size=2, progress=progress)
    print("finished", flush=True)
    """
)


def test_killed_featurize_keeps_finished_chunks_and_a_rerun_embeds_only_the_rest(tmp_path, tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:12]
    directory = tmp_path / "features"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD.format(root=str(ROOT)), str(directory), *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reported = [child.stdout.readline().strip() for _ in range(3)]
        assert reported == ["2", "4", "6"], child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    cache = FeatureCache(directory)
    saved = len(cache.load("mean-colour-test"))
    assert 6 <= saved < len(paths) and cache.part_paths("mean-colour-test")
    featurizer = MeanColourFeaturizer()
    embeddings = cache.embed(featurizer, records_of(paths))
    assert featurizer.calls == len(paths) - saved
    np.testing.assert_array_equal(embeddings, embed_files(MeanColourFeaturizer(), paths))
    assert not cache.part_paths("mean-colour-test")  # merged into the main file
    assert len(cache.load("mean-colour-test")) == len(paths)


def test_bad_file_mid_run_keeps_what_was_embedded_before_it(tmp_path, tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:4]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    records = [*records_of(paths), ImageRecord(bad, "x", "0" * 64)]
    cache = FeatureCache(tmp_path / "features", save_every_s=3600)
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        cache.embed(MeanColourFeaturizer(), records, batch_size=2)
    featurizer = MeanColourFeaturizer()
    cache.embed(featurizer, records[:4], batch_size=2)
    assert featurizer.calls == 0


def test_resize_of_the_crop_matches_resize_then_crop(tiny_images):
    """Resampling only the centre crop gives the pixels of resizing the whole image, then cropping."""
    spec = Preprocessing(224, 256, (0.5,) * 3, (0.5,) * 3, "bicubic")
    _, images = tiny_images
    for image in [*images, images[0].resize((2400, 1800))]:
        width, height = image.size
        scale = 256 / min(width, height)
        size = (max(224, round(width * scale)), max(224, round(height * scale)))
        left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
        whole = image.resize(size, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
        difference = np.abs(np.asarray(whole, np.int16) - resize_crop(image, spec).astype(np.int16))
        assert difference.mean() < 0.3 and np.percentile(difference, 99.9) <= 2, (image.size, difference.max())


def test_decode_pool_follows_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert default_workers() == 3


class SideBySideFeaturizer(MeanColourFeaturizer):
    """A ParallelFeaturizer stand-in: its single-thread embedder meets a second call at a barrier, so it only
    returns if two batches really are embedded at the same time."""

    def __init__(self):
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=10)
        self.started = itertools.count()
        self.multi_threaded_calls = 0

    def embed_pixels(self, pixels):
        self.multi_threaded_calls += 1
        return super().embed_pixels(pixels)

    def single_thread_embedder(self):
        def embed(pixels):
            if next(self.started) < 2:
                self.barrier.wait()  # BrokenBarrierError unless another batch is being embedded meanwhile
            return MeanColourFeaturizer.embed_pixels(self, pixels)

        return SingleThreadEmbedder(embed, 2)


def test_parallel_featurizer_embeds_batches_side_by_side_in_order(tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:7]
    expected = embed_files(MeanColourFeaturizer(), paths, batch_size=2)
    assert isinstance(SideBySideFeaturizer(), ParallelFeaturizer)
    featurizer = SideBySideFeaturizer()
    np.testing.assert_array_equal(embed_files(featurizer, paths, batch_size=2, model_workers=2), expected)
    assert featurizer.multi_threaded_calls == 0
    starts = [batch.start for batch in iter_embed_files(SideBySideFeaturizer(), paths, 2, model_workers=3)]
    assert starts == [0, 2, 4, 6]


def test_one_model_worker_embeds_one_batch_at_a_time_on_the_featurizers_threads(tiny_dataset):
    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:5]
    featurizer = SideBySideFeaturizer()
    np.testing.assert_array_equal(
        embed_files(featurizer, paths, batch_size=2, model_workers=1), embed_files(MeanColourFeaturizer(), paths, 2)
    )
    assert featurizer.multi_threaded_calls == 3 and next(featurizer.started) == 0


def test_parallel_pipeline_yields_the_batches_before_a_bad_file_then_names_it(tiny_dataset, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a JPEG")
    good = sorted(tiny_dataset.glob("*/*.jpg"))
    paths = [*good[:4], bad, *good[4:6]]
    starts = []
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        for batch in iter_embed_files(SideBySideFeaturizer(), paths, batch_size=2, model_workers=2):
            starts.append(batch.start)
    assert starts == [0, 2]


def tiny_onnx_model(path: Path, size: int = 8, dim: int = 4) -> Path:
    """A workbench-format ONNX featurizer small enough to build in a test: pixels -> mean colour and a projection."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata

    spec = Preprocessing(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    weights = np.random.default_rng(0).normal(size=(size * size * 3, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", [INPUT_NAME], ["floats"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["floats"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["raw"]),
            helper.make_node("LpNormalization", ["raw"], [OUTPUT_NAME], axis=1, p=2),
        ],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata("tiny", "test:0", spec, dim, fingerprint_of("tiny", "test:0", spec))
    helper.set_model_props(model, metadata.to_props())
    onnx.save(model, path)
    return path


def test_onnx_single_thread_embedder_equals_embed_pixels_from_many_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

    featurizer = OnnxFeaturizer(tiny_onnx_model(tmp_path / "tiny.onnx"), OrtConfig(intra_op_threads=3))
    assert isinstance(featurizer, ParallelFeaturizer)
    pixels = np.random.default_rng(1).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    expected = featurizer.embed_pixels(pixels)
    parallel = featurizer.single_thread_embedder()
    assert parallel is not None and parallel.runs == 3  # the config's thread budget
    with ThreadPoolExecutor(3) as pool:
        side_by_side = np.concatenate(list(pool.map(parallel.embed, [pixels[i : i + 3] for i in range(0, 9, 3)])))
    np.testing.assert_allclose(side_by_side, expected, atol=1e-6)
    options = parallel.embed.args[0].get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="uint8"):
        parallel.embed(pixels.astype(np.float32))
    batched = list(featurize.embed_pixel_batches(featurizer, [pixels[:5], pixels[5:]]))
    np.testing.assert_allclose(np.concatenate(batched), expected, atol=1e-6)


def test_onnx_single_thread_runs_follow_the_thread_budget_and_reuse_sessions(tmp_path, monkeypatch):
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

    path = tiny_onnx_model(tmp_path / "tiny.onnx")
    single = OnnxFeaturizer(path, OrtConfig(intra_op_threads=1))
    parallel = single.single_thread_embedder()
    assert parallel is not None and parallel.runs == 1 and parallel.embed.args[0] is single.session  # type: ignore[attr-defined]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    default = OnnxFeaturizer(path)
    first, second = default.single_thread_embedder(), default.single_thread_embedder()
    assert first is not None and second is not None and first.runs == 4
    assert first.embed.args[0] is second.embed.args[0] is not default.session  # type: ignore[attr-defined]


def test_parallel_model_side_splits_each_batch_over_the_workers(tiny_dataset):
    """Each batch is split over the single-threaded runs, so about one batch of images is in the model at once."""

    class PartRecorder(MeanColourFeaturizer):
        def __init__(self):
            super().__init__()
            self.parts: list[int] = []
            self.in_model = 0
            self.most_in_model = 0
            self.lock = threading.Lock()

        def single_thread_embedder(self):
            def embed(pixels):
                with self.lock:
                    self.parts.append(len(pixels))
                    self.in_model += len(pixels)
                    self.most_in_model = max(self.most_in_model, self.in_model)
                time.sleep(0.01)
                with self.lock:
                    self.in_model -= len(pixels)
                return MeanColourFeaturizer.embed_pixels(self, pixels)

            return SingleThreadEmbedder(embed, 2)

    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:11]
    featurizer = PartRecorder()
    np.testing.assert_array_equal(
        embed_files(featurizer, paths, batch_size=5, model_workers=2), embed_files(MeanColourFeaturizer(), paths, 5)
    )
    assert featurizer.parts == [3, 2, 3, 2, 1] and featurizer.most_in_model <= 2 * 3  # one part per run
