"""Comparative sets drawn by content (issue 20): a reference loop, validity, and stability as photos are added.

Measured here (200 photos in 4 labels + 5 added at random record positions, 10 queries per label, 9 negatives,
20 draws; see ``test_added_photos_change_only_the_sets_they_meet``): the content draw keeps 95.1 % of the previous
(query, positive) pairs, 95.4 % of their negatives and 74.9 % of whole rows identical (worst draw: 90 %, 92 %,
65 %); the rng draw over record positions keeps 0.4 % of the pairs, 1.1 % of the negatives and no row. Whole rows cannot do much better: for the draw to stay uniform an
added photo must enter each set of another label with chance 9/150, so 5 photos touch ~22 % of the sets; here each
touched set changes by exactly the photos that entered it.
"""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from core.config import DataConfig
from core.data import (
    ComparativeSets,
    ImageDataset,
    ImageRecord,
    ScanReport,
    _content_keys,
    content_comparative_sets,
    make_comparative_sets,
)
from core.errors import DatasetError
from core.pipeline import prepare

MASK = (1 << 64) - 1


def _hashes(rng: np.random.Generator, n: int) -> list[str]:
    return [bytes(row).hex() for row in rng.integers(0, 256, size=(n, 32), dtype=np.uint8)]


def _key_reference(sha: str, seed: int, salt: int) -> int:
    """splitmix64 of the hash's first 64 bits, salted, with Python integers."""
    x = int(sha[:16], 16) ^ ((0x9E3779B97F4A7C15 * (seed + 1)) & MASK) ^ ((0xD1B54A32D192ED03 * salt) & MASK)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _sets_reference(labels, shas, n_queries, n_negatives, seed):
    """The draw as a loop: smallest query keys per label; walk the circle of the second key from each query."""
    count = len(labels)
    query_key = [_key_reference(sha, seed, 1) for sha in shas]
    circle = sorted(range(count), key=lambda i: (_key_reference(shas[i], seed, 2), i))
    queries, references = [], []
    for name in sorted(set(labels.tolist())):
        members = [i for i in range(count) if labels[i] == name]
        if len(members) < 2:
            continue
        for query in sorted(members, key=lambda i: (query_key[i], i))[:n_queries]:
            place = circle.index(query)
            walk = [circle[(place + step) % count] for step in range(1, count)]
            positive = next(i for i in walk if labels[i] == name)
            queries.append(query)
            references.append([positive, *[i for i in walk if labels[i] != name][:n_negatives]])
    return queries, references


def _rows(sets: ComparativeSets, shas) -> dict[str, tuple[str, frozenset[str]]]:
    """Each set by content: query -> (positive, negatives)."""
    return {
        shas[query]: (shas[refs[0]], frozenset(shas[i] for i in refs[1:]))
        for query, refs in zip(sets.queries.tolist(), sets.references.tolist(), strict=True)
    }


def _kept(before: dict, after: dict) -> tuple[float, float, float]:
    """Shares of the previous rows kept whole, of (query, positive) pairs kept, and of negatives kept."""
    whole = np.mean([after.get(query) == row for query, row in before.items()])
    pairs = np.mean([query in after and after[query][0] == row[0] for query, row in before.items()])
    negatives = np.mean(
        [len(row[1] & after[query][1]) / len(row[1]) if query in after else 0.0 for query, row in before.items()]
    )
    return float(whole), float(pairs), float(negatives)


def _grown(seed: int, n_labels: int = 4) -> tuple[np.ndarray, list[str], np.ndarray]:
    """205 labelled photos, the last 5 'added'; and a record order of the grown folder (added ones spread in)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, 205).astype(str).astype(object)
    return labels, _hashes(rng, 205), rng.permutation(205)


def test_content_keys_follow_a_reference_loop():
    shas = _hashes(np.random.default_rng(0), 50)
    for seed, salt in ((0, 0), (3, 1), (7, 2)):
        keys = _content_keys(shas, seed, salt)
        assert keys.dtype == np.uint64
        assert keys.tolist() == [_key_reference(sha, seed, salt) for sha in shas]


def test_content_sets_follow_the_reference_loop():
    rng = np.random.default_rng(1)
    labels = np.array(["a"] * 20 + ["b"] * 15 + ["c"] * 25 + ["single"], dtype=object)[rng.permutation(61)]
    shas = _hashes(rng, 61)
    for seed in (0, 3):
        sets = content_comparative_sets(labels, shas, 4, 8, seed)
        queries, references = _sets_reference(labels, shas, 4, 8, seed)
        assert sets.queries.tolist() == queries
        assert sets.references.tolist() == references
        assert sets.queries.dtype == sets.references.dtype == np.int64


def test_content_sets_are_valid_and_reproducible():
    labels = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 5 + ["single"], dtype=object)
    shas = _hashes(np.random.default_rng(2), len(labels))
    sets = content_comparative_sets(labels, shas, n_queries_per_label=4, n_negatives=8, seed=0)
    assert len(sets) == 12 and sets.n_negatives == 8  # "single" cannot be queried
    for query, refs in zip(sets.queries, sets.references, strict=True):
        assert query not in refs
        assert labels[refs[0]] == labels[query]
        assert all(labels[n] != labels[query] for n in refs[1:])
        assert len(set(refs.tolist())) == len(refs)
    for label in "abc":
        queries = sets.queries[labels[sets.queries] == label]
        assert len(queries) == 4 and len(set(queries.tolist())) == 4
    again = content_comparative_sets(labels, shas, 4, 8, 0)
    np.testing.assert_array_equal(sets.queries, again.queries)
    np.testing.assert_array_equal(sets.references, again.references)
    other_seed = content_comparative_sets(labels, shas, 4, 8, 1)
    assert not np.array_equal(sets.references, other_seed.references)


def test_content_sets_do_not_depend_on_record_order():
    labels, shas, order = _grown(3)
    sets = _rows(content_comparative_sets(labels, shas, 10, 9, 0), shas)
    shuffled = [shas[i] for i in order]
    assert _rows(content_comparative_sets(labels[order], shuffled, 10, 9, 0), shuffled) == sets


def test_added_photos_change_only_the_sets_they_meet():
    new_kept, old_kept = [], []
    for seed in range(20):
        labels, shas, order = _grown(seed)
        before = _rows(content_comparative_sets(labels[:200], shas[:200], 10, 9, 0), shas)
        grown = [shas[i] for i in order]
        after = _rows(content_comparative_sets(labels[order], grown, 10, 9, 0), grown)
        added = set(shas[200:])
        label_of = dict(zip(shas, labels.tolist(), strict=True))
        for query, (positive, negatives) in before.items():
            if query not in after:  # an added photo took its place among its label's queries
                assert any(label_of[new] == label_of[query] for new in added & after.keys())
                continue
            new_positive, new_negatives = after[query]
            # what left a set is exactly as much as what entered it, and only added photos entered
            entered = ({new_positive} - {positive}) | (new_negatives - negatives)
            left = ({positive} - {new_positive}) | (negatives - new_negatives)
            assert entered <= added and len(entered) == len(left)
        new_kept.append(_kept(before, after))
        old_before = _rows(make_comparative_sets(labels[:200], 10, 9, np.random.default_rng(0)), shas)
        old_after = _rows(make_comparative_sets(labels[order], 10, 9, np.random.default_rng(0)), grown)
        old_kept.append(_kept(old_before, old_after))
    whole, pairs, negatives = np.mean(new_kept, axis=0)
    old_whole, old_pairs, _ = np.mean(old_kept, axis=0)
    assert pairs >= 0.9 and negatives >= 0.9  # measured 0.951, 0.954
    assert whole >= 0.65  # measured 0.749; the bound of a uniform draw is ~0.76 (module docstring)
    assert old_whole <= 0.02 and old_pairs <= 0.05  # the rng draw: measured 0.0 and 0.004


def test_content_sets_shrink_negatives_and_refuse_bad_inputs():
    labels = np.array(["a"] * 5 + ["b"] * 3, dtype=object)
    shas = _hashes(np.random.default_rng(4), 8)
    sets = content_comparative_sets(labels, shas, 2, 99, 0)
    assert sets.n_negatives == 3  # label "a" only has 3 images of other labels
    for query, refs in zip(sets.queries, sets.references, strict=True):
        assert len(set(refs.tolist())) == 4 and query not in refs
    with pytest.raises(DatasetError, match="at least 2 labels"):
        content_comparative_sets(np.array(["a"] * 4), shas[:4], 2, 3, 0)
    with pytest.raises(DatasetError, match="2 or more images"):
        content_comparative_sets(np.array(["a", "b"]), shas[:2], 2, 3, 0)
    with pytest.raises(ValueError, match="3 content hashes but 8 labels"):
        content_comparative_sets(labels, shas[:3], 2, 3, 0)


def test_content_sets_hold_no_queries_by_photos_matrix():
    rng = np.random.default_rng(5)
    count = 100_000
    labels = rng.integers(0, 10, count).astype(str).astype(object)
    shas = _hashes(rng, count)
    tracemalloc.start()
    try:
        sets = content_comparative_sets(labels, shas, 100, 99, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sets.references.shape == (1000, 100)
    assert peak < 64 * 2**20  # a float64 1000 x 100,000 matrix alone would be 800 MB


def test_prepare_keeps_the_sets_of_a_growing_folder(tmp_path: Path):
    labels, shas, order = _grown(6)

    def scan(indices) -> ScanReport:
        records = tuple(ImageRecord(tmp_path / labels[i] / f"{shas[i][:12]}.png", labels[i], shas[i]) for i in indices)
        return ScanReport(ImageDataset(records, tmp_path), ())

    config = DataConfig(root=tmp_path, train_queries_per_label=10, test_queries_per_label=5, n_negatives=9)
    before = prepare(config, scan(range(200)), "before")
    after = prepare(config, scan(order), "after")
    added = set(shas[200:])
    for side in ("train_sets", "test_sets"):
        rows_before = _rows(getattr(before, side), before.dataset.sha256s)
        rows_after = _rows(getattr(after, side), after.dataset.sha256s)
        for query, (positive, negatives) in rows_before.items():
            if query in rows_after:
                new_positive, new_negatives = rows_after[query]
                assert ({new_positive} - {positive}) | (new_negatives - negatives) <= added
        _, pairs, kept = _kept(rows_before, rows_after)
        assert pairs >= 0.8 and kept >= 0.8
    again = prepare(config, scan(range(200)), "before")
    np.testing.assert_array_equal(again.test_sets.references, before.test_sets.references)
