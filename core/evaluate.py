"""Evaluation on comparative sets: rank of the positive, summary metrics with 95 % CIs.

Every interval is 95 %. A proportion (top-1, top-5, recall@k, copy recall@1, pair accuracy) gets a Wilson score
interval (:func:`proportion_interval`), which stays honest at 0 % and 100 %: 55 of 55 queries right gives
[93.5 %, 100 %], where a bootstrap of the same queries collapses to [100 %, 100 %]. Every proportion gets it, not only
the degenerate ones, so the method of an interval follows from the metric, never from the data. A mean of anything
else (mean and median rank, MAP@R, MRR, precision@k) keeps its percentile bootstrap over the queries
(:func:`mean_with_interval`). :attr:`Estimate.method` says which one made an interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from core.data import ComparativeSets
from core.rankers import Ranker

TOP_N_MAX = 32


def positive_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of the positive (column 0) among each row's references; 1 is best.

    Ties are counted pessimistically: a negative scoring exactly as high as the positive ranks above it.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"expected scores of shape (Q, 1 + N), got {scores.shape}")
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


def top_n_accuracy(ranks: np.ndarray, n: int) -> float:
    """Share of queries whose positive is ranked within the first ``n``."""
    return float(np.mean(np.asarray(ranks) <= n)) if len(ranks) else float("nan")


def score_comparative_sets(ranker: Ranker, embeddings: np.ndarray, sets: ComparativeSets) -> np.ndarray:
    """Scores ``float32[Q, 1 + N]`` of each query against its positive then negatives."""
    n_refs = sets.references.shape[1]
    queries = np.repeat(embeddings[sets.queries], n_refs, axis=0)
    references = embeddings[sets.references.reshape(-1)]
    return ranker.score_pairs(queries, references).reshape(len(sets), n_refs)


#: ``Estimate.method`` -> how that interval was computed, in words (front ends show it beside the interval).
INTERVAL_METHODS = {
    "bootstrap": "percentile bootstrap over the queries",
    "wilson": "Wilson score interval of the proportion",
    "wilson-mover": "Wilson score intervals of the proportions, combined by MOVER",
}


@dataclass(frozen=True)
class Estimate:
    """A metric with its 95 % confidence interval.

    Attributes:
        value: The point estimate (NaN when there was nothing to measure, see :func:`proportion_interval`).
        low: Lower end of the interval.
        high: Upper end of the interval.
        method: How the interval was computed, a key of :data:`INTERVAL_METHODS`: ``"bootstrap"`` (means over
            queries), ``"wilson"`` (a proportion) or ``"wilson-mover"`` (a mean of proportions, e.g. a balanced
            accuracy).
    """

    value: float
    low: float
    high: float
    method: str = "bootstrap"

    @property
    def how(self) -> str:
        """The interval's method in words."""
        return INTERVAL_METHODS.get(self.method, self.method)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def __format__(self, spec: str) -> str:
        """``f"{estimate:.1%}"`` formats value and ends alike: ``"88.3% [87.8%, 88.7%]"`` (no spec: ``str``)."""
        if not spec:
            return str(self)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _normal_quantile(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_bounds(
    successes: np.ndarray | int, n: np.ndarray | int, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``successes`` out of ``n`` trials, elementwise (arrays broadcast).

    ``(s + z^2 / 2 -+ z sqrt(s (n - s) / n + z^2 / 4)) / (n + z^2)`` with ``z`` the normal quantile of
    ``confidence`` (1.96 at 95 %): the proportions ``p`` for which ``|s / n - p|`` lies within ``z`` standard
    errors ``sqrt(p (1 - p) / n)``. At ``s = n`` the interval is ``[n / (n + z^2), 1]`` (at ``s = 0``
    ``[0, z^2 / (n + z^2)]``), never of zero width; ``n = 0`` gives ``[0, 1]``, the formula's limit: no trials rule
    nothing out.

    Returns:
        ``(low, high)``, float64 arrays of the broadcast shape.

    Raises:
        ValueError: ``n < 0``, ``successes`` outside ``[0, n]``, or ``confidence`` outside ``(0, 1)``.
    """
    z = _normal_quantile(confidence)
    successes = np.asarray(successes, np.float64)
    n = np.asarray(n, np.float64)
    if np.any(n < 0) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(f"successes must lie in [0, n] with n >= 0, got {successes} of {n}")
    trials = np.where(n > 0, n, 1.0)  # n = 0 is answered below, without dividing by it
    spread = z * np.sqrt(successes * (trials - successes) / trials + z * z / 4)
    low = (successes + z * z / 2 - spread) / (trials + z * z)
    high = (successes + z * z / 2 + spread) / (trials + z * z)
    low = np.where((n == 0) | (successes == 0), 0.0, np.clip(low, 0.0, 1.0))
    high = np.where((n == 0) | (successes == n), 1.0, np.clip(high, 0.0, 1.0))
    return low, high


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """The share ``successes / n`` with its Wilson score interval (:func:`wilson_bounds`).

    The one home of a proportion's interval: top-1 and top-5, full-gallery recall@k, copy recall@1 and the SVM's
    pair accuracy all come here. ``n = 0`` gives ``Estimate(nan, 0.0, 1.0)``: nothing measured, nothing ruled out.

    Raises:
        ValueError: ``n < 0``, ``successes`` outside ``[0, n]``, or ``confidence`` outside ``(0, 1)``.
    """
    low, high = wilson_bounds(successes, n, confidence)
    return Estimate(successes / n if n else float("nan"), float(low), float(high), "wilson")


def mean_proportion_interval(successes: Sequence[int], totals: Sequence[int], confidence: float = 0.95) -> Estimate:
    """The mean of several independent shares (a balanced accuracy: the mean of each class's recall) with an interval.

    Each share's Wilson interval (:func:`wilson_bounds`) is combined by MOVER (Zou & Donner 2008, "Construction of
    confidence limits about effect measures"): ``mean -+ sqrt(sum_i (p_i - l_i)^2)`` (``(u_i - p_i)^2`` above)
    divided by the number of shares. It lies within ``[0, 1]`` and keeps a width at 0 % and 100 %, as the Wilson
    intervals do. A share with no trials makes the value NaN and the interval ``[0, 1]``.

    Raises:
        ValueError: No shares, misaligned inputs, or what :func:`wilson_bounds` refuses.
    """
    successes_array = np.asarray(successes, np.float64)
    totals_array = np.asarray(totals, np.float64)
    if successes_array.ndim != 1 or successes_array.shape != totals_array.shape or not len(successes_array):
        raise ValueError(f"expected one or more shares, got {successes_array.shape} successes of {totals_array.shape}")
    low, high = wilson_bounds(successes_array, totals_array, confidence)
    if np.any(totals_array == 0):
        return Estimate(float("nan"), 0.0, 1.0, "wilson-mover")  # one share unknown: so is their mean
    shares = successes_array / totals_array
    mean = float(shares.mean())
    below = float(np.sqrt(np.sum((shares - low) ** 2))) / len(shares)
    above = float(np.sqrt(np.sum((high - shares) ** 2))) / len(shares)
    return Estimate(mean, max(0.0, mean - below), min(1.0, mean + above), "wilson-mover")


@dataclass(frozen=True)
class CategoryResult:
    """Metrics for the queries of one label."""

    label: str
    n_queries: int
    mean_rank: float
    median_rank: float
    top1: float
    top5: float


@dataclass(frozen=True)
class EvaluationResult:
    """Everything an evaluation measured; ``ranks`` keeps the raw per-query outcome.

    When produced by :func:`evaluate`, ``queries``, ``positives`` and ``best_references`` hold record
    indices per query (the query, its true positive, and the reference the ranker put first).
    """

    ranker: str
    n_queries: int
    n_negatives: int
    ranks: np.ndarray
    query_labels: np.ndarray
    mean_rank: Estimate
    median_rank: Estimate
    top1: Estimate
    top5: Estimate
    top_n: np.ndarray
    per_category: tuple[CategoryResult, ...]
    queries: np.ndarray | None = None
    positives: np.ndarray | None = None
    best_references: np.ndarray | None = None

    @property
    def chance_mean_rank(self) -> float:
        """Expected mean rank of a random ranker: (N + 2) / 2 for N negatives."""
        return (self.n_negatives + 2) / 2

    def to_dict(self) -> dict:
        """JSON-ready summary (ranks included, so a report can be re-plotted)."""
        return {
            "ranker": self.ranker,
            "n_queries": self.n_queries,
            "n_negatives": self.n_negatives,
            "chance_mean_rank": self.chance_mean_rank,
            **{name: asdict(getattr(self, name)) for name in ("mean_rank", "median_rank", "top1", "top5")},
            "top_n": {str(n): float(acc) for n, acc in enumerate(self.top_n, start=1)},
            "per_category": [asdict(category) for category in self.per_category],
            "ranks": self.ranks.tolist(),
            "query_labels": self.query_labels.tolist(),
        }


def mean_with_interval(values: np.ndarray, rng: np.random.Generator, n_resamples: int = 1000) -> Estimate:
    """The mean of per-query ``values`` with a percentile-bootstrap 95 % confidence interval.

    For means that are not proportions (a proportion's interval is :func:`proportion_interval`'s).
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("no values to average")
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    return Estimate(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def _bootstrap(ranks: np.ndarray, rng: np.random.Generator, n_resamples: int) -> dict[str, Estimate]:
    """Mean and median rank with percentile-bootstrap intervals (queries resampled)."""
    samples = ranks[rng.integers(0, len(ranks), size=(n_resamples, len(ranks)))]
    stats = {
        "mean_rank": (ranks.mean(), samples.mean(axis=1)),
        "median_rank": (np.median(ranks), np.median(samples, axis=1)),
    }
    return {
        name: Estimate(float(value), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        for name, (value, boot) in stats.items()
    }


def summarize(
    ranker: str,
    ranks: np.ndarray,
    query_labels: Sequence[str] | np.ndarray,
    n_negatives: int,
    rng: np.random.Generator,
    n_resamples: int = 1000,
) -> EvaluationResult:
    """Turn per-query ranks into an :class:`EvaluationResult`.

    Top-1 and top-5 get Wilson score intervals (:func:`proportion_interval`); mean and median rank percentile
    bootstrap intervals, ``n_resamples`` resamples of the queries drawn by ``rng``.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    query_labels = np.asarray(query_labels, dtype=str)
    if len(ranks) == 0:
        raise ValueError("no queries to evaluate")
    estimates = _bootstrap(ranks, rng, n_resamples)
    per_category = tuple(
        CategoryResult(
            label=str(label),
            n_queries=int(mask.sum()),
            mean_rank=float(ranks[mask].mean()),
            median_rank=float(np.median(ranks[mask])),
            top1=top_n_accuracy(ranks[mask], 1),
            top5=top_n_accuracy(ranks[mask], 5),
        )
        for label in np.unique(query_labels)
        for mask in [query_labels == label]
    )
    top_n = (ranks[:, None] <= np.arange(1, TOP_N_MAX + 1)[None, :]).mean(axis=0)
    return EvaluationResult(
        ranker=ranker,
        n_queries=len(ranks),
        n_negatives=n_negatives,
        ranks=ranks,
        query_labels=query_labels,
        top_n=top_n,
        per_category=per_category,
        mean_rank=estimates["mean_rank"],
        median_rank=estimates["median_rank"],
        top1=proportion_interval(int((ranks <= 1).sum()), len(ranks)),
        top5=proportion_interval(int((ranks <= 5).sum()), len(ranks)),
    )


def evaluate(
    ranker: Ranker,
    embeddings: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    sets: ComparativeSets,
    rng: np.random.Generator,
    n_resamples: int = 1000,
) -> EvaluationResult:
    """Rank each query's positive among its references and summarise.

    Args:
        ranker: Fitted ranker.
        embeddings: One row per dataset record; ``sets`` indexes into it.
        labels: Label of each record.
        sets: The comparative sets to evaluate.
        rng: Drives the bootstrap resampling (mean and median rank; top-1 and top-5 get Wilson intervals).
        n_resamples: Bootstrap resamples for the CIs.
    """
    scores = score_comparative_sets(ranker, embeddings, sets)
    ranks = positive_ranks(scores)
    query_labels = np.asarray(labels, dtype=str)[sets.queries]
    result = summarize(ranker.name, ranks, query_labels, sets.n_negatives, rng, n_resamples)
    best = np.take_along_axis(sets.references, scores.argmax(axis=1)[:, None], axis=1)[:, 0]
    return dataclasses.replace(result, queries=sets.queries, positives=sets.references[:, 0], best_references=best)


def format_table(results: Sequence[EvaluationResult]) -> str:
    """A fixed-width table comparing rankers: mean/median rank, top-1, top-5 with 95 % CIs (a last line says how
    each was computed)."""
    header = f"{'ranker':<10} {'queries':>7} {'mean rank':>24} {'median':>22} {'top-1':>22} {'top-5':>22}"
    lines = [header, "-" * len(header)]
    for result in results:
        lines.append(
            f"{result.ranker:<10} {result.n_queries:>7} "
            f"{result.mean_rank.value:>7.2f} [{result.mean_rank.low:6.2f},{result.mean_rank.high:6.2f}] "
            f"{result.median_rank.value:>5.1f} [{result.median_rank.low:5.1f},{result.median_rank.high:5.1f}] "
            f"{result.top1.value:>6.1%} [{result.top1.low:5.1%},{result.top1.high:5.1%}] "
            f"{result.top5.value:>6.1%} [{result.top5.low:5.1%},{result.top5.high:5.1%}]"
        )
    if results:
        lines.append(
            f"(1 positive + {results[0].n_negatives} negatives per query; chance mean rank {results[0].chance_mean_rank:.1f})"
        )
        lines.append("(95 % intervals: Wilson score for top-1 and top-5, bootstrap over the queries for the ranks)")
    return "\n".join(lines)


#: Full-gallery metric names, in report order.
RETRIEVAL_METRICS = ("recall_at_k", "precision_at_k", "r_precision", "map_at_r", "mrr")


def is_proportion(metric: str) -> bool:
    """Whether the full-gallery ``metric`` is a proportion of queries (each query scores 0 or 1): recall@k, and
    precision@1, which equals recall@1."""
    return metric.startswith("recall@") or metric == "precision@1"


def metric_interval(metric: str, values: np.ndarray, rng: np.random.Generator, n_resamples: int = 1000) -> Estimate:
    """The mean of per-query ``values`` of ``metric`` with its 95 % interval: a Wilson score interval when the
    metric is a proportion (:func:`is_proportion`, :func:`proportion_interval`), else a percentile bootstrap of
    ``n_resamples`` resamples drawn by ``rng`` (:func:`mean_with_interval`).

    Raises:
        ValueError: No values, or a proportion's values other than 0 and 1.
    """
    if not is_proportion(metric):
        return mean_with_interval(values, rng, n_resamples)
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("no values to average")
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{metric} is a proportion: each query's value must be 0 or 1")
    return proportion_interval(int(np.count_nonzero(values)), values.size)


#: Results retrieved per query at most, by default, in full-gallery retrieval (pytorch-metric-learning's k
#: defaults to the largest label and runs out of memory on large sets: its issues #353, #566).
MAX_K = 1_000
#: Queries sampled (stratified by label, seeded) when a split holds more.
MAX_QUERIES = 2_000


def sample_queries(queries: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` of ``queries`` (record indices), stratified by label, in ascending order.

    Each label keeps its share of the queries (largest remainders round; every label with a query keeps at
    least one while ``n`` allows), drawn without replacement by ``rng``. Fewer than ``n`` queries are returned
    unchanged (sorted).

    Raises:
        ValueError: ``n < 1``.
    """
    queries = np.sort(np.asarray(queries, np.int64))
    if n < 1:
        raise ValueError(f"a query sample needs n >= 1, got {n}")
    if len(queries) <= n:
        return queries
    names, codes = np.unique(np.asarray(labels)[queries], return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    exact = counts * n / len(queries)
    take = np.floor(exact).astype(np.int64)
    if n >= len(names):
        take = np.maximum(take, 1)
    remainder = n - int(take.sum())
    if remainder > 0:
        take[np.argsort(-(exact - take), kind="stable")[:remainder]] += 1
    elif remainder < 0:  # the at-least-one rule overshot: trim the largest labels
        for label in np.argsort(-take, kind="stable")[:-remainder]:
            take[label] -= 1
    chosen = [rng.choice(queries[codes == label], int(take[label]), replace=False) for label in range(len(names))]
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class RetrievalResult:
    """Full-gallery retrieval metrics: every query searches the whole gallery, itself excluded.

    Definitions follow Musgrave et al. 2020 ("A Metric Learning Reality Check") and pytorch-metric-learning's
    ``AccuracyCalculator``. For a query with ``R`` same-label gallery items and relevance ``rel(i)`` of its
    ``i``-th result: recall@k = 1 if any of the first ``k`` is relevant; precision@k = relevant share of the first
    ``k``; R-precision = relevant share of the first ``R``; MAP@R = ``(1 / R) sum_{i <= R} rel(i) P(i)`` with
    ``P(i)`` the precision at ``i``; MRR = ``1 / rank`` of the first relevant result (0 when none is among the
    ``k_searched`` results, as in pytorch-metric-learning). Values are means over queries; ``class_averaged``
    holds the mean over labels of each label's mean ("average of per-class averages").

    Attributes:
        ranker: The ranker's name.
        n_queries: Queries evaluated.
        n_dropped: Queries dropped because no other gallery item carries their label.
        k_searched: Results retrieved per query (the largest ``R`` or ``k``, whichever is larger, at most ``k_cap``).
        k_cap: The cap on results per query (None: none). A query whose ``R`` exceeds it has its R-precision and
            MAP@R computed from the first ``k_cap`` results only, still divided by ``R``: a lower bound.
        n_truncated: Queries whose ``R`` exceeded ``k_cap`` (their R-precision and MAP@R are lower bounds).
        query_pool: Queries the evaluated ones were sampled from (stratified by label, seeded); 0 when every
            query of the split was evaluated.
        intervals: ``name -> Estimate``, each metric's mean with its 95 % confidence interval
            (:func:`metric_interval`: Wilson score for recall@k and precision@1, a bootstrap over the queries for
            the others), when :func:`evaluate_retrieval` was given a generator.
        metrics: ``name -> value`` over queries (``recall@1``, ``precision@5``, ``r_precision``, ``map@r``, ``mrr``).
        class_averaged: The same names, averaged per label first.
        per_category: ``label -> (n_queries, metrics)``.
        per_query: ``name -> float64[n_queries]``, each kept query's value (for intervals; not in :meth:`to_dict`).
    """

    ranker: str
    n_queries: int
    n_dropped: int
    k_searched: int
    metrics: dict[str, float]
    class_averaged: dict[str, float]
    per_category: dict[str, tuple[int, dict[str, float]]]
    per_query: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, compare=False)
    k_cap: int | None = None
    n_truncated: int = 0
    query_pool: int = 0
    intervals: dict[str, Estimate] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def note(self) -> str:
        """What was sampled and capped, in one plain sentence ("" when every query and every ``R`` fit)."""
        parts = []
        if self.query_pool:
            parts.append(
                f"{self.n_queries + self.n_dropped} of {self.query_pool} queries sampled (stratified by label, "
                "seeded), each against the whole gallery"
            )
        if self.n_truncated:
            parts.append(
                f"{self.n_truncated} queries have more same-label images (R) than the {self.k_cap} results "
                "retrieved: their MAP@R and R-precision count the first results only (lower bounds)"
            )
        return "; ".join(parts)

    def interval(self, metric: str, rng: np.random.Generator, n_resamples: int = 1000) -> Estimate:
        """``metric``'s mean over queries with its 95 % confidence interval (:func:`metric_interval`)."""
        return metric_interval(metric, self.per_query[metric], rng, n_resamples)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "ranker": self.ranker,
            "n_queries": self.n_queries,
            "n_dropped": self.n_dropped,
            "k_searched": self.k_searched,
            "k_cap": self.k_cap,
            "n_truncated": self.n_truncated,
            "query_pool": self.query_pool,
            "note": self.note,
            "metrics": dict(self.metrics),
            "intervals": {name: asdict(estimate) for name, estimate in self.intervals.items()},
            "class_averaged": dict(self.class_averaged),
            "per_category": {
                label: {"n_queries": n, "metrics": dict(values)} for label, (n, values) in self.per_category.items()
            },
        }


def retrieval_metrics(relevant: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-query metrics from a ranked relevance matrix.

    Args:
        relevant: ``bool[Q, K]``, whether each query's ``i``-th result shares its label (best first).
        n_relevant: ``R`` per query: same-label items in the gallery, the query excluded (all ``>= 1``). Where
            ``R > K``, R-precision and MAP@R count the ``K`` results there are (lower bounds).
        ks: Cut-offs for recall@k and precision@k (each ``<= K``).

    Returns:
        ``name -> float64[Q]``.
    """
    relevant = np.asarray(relevant, bool)
    n_relevant = np.asarray(n_relevant, np.int64)
    positions = np.arange(1, relevant.shape[1] + 1)
    hits = np.cumsum(relevant, axis=1)
    within_r = positions[None, :] <= n_relevant[:, None]
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = np.asarray(relevant[:, :k].any(axis=1), np.float64)
        out[f"precision@{k}"] = np.asarray(hits[:, k - 1] / k, np.float64)
    out["r_precision"] = (relevant & within_r).sum(axis=1) / n_relevant
    out["map@r"] = ((hits / positions) * (relevant & within_r)).sum(axis=1) / n_relevant
    first = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, np.inf)
    out["mrr"] = 1.0 / first
    return out


def evaluate_retrieval(
    ranker: Ranker,
    embeddings: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    block_rows: int | None = None,
    max_k: int | None = MAX_K,
    rng: np.random.Generator | None = None,
) -> RetrievalResult:
    """Each of ``queries`` (record indices) searches all of ``embeddings`` (itself excluded).

    One blockwise kNN search (:func:`core.rankers.top_k`) is shared by every metric. Queries whose label has no
    other gallery item are dropped and counted in ``n_dropped``. At most ``max_k`` results are retrieved per query
    (None: as many as the largest label needs); queries with more same-label items than that are counted in
    ``n_truncated`` and their R-precision and MAP@R are lower bounds (see :class:`RetrievalResult`).
    With ``rng``, every metric also gets a 95 % interval (``intervals``, :func:`metric_interval`).

    Raises:
        ValueError: Misaligned inputs, query indices out of range, or a cut-off larger than the gallery allows.
    """
    from core.rankers import top_k

    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).astype(str)
    queries = np.asarray(queries, np.int64)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if queries.size and (queries.min() < 0 or queries.max() >= len(embeddings)):
        raise ValueError(f"query indices must lie in [0, {len(embeddings)}), got {queries.min()}..{queries.max()}")
    names, counts = np.unique(labels, return_counts=True)
    n_relevant = counts[np.searchsorted(names, labels[queries])] - 1
    kept = queries[n_relevant > 0]
    n_relevant = n_relevant[n_relevant > 0]
    if len(kept) == 0:
        raise ValueError("no query has another gallery item with its label")
    if max(ks) > len(embeddings) - 1:
        raise ValueError(f"k up to {max(ks)} needs a gallery of more than {max(ks)} items, got {len(embeddings)}")
    if max_k is not None and max_k < max(ks):
        raise ValueError(f"max_k {max_k} is below the largest cut-off {max(ks)}")
    k_searched = int(min(len(embeddings) - 1, max(int(n_relevant.max()), max(ks))))
    if max_k is not None:
        k_searched = min(k_searched, max_k)
    found, _ = top_k(ranker, embeddings[kept], embeddings, k_searched + 1, block_rows)
    # drop each query itself; where a tie pushed it out of the list, drop the last result instead
    is_self = found == kept[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    neighbours = found[~is_self].reshape(len(kept), k_searched)
    per_query = retrieval_metrics(labels[neighbours] == labels[kept][:, None], n_relevant, ks)
    query_labels = labels[kept]
    per_category = {
        str(label): (int(mask.sum()), {name: float(values[mask].mean()) for name, values in per_query.items()})
        for label in np.unique(query_labels)
        for mask in [query_labels == label]
    }
    return RetrievalResult(
        ranker=ranker.name,
        n_queries=len(kept),
        n_dropped=len(queries) - len(kept),
        k_searched=k_searched,
        metrics={name: float(values.mean()) for name, values in per_query.items()},
        class_averaged={
            name: float(np.mean([metrics[name] for _, metrics in per_category.values()])) for name in per_query
        },
        per_category=per_category,
        per_query=per_query,
        k_cap=max_k,
        n_truncated=int((n_relevant > k_searched).sum()),
        intervals={} if rng is None else {name: metric_interval(name, per_query[name], rng) for name in per_query},
    )
