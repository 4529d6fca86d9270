"""Similarity explanations and the embedding map."""

import numpy as np
import pytest
from PIL import Image

from core.explain import difference_map, overlay, similarity_maps
from core.projection import project_2d


@pytest.fixture(scope="module")
def backbone(lite0_featurizer):
    return lite0_featurizer.backbone


def test_maps_sum_exactly_to_the_cosine_similarity(backbone, lite0_featurizer, tiny_images):
    _, images = tiny_images
    maps = similarity_maps(backbone, images[0], images[7])
    embeddings = lite0_featurizer.embed([images[0], images[7]])
    assert maps.similarity == pytest.approx(float(embeddings[0] @ embeddings[1]), abs=1e-4)
    assert maps.query_map.sum() == pytest.approx(maps.similarity, abs=1e-4)
    assert maps.result_map.sum() == pytest.approx(maps.similarity, abs=1e-4)
    assert maps.query_map.shape == (7, 7) and maps.query_pixels.shape == (224, 224, 3)


def test_difference_map_concentrates_on_the_only_changed_patch(backbone, tiny_dataset):
    # 256 px square: resized to 256 and centre-cropped by 16 px, so crop = image[16:240, 16:240]
    reference = Image.open(tiny_dataset / "landmarks" / "gc_colosseum.jpg").convert("RGB").resize((256, 256))
    patch = Image.open(tiny_dataset / "fish" / "gc_fish1.jpg").convert("RGB").resize((64, 64))
    changed = reference.copy()
    changed.paste(
        patch, (16 + 128, 16 + 32)
    )  # crop pixels rows 32..96, cols 128..192 -> feature cells rows 1-2, cols 4-5
    drop = difference_map(backbone, reference, changed)
    inside = np.zeros_like(drop, dtype=bool)
    inside[0:4, 3:7] = True  # the patch's cells, grown by one cell for the receptive field
    row, col = np.unravel_index(np.argmax(drop), drop.shape)
    assert inside[row, col], (row, col)
    positive = np.clip(drop, 0, None)
    assert positive[inside].sum() > 0.6 * positive.sum()  # 16 of 49 cells hold most of the change
    assert np.allclose(difference_map(backbone, reference, reference), 0, atol=1e-6)


def test_overlay_keeps_size_and_marks_high_cells_red():
    pixels = np.full((64, 64, 3), 128, np.uint8)
    heatmap = np.zeros((2, 2))
    heatmap[0, 1] = 1.0
    image = overlay(pixels, heatmap)
    assert image.size == (64, 64) and image.mode == "RGB"
    top_right, bottom_left = np.asarray(image)[5, 58], np.asarray(image)[58, 5]
    assert top_right[0] > top_right[2] + 100  # high cell: red
    assert bottom_left[2] > bottom_left[0] + 100  # low cell: blue


def test_pca_map_is_deterministic_and_matches_an_svd_reference():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 12)).astype(np.float32)
    first = project_2d(embeddings, np.random.default_rng(1))
    again = project_2d(embeddings, np.random.default_rng(1))
    np.testing.assert_array_equal(first.points, again.points)
    centred = embeddings - embeddings.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ components[:2].T
    np.testing.assert_allclose(np.abs(first.points), np.abs(reference), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(first.transform(embeddings[:3]), first.points[:3], atol=1e-5)
    with pytest.raises(ValueError, match="at least 3"):
        project_2d(embeddings[:2], rng)
