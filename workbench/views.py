"""What the app's pages show, computed from a workspace as plain rows and dataclasses (no Streamlit here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import ImageRecord
from core.evaluate import EvaluationResult
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


def same_label_floor(embeddings: np.ndarray, labels: np.ndarray, quantile: float = 0.1, block: int = 1024) -> float:
    """How similar an image usually is, at the least, to its closest image of the same label.

    For every gallery image with another image of its label, its highest cosine similarity to one of them;
    the ``quantile`` of those. A query whose best gallery score falls below this has no close match: it is
    further from everything than nearly every gallery image is from its own kind.

    Args:
        embeddings: L2-normalised gallery embeddings, ``(N, D)``.
        labels: Label of each embedding, ``(N,)``.
        quantile: Share of same-label nearest neighbours allowed to lie below the floor.
        block: Rows compared at once (memory is ``block x N`` floats).

    Raises:
        ValueError: No label has two images, or shapes disagree.
    """
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and labels {labels.shape} do not match")
    best = np.full(len(embeddings), -np.inf, np.float32)
    for start in range(0, len(embeddings), block):
        rows = slice(start, start + block)
        scores = embeddings[rows] @ embeddings.T
        scores[labels[rows, None] != labels[None, :]] = -np.inf
        scores[np.arange(scores.shape[0]), np.arange(start, start + scores.shape[0])] = -np.inf  # not itself
        best[rows] = scores.max(axis=1)
    best = best[np.isfinite(best)]
    if not len(best):
        raise ValueError("no label has two images: nothing to compare a query's score with")
    return float(np.quantile(best, quantile))


@dataclass(frozen=True)
class MatchStrength:
    """The query's best cosine similarity to the gallery beside the gallery's own same-label floor."""

    best: float
    floor: float

    @property
    def close(self) -> bool:
        """Whether some gallery image is as close to the query as same-label images usually are to each other."""
        return self.best >= self.floor
