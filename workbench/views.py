"""What the app's pages show, computed from a workspace as plain rows and dataclasses (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.data import ImageRecord
from core.evaluate import Estimate, EvaluationResult, RetrievalResult
from core.images import printable
from core.pipeline import PreparedData
from workbench.workspace import Workspace


def gallery_names(ws: Workspace) -> list[str]:
    """Display names of the gallery images (paths relative to the dataset, safe to print)."""
    return [printable(ws.relative_path(record)) for record in ws.dataset.records]


def gallery_name(ws: Workspace, record: ImageRecord) -> str:
    """The display name of one gallery image (as :func:`gallery_names` gives it)."""
    return printable(ws.relative_path(record))


def summary_rows(results: list[EvaluationResult]) -> list[dict[str, object]]:
    """One row per ranker for a table: mean/median rank and top-1/top-5 with 95 % CIs."""
    return [
        {
            "ranker": result.ranker,
            "queries": result.n_queries,
            "mean rank": str(result.mean_rank),
            "median rank": str(result.median_rank),
            "top-1": str(result.top1),
            "top-5": str(result.top5),
        }
        for result in results
    ]


def _with_interval(estimate: Estimate | None, percent: bool = False) -> str:
    if estimate is None:
        return ""
    if percent:
        return f"{estimate.value:.0%} [{estimate.low:.0%}, {estimate.high:.0%}]"
    return f"{estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"


def side_by_side_rows(
    sections: Mapping[str, tuple[Sequence[EvaluationResult], Sequence[RetrievalResult]]],
) -> list[dict[str, object]]:
    """Featurizers next to each other for every ranker: top-1 and mean rank on the comparative sets, recall@1 and
    MAP@R on the full gallery, each with its 95 % CI.

    Args:
        sections: ``featurizer -> (comparative-set results, full-gallery results)``, the same rankers in the same
            order for every featurizer.
    """
    comparative = {name: {result.ranker: result for result in results} for name, (results, _) in sections.items()}
    full_gallery = {name: {result.ranker: result for result in found} for name, (_, found) in sections.items()}
    rankers = list(dict.fromkeys(ranker for results in comparative.values() for ranker in results))
    rows: list[dict[str, object]] = []
    for ranker in rankers:
        for featurizer, results in comparative.items():
            if ranker not in results:
                continue
            result, full = results[ranker], full_gallery[featurizer].get(ranker)
            intervals = full.intervals if full is not None else {}
            rows.append(
                {
                    "ranker": ranker,
                    "featurizer": featurizer,
                    "top-1": _with_interval(result.top1, percent=True),
                    "mean rank": _with_interval(result.mean_rank),
                    "recall@1": _with_interval(intervals.get("recall@1"), percent=True),
                    "MAP@R": _with_interval(intervals.get("map@r")),
                }
            )
    return rows


def category_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """Per-label metrics of one ranker, as compact table rows (short headers: the table sits in a narrow column).

    ``n`` is the number of queries; ``mean`` and ``median`` are the positive's rank.
    """
    return [
        {
            "label": c.label,
            "n": c.n_queries,
            "mean": round(c.mean_rank, 2),
            "median": c.median_rank,
            "top-1": f"{c.top1:.0%}",
            "top-5": f"{c.top5:.0%}",
        }
        for c in result.per_category
    ]


@dataclass(frozen=True)
class QualitativeRow:
    """One query with the reference its ranker put first and its true positive."""

    query: ImageRecord
    best: ImageRecord
    positive: ImageRecord
    rank: int


def qualitative_rows(
    ws: Workspace, result: EvaluationResult, category: str | None = None, failures_only: bool = False, limit: int = 24
) -> list[QualitativeRow]:
    """Queries of an evaluation, optionally of one label and/or only those whose positive was not first."""
    records = ws.dataset.records
    if result.queries is None or result.best_references is None or result.positives is None:
        raise ValueError(f"the {result.ranker} result carries no per-query records (not from core.evaluate.evaluate)")
    rows = []
    for query, best, positive, rank, label in zip(
        result.queries, result.best_references, result.positives, result.ranks, result.query_labels, strict=True
    ):
        if (category and label != category) or (failures_only and rank == 1):
            continue
        rows.append(QualitativeRow(records[query], records[best], records[positive], int(rank)))
    return rows[:limit]


@dataclass(frozen=True)
class DatasetSummary:
    """What the dataset page shows."""

    root: Path
    counts: dict[str, tuple[int, int]]
    samples: dict[str, list[Path]]
    skipped: list[str]
    leaks: list[str]
    n_test_queries: int
    n_negatives: int
    #: Near-duplicate pairs across the split; ``leaks`` shows the closest few of them.
    n_leaks: int = 0


def dataset_summary(prepared: PreparedData, samples_per_label: int = 6) -> DatasetSummary:
    """Label counts by split, a few sample images per label, and what the scan skipped."""
    labels = prepared.dataset.label_array
    counts = {
        label: (int((labels[prepared.split.train] == label).sum()), int((labels[prepared.split.test] == label).sum()))
        for label in prepared.dataset.labels
    }
    samples = {
        label: [r.path for r in prepared.dataset.records if r.label == label][:samples_per_label] for label in counts
    }
    return DatasetSummary(
        prepared.dataset.root or Path("."),
        counts,
        samples,
        [printable(item.reason) for item in prepared.skipped],
        [
            f"{printable(str(leak.test_path))} (test) ~ {printable(str(leak.train_path))} (train), distance {leak.distance}"
            for leak in prepared.leaks.sample
        ],
        len(prepared.test_sets),
        prepared.test_sets.n_negatives,
        prepared.leaks.count,
    )
