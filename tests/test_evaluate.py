"""Evaluation: hand-computed ranks, pessimistic ties, metrics against naive loops, chance level; Wilson intervals of
proportions (hand values, scipy, a reference loop, exact coverage) beside bootstrap intervals of means."""

import math

import numpy as np
import pytest

from core.data import ComparativeSets
from core.evaluate import (
    evaluate,
    evaluate_retrieval,
    format_table,
    is_proportion,
    mean_proportion_interval,
    metric_interval,
    positive_ranks,
    proportion_interval,
    summarize,
    top_n_accuracy,
    wilson_bounds,
)
from core.rankers import CosineRanker, L2Ranker, RandomRanker


def test_positive_ranks_hand_computed():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive best -> 1
            [0.5, 0.6, 0.7, 0.1],  # two negatives above -> 3
            [0.0, 0.1, 0.2, 0.3],  # worst -> 4
            [0.5, 0.5, 0.1, 0.5],  # two ties count against the positive -> 3
        ]
    )
    assert positive_ranks(scores).tolist() == [1, 3, 4, 3]


def test_top_n_accuracy_and_summary_match_naive():
    ranks = np.array([1, 1, 2, 5, 6, 30, 3, 1])
    labels = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    assert top_n_accuracy(ranks, 1) == 3 / 8
    assert top_n_accuracy(ranks, 5) == 6 / 8
    result = summarize("x", ranks, labels, n_negatives=31, rng=np.random.default_rng(0), n_resamples=200)
    assert result.mean_rank.value == pytest.approx(sum(ranks) / len(ranks))
    assert result.median_rank.value == 2.5
    assert result.mean_rank.low <= result.mean_rank.value <= result.mean_rank.high
    assert result.mean_rank.low < result.mean_rank.high
    for n in range(1, 33):
        assert result.top_n[n - 1] == pytest.approx(sum(r <= n for r in ranks) / len(ranks))
    by_label = {c.label: c for c in result.per_category}
    assert by_label["b"].n_queries == 3 and by_label["b"].mean_rank == pytest.approx(41 / 3)
    assert by_label["c"].top1 == 0.5 and by_label["a"].median_rank == 1
    assert result.chance_mean_rank == 16.5
    assert "mean rank" in format_table([result])


def test_evaluate_uses_comparative_sets_and_embeddings():
    # 1-D embeddings make the expected ranks easy to work out by hand.
    embeddings = np.array([[0.0], [0.1], [1.0], [2.0], [0.05], [5.0]], np.float32)
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    sets = ComparativeSets(
        queries=np.array([0, 2]),
        references=np.array([[1, 4, 3], [3, 4, 0]]),  # column 0 is the positive
    )
    result = evaluate(L2Ranker(), embeddings, labels, sets, np.random.default_rng(0), n_resamples=10)
    # query 0 at 0.0: positive at 0.1, negative at 0.05 is closer -> rank 2
    # query 2 at 1.0: positive at 2.0 (dist 1), negatives at 0.05 (0.95) and 0.0 (1.0, tie) -> rank 3
    assert result.ranks.tolist() == [2, 3]
    assert result.query_labels.tolist() == ["a", "b"]
    assert result.n_negatives == 2


def test_random_ranker_sits_at_chance():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(400, 4)).astype(np.float32)
    sets = ComparativeSets(np.arange(300), rng.integers(0, 400, size=(300, 40)))
    result = evaluate(RandomRanker(rng), embeddings, np.zeros(400, str), sets, rng, n_resamples=100)
    assert abs(result.mean_rank.value - result.chance_mean_rank) < 2.5  # chance is 20.5, sd of mean ~0.7


def test_empty_or_malformed_input():
    with pytest.raises(ValueError, match="no queries"):
        summarize("x", np.array([], int), np.array([], str), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        positive_ranks(np.zeros(4))


def test_evaluate_records_best_reference_per_query():
    embeddings = np.array([[0.0], [0.1], [1.0], [2.0], [0.05], [5.0]], np.float32)
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    sets = ComparativeSets(queries=np.array([0, 2]), references=np.array([[1, 4, 3], [3, 4, 0]]))
    result = evaluate(L2Ranker(), embeddings, labels, sets, np.random.default_rng(0), n_resamples=10)
    assert result.queries.tolist() == [0, 2] and result.positives.tolist() == [1, 3]
    assert result.best_references.tolist() == [4, 4]  # nearest references: 0.05 for both


# --- intervals of proportions (Wilson score) -------------------------------------------------------------------
# Hand values: 55/55 -> low = 55 / (55 + 1.959964^2) = 0.934715; 8/10 -> centre 0.716738 -/+ 0.226573. They agree
# with scipy.stats.binomtest(k, n).proportion_ci(method="wilson") (checked below); tolerance 5e-5 (4 decimals).
HAND_TOLERANCE = 5e-5


def _wilson_reference(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The textbook form, one pair at a time: centre -+ half-width, both over 1 + z^2 / n."""
    share = successes / n
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_interval_hand_computed():
    full = proportion_interval(55, 55)
    assert full.value == 1.0 and full.high == 1.0 and full.method == "wilson"
    assert full.low == pytest.approx(0.934715, abs=HAND_TOLERANCE)  # 55 of 55 right: the rate may still be ~93.5 %
    middle = proportion_interval(8, 10)
    assert middle.value == 0.8
    assert (middle.low, middle.high) == pytest.approx((0.4902, 0.9433), abs=HAND_TOLERANCE)
    none = proportion_interval(0, 55)
    assert none.low == 0.0 and none.high == pytest.approx(3.841459 / (55 + 3.841459), abs=HAND_TOLERANCE)
    narrower = proportion_interval(8, 10, confidence=0.9)
    assert middle.low < narrower.low < 0.8 < narrower.high < middle.high


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for successes, n in [(0, 1), (1, 1), (0, 55), (55, 55), (8, 10), (1, 3), (83, 85), (500, 1000), (3, 2000)]:
        reference = binomtest(successes, n).proportion_ci(0.95, method="wilson")
        estimate = proportion_interval(successes, n)
        assert (estimate.low, estimate.high) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_wilson_bounds_vectorised_match_a_loop():
    n = np.repeat(np.arange(1, 41), 41)
    successes = np.tile(np.arange(41), 40)
    keep = successes <= n
    n, successes = n[keep], successes[keep]
    low, high = wilson_bounds(successes, n)
    expected = np.array([_wilson_reference(int(s), int(t)) for s, t in zip(successes, n, strict=True)])
    np.testing.assert_allclose(low, expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(high, expected[:, 1], rtol=0, atol=1e-12)
    assert (low < high).all() and (low <= successes / n).all() and (successes / n <= high).all()


def test_wilson_covers_the_rate_near_the_edges():
    """Exact coverage (binomial sums, no sampling) at n = 55: the percentile bootstrap of a proportion behaves like
    the Wald interval, which covers p = 0.99 in 42 % of samples; Wilson stays near the nominal 95 %."""
    from scipy.stats import binom

    n = 55
    successes = np.arange(n + 1)
    low, high = wilson_bounds(successes, n)
    for rate in (0.5, 0.8, 0.9, 0.95, 0.97, 0.99):
        covered = (low <= rate) & (rate <= high)
        assert binom.pmf(successes, n, rate)[covered].sum() > 0.89, rate


def test_no_trials_and_bad_counts():
    empty = proportion_interval(0, 0)
    assert math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)  # nothing measured, nothing ruled out
    low, high = wilson_bounds(np.array([0, 3]), np.array([0, 3]))
    assert low[0] == 0.0 and high[0] == 1.0 and high[1] == 1.0
    with pytest.raises(ValueError, match=r"successes must lie in \[0, n\]"):
        proportion_interval(4, 3)
    with pytest.raises(ValueError, match=r"successes must lie in \[0, n\]"):
        proportion_interval(-1, 3)
    with pytest.raises(ValueError, match="confidence"):
        proportion_interval(1, 3, confidence=1.0)


def test_mean_of_proportions_combines_wilson_intervals():
    # one share: its own Wilson interval
    single = mean_proportion_interval([8], [10])
    assert (single.value, single.low, single.high) == pytest.approx((0.8, 0.490162, 0.943318), abs=HAND_TOLERANCE)
    # 55/55 and 2000/2200: Wilson (0.934715, 1) around 1 and (0.896354, 0.920401) around 0.909091 (scipy agrees);
    # mean 0.954545 - hypot(0.065285, 0.012737) / 2 = 0.921288, + hypot(0, 0.011310) / 2 = 0.960201
    balanced = mean_proportion_interval([55, 2000], [55, 2200])
    assert balanced.method == "wilson-mover" and balanced.value == pytest.approx((1 + 2000 / 2200) / 2)
    assert (balanced.low, balanced.high) == pytest.approx((0.921288, 0.960201), abs=HAND_TOLERANCE)
    perfect = mean_proportion_interval([40, 400], [40, 400])
    assert perfect.value == 1.0 and perfect.high == 1.0 and 0.9 < perfect.low < 1.0  # a width at 100 %
    unknown = mean_proportion_interval([3, 0], [4, 0])
    assert math.isnan(unknown.value) and (unknown.low, unknown.high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="one or more shares"):
        mean_proportion_interval([], [])


def test_summary_gives_proportions_wilson_and_ranks_bootstrap_intervals():
    ranks = np.array([1, 1, 2, 5, 6, 30, 3, 1])
    result = summarize("x", ranks, np.zeros(8, str), n_negatives=31, rng=np.random.default_rng(0), n_resamples=200)
    assert result.top1 == proportion_interval(3, 8) and result.top5 == proportion_interval(6, 8)
    assert result.mean_rank.method == result.median_rank.method == "bootstrap"
    assert result.to_dict()["top1"] == {
        "value": 3 / 8,
        "low": result.top1.low,
        "high": result.top1.high,
        "method": "wilson",
    }
    assert "Wilson" in result.top1.how and "bootstrap" in result.mean_rank.how


def test_the_table_prints_no_zero_width_interval_at_100_percent():
    result = summarize("perfect", np.ones(55, int), np.zeros(55, str), 40, np.random.default_rng(0), 100)
    table = format_table([result])
    assert "[100.0%,100.0%]" not in table
    assert "100.0% [93.5%,100.0%]" in table  # top-1 and top-5 alike
    assert "Wilson score for top-1 and top-5" in table
    assert f"{result.top1:.1%}" == "100.0% [93.5%, 100.0%]"


def test_full_gallery_recall_gets_wilson_and_map_bootstrap():
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.choice(["a", "b"], size=60)
    result = evaluate_retrieval(
        CosineRanker(), embeddings, labels, np.arange(30), ks=(1, 5), rng=np.random.default_rng(0)
    )
    for name in ("recall@1", "recall@5", "precision@1"):
        hits = int(result.per_query[name].sum())
        assert result.intervals[name] == proportion_interval(hits, result.n_queries), name
        assert is_proportion(name)
    for name in ("precision@5", "r_precision", "map@r", "mrr"):
        assert result.intervals[name].method == "bootstrap" and not is_proportion(name)
    assert result.interval("recall@5", np.random.default_rng(1)) == result.intervals["recall@5"]  # no resampling
    with pytest.raises(ValueError, match="recall@1 is a proportion"):
        metric_interval("recall@1", np.array([1.0, 0.5]), np.random.default_rng(0))
