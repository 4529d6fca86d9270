"""What the app's pages show, computed from a workspace as plain rows and dataclasses (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


#: Names a bounded gallery picker lists at once (one page of one label).
PICKER_PAGE = 200


@dataclass(frozen=True)
class GalleryIndex:
    """Where each gallery photo sits, built once per workspace in O(N), so that picking a photo from a large gallery
    and finding the row of a picked name cost O(page) in each rerun (not a list of every name, nor a scan of it).

    ``label_rows[label]`` are the record rows of a label (ascending); ``path_rows`` maps each relative path to its row.
    """

    labels: tuple[str, ...]
    label_rows: Mapping[str, np.ndarray]
    paths: Sequence[str]
    path_rows: Mapping[str, int]

    @classmethod
    def of(cls, ws: Workspace) -> GalleryIndex:
        """The index of a workspace's gallery."""
        names, codes = np.unique(ws.dataset.label_array.astype(str), return_inverse=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        label_rows = {str(name): order[bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
        paths = ws.dataset.relative_paths if ws.dataset.root else [ws.relative_path(r) for r in ws.dataset.records]
        return cls(tuple(label_rows), label_rows, paths, {path: row for row, path in enumerate(paths)})

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, name: str) -> int | None:
        """The row of the photo shown as ``name`` (as :func:`gallery_names` gives it); None when there is none."""
        row = self.path_rows.get(name)
        if row is not None and printable(self.paths[row]) == name:
            return row
        if "\\" in name:  # a name shown with escapes (not UTF-8, control characters): rare, one scan
            return next((row for row, path in enumerate(self.paths) if printable(path) == name), None)
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.row(name) is not None

    def pages(self, label: str, size: int | None = None) -> int:
        """How many pages of ``size`` names (default :data:`PICKER_PAGE`) the photos of ``label`` fill (at least 1)."""
        size = size or PICKER_PAGE
        return max(1, -(-len(self.label_rows[label]) // size))

    def page(self, label: str, page: int, size: int | None = None) -> list[str]:
        """Display names of page ``page`` (from 1) of the photos of ``label``: at most ``size`` (default
        :data:`PICKER_PAGE`)."""
        size = size or PICKER_PAGE
        rows = self.label_rows[label][(page - 1) * size : page * size]
        return [printable(self.paths[int(row)]) for row in rows]


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
