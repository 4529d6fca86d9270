"""Featurizer contract on real photos: shape, unit norm, batch invariance, file route, cache."""

import numpy as np
import pytest

from core.data import ImageRecord
from core.errors import ImageLoadError
from core.featurize import FeatureCache, embed_files
from core.images import content_hash
from core.preprocessing import Preprocessing, fingerprint_of, preprocess


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
