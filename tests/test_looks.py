"""The look metric: an edited copy of a photo should bring its original back first."""

import json

import numpy as np
import pytest
from PIL import Image

from core.evaluate import proportion_interval
from core.looks import CopyEdits, copy_retrieval, copy_rng, format_looks_table, make_copy, original_ranks
from core.rankers import CosineRanker, L2Ranker, RandomRanker


def reference_ranks(ranker, copies, gallery, originals, content):
    """Loop reference: 1 + rows of other content scoring at least the original's score."""
    ranks = []
    for copy, original in zip(copies, originals, strict=True):
        scores = ranker.score(copy[None], gallery)[0]
        ranks.append(
            1 + sum(scores[j] >= scores[original] and content[j] != content[original] for j in range(len(gallery)))
        )
    return np.array(ranks)


@pytest.mark.parametrize("ranker", [CosineRanker(), L2Ranker(), RandomRanker(np.random.default_rng(3))])
def test_original_ranks_match_a_loop_in_small_blocks(ranker):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(57, 8)).astype(np.float32)
    gallery[10] = gallery[3]  # a byte-identical twin of an original
    content = np.array([f"h{i}" for i in range(57)])
    content[10] = content[3]
    originals = np.array([3, 0, 56, 3, 20])
    copies = (gallery[originals] + rng.normal(scale=0.8, size=(5, 8))).astype(np.float32)
    expected = reference_ranks(ranker, copies, gallery, originals, content)
    found = original_ranks(ranker, copies, gallery, originals, content, budget=5 * 7)  # blocks of 7 rows
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(original_ranks(ranker, copies, gallery, originals, content), expected)


def test_ties_count_against_the_original_and_twins_do_not():
    gallery = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    copies = np.array([[1, 0]], np.float32)
    # row 1 equals the original row 0: without content ids it is a tie that counts against it
    assert original_ranks(CosineRanker(), copies, gallery, np.array([0])).tolist() == [2]
    # as a byte-identical twin it does not
    assert original_ranks(CosineRanker(), copies, gallery, np.array([0]), np.array(["a", "a", "b", "c"])).tolist() == [
        1
    ]
    # a copy closer to row 3 than to its original row 2: row 3 beats it
    assert original_ranks(CosineRanker(), np.array([[0.5, 0.8]], np.float32), gallery, np.array([2])).tolist() == [2]


def test_copy_retrieval_summarises_recall_and_mean_rank():
    gallery = np.eye(4, dtype=np.float32)
    copies = np.array([[1, 0.1, 0, 0], [0.2, 1, 0, 0], [0, 0, 0.4, 1]], np.float32)  # third finds row 3 first
    result = copy_retrieval(CosineRanker(), copies, gallery, np.array([0, 1, 2]), np.random.default_rng(0))
    assert result.ranks.tolist() == [1, 1, 2]
    assert result.recall_at_1.value == pytest.approx(2 / 3) and result.mean_rank.value == pytest.approx(4 / 3)
    assert result.recall_at_1.low <= 2 / 3 <= result.recall_at_1.high
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["recall@1"]["value"] == pytest.approx(2 / 3) and summary["n_copies"] == 3
    table = format_looks_table([result])
    assert "cosine" in table and "66.7%" in table and "1.33" in table
    assert result.recall_at_1 == proportion_interval(2, 3) and result.mean_rank.method == "bootstrap"
    assert summary["recall@1"]["method"] == "wilson"


def test_copy_recall_of_100_percent_keeps_an_honest_interval():
    gallery = np.eye(4, dtype=np.float32)
    result = copy_retrieval(CosineRanker(), gallery, gallery, np.arange(4), np.random.default_rng(0))
    assert result.recall_at_1.value == 1.0 and result.recall_at_1.high == 1.0
    assert result.recall_at_1.low == pytest.approx(4 / (4 + 1.959964**2), abs=5e-5)  # 4 of 4: 51 %, not 100 %
    table = format_looks_table([result])
    assert "[100.0%, 100.0%]" not in table and "100.0% [51.0%, 100.0%]" in table
    assert "Wilson score for copy recall@1" in table


def test_bad_inputs_are_refused():
    gallery = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="originals must lie in"):
        original_ranks(CosineRanker(), gallery[:1], gallery, np.array([3]))
    with pytest.raises(ValueError, match="1 copies but"):
        original_ranks(CosineRanker(), gallery[:1], gallery, np.array([0, 1]))
    with pytest.raises(ValueError, match="3 gallery rows but 2 content ids"):
        original_ranks(CosineRanker(), gallery[:1], gallery, np.array([0]), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="no copies"):
        copy_retrieval(CosineRanker(), gallery[:0], gallery, np.array([], np.int64), np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop_area"):
        CopyEdits(crop_area=(0.9, 0.5))
    with pytest.raises(ValueError, match="jpeg_quality"):
        CopyEdits(jpeg_quality=(0, 70))


def photo() -> Image.Image:
    rng = np.random.default_rng(1)
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[:, :80] = (200, 40, 40)
    pixels[40:80, 100:140] = rng.integers(0, 255, size=(40, 40, 3))
    return Image.fromarray(pixels)


def test_a_copy_is_edited_and_reproducible():
    original = photo()
    first, again = make_copy(original, copy_rng(0, 7)), make_copy(original, copy_rng(0, 7))
    assert np.array_equal(np.asarray(first), np.asarray(again))  # same seed and record: the same copy
    assert not np.array_equal(np.asarray(first), np.asarray(make_copy(original, copy_rng(0, 8))))
    width, height = first.size
    # a crop keeping 75-90 % of the area (aspect within 10 %), then 70 % of its side
    assert 0.7 * np.sqrt(0.75 / 1.1) * 160 - 2 <= width <= 0.7 * np.sqrt(0.9 * 1.1) * 160 + 2
    assert 0.7 * np.sqrt(0.75 / 1.1) * 120 - 2 <= height <= 0.7 * np.sqrt(0.9 * 1.1) * 120 + 2
    assert first.mode == "RGB"
    none = CopyEdits(crop_area=(1.0, 1.0), scale=1.0, brightness=0.0, colour=0.0, mirror=0.0, jpeg_quality=(95, 95))
    plain = make_copy(original, np.random.default_rng(0), none)
    assert plain.size == original.size
    flat = np.s_[:, :70]  # the flat red half: only JPEG at quality 95 touched it
    assert np.abs(np.asarray(plain, float)[flat] - np.asarray(original, float)[flat]).mean() < 3
    mirrored = make_copy(original, np.random.default_rng(0), CopyEdits(crop_area=(1.0, 1.0), scale=1.0, mirror=1.0))
    left = np.asarray(mirrored, float)[:, :60].mean(axis=(0, 1))
    assert left[0] < 100  # the red half moved to the right
