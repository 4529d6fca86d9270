"""Near-duplicate detection with a perceptual hash, and the train/test leakage check built on it.

Images are compared by the Hamming distance between their difference hashes (``imagehash.dhash``,
``hash_size=16``: 256 bits, computed once while a folder is scanned, see ``core.data.scan_folder``).
Pairs within ``threshold`` bits are near-duplicates; groups are the connected components of that
graph, and the first image of each group (dataset order: sorted label, then sorted path) is kept.

Nothing is deleted here: :func:`find_near_duplicates` returns a report, and :func:`move_duplicates`
moves the removed files into ``<root>/_duplicates/<label>/`` (never scanned as a label), from where a
user can move them back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data import DUPLICATES_DIR, ImageDataset, Split
from core.images import DHASH_SIZE, printable

log = logging.getLogger(__name__)

#: Default Hamming distance (bits out of 256) at or below which two images are near-duplicates.
#: Measured with benchmarks/dedup.py on the 275 demo photos: re-encoded or resized copies are 0-28 bits
#: from their original (one JPEG q=30 copy of a cut-out on a flat background: 57), while the closest two
#: distinct demo photos are 49 bits apart (1st percentile of nearest neighbours: 53).
DEFAULT_THRESHOLD = 32
#: Rows of the distance matrix computed at once: 1024 x N float32, so 100k images need ~400 MB per block.
BLOCK_ROWS = 1024


@dataclass(frozen=True)
class NearDuplicate:
    """One removed image and the image of its group that is kept."""

    kept: Path
    removed: Path
    distance: int


@dataclass(frozen=True)
class DedupReport:
    """Near-duplicate groups of a dataset and which files a clean-up removes."""

    root: Path | None
    threshold: int
    hash_size: int
    n_images: int
    n_groups: int
    removed: tuple[NearDuplicate, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (paths relative to ``root`` when possible, always printable)."""
        return {
            "root": printable(str(self.root)) if self.root else None,
            "threshold": self.threshold,
            "hash": f"dhash{self.hash_size}",
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "n_removed": len(self.removed),
            "removed": [
                {
                    "kept": _shown(item.kept, self.root),
                    "removed": _shown(item.removed, self.root),
                    "distance": item.distance,
                }
                for item in self.removed
            ],
        }


@dataclass(frozen=True)
class Leak:
    """A near-duplicate pair straddling the split: the same picture would be queried and trained on."""

    train_path: Path
    test_path: Path
    distance: int


def _shown(path: Path, root: Path | None) -> str:
    try:
        return printable(str(path.relative_to(root))) if root else printable(str(path))
    except ValueError:
        return printable(str(path))


def _bits(hashes: np.ndarray) -> np.ndarray:
    """Packed ``uint8[N, B]`` hashes as ``float32[N, 8B]`` 0/1 rows."""
    return np.unpackbits(np.asarray(hashes, dtype=np.uint8), axis=1).astype(np.float32)


def hamming_distances(query_hashes: np.ndarray, reference_hashes: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes, ``int32[Nq, Nr]``.

    With 0/1 rows ``q`` and ``r``: ``|q xor r| = |q| + |r| - 2 q.r``, one matrix product (exact in
    float32 for up to 2**24 bits).
    """
    query_bits, reference_bits = _bits(query_hashes), _bits(reference_hashes)
    overlap = query_bits @ reference_bits.T
    distances = query_bits.sum(1)[:, None] + reference_bits.sum(1)[None, :] - 2 * overlap
    return np.rint(distances).astype(np.int32)


def close_pairs(
    query_hashes: np.ndarray, reference_hashes: np.ndarray, threshold: int, block_rows: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, reference) index pairs within ``threshold`` bits, computed block by block.

    Returns:
        ``(query_index, reference_index, distance)`` arrays, sorted by query then reference index.
    """
    rows, cols, dists = [], [], []
    for start in range(0, len(query_hashes), block_rows):
        block = hamming_distances(query_hashes[start : start + block_rows], reference_hashes)
        r, c = np.nonzero(block <= threshold)
        rows.append(r + start)
        cols.append(c)
        dists.append(block[r, c])
    if not rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32)
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(dists).astype(np.int32),
    )


def near_duplicate_pairs(
    hashes: np.ndarray, threshold: int, block_rows: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of one set of hashes within ``threshold`` bits: ``(i, j, distance)``."""
    i, j, distance = close_pairs(hashes, hashes, threshold, block_rows)
    upper = i < j
    return i[upper], j[upper], distance[upper]


def group_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges ``(i, j)``: each node's smallest member index.

    Vectorised min-label propagation with pointer jumping; converges in a few passes.
    """
    labels = np.arange(n)
    if len(i) == 0:
        return labels
    while True:
        previous = labels.copy()
        low = np.minimum(labels[i], labels[j])
        np.minimum.at(labels, i, low)
        np.minimum.at(labels, j, low)
        labels = labels[labels]  # pointer jumping: follow to the representative's representative
        if np.array_equal(labels, previous):
            return labels


def find_near_duplicates(
    dataset: ImageDataset, hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, hash_size: int = DHASH_SIZE
) -> DedupReport:
    """Group near-duplicates of a dataset and keep the first image of each group.

    Args:
        dataset: The records, in the order that decides which image of a group is kept.
        hashes: Packed difference hashes aligned with ``dataset.records`` (``ScanReport.dhashes``).
        threshold: Largest Hamming distance (bits) between two near-duplicates.
        hash_size: The dhash size the hashes were computed with (for the report).

    Returns:
        The report; ``distance`` of a removed image is its distance to the kept image of its group
        (it can exceed ``threshold`` when the group is a chain of close images).
    """
    if len(hashes) != len(dataset):
        raise ValueError(f"{len(hashes)} hashes for {len(dataset)} records")
    i, j, _ = near_duplicate_pairs(hashes, threshold)
    representative = group_labels(len(dataset), i, j)
    removed_index = np.flatnonzero(representative != np.arange(len(dataset)))
    kept_index = representative[removed_index]
    distances = (
        np.bitwise_count(np.bitwise_xor(hashes[removed_index], hashes[kept_index])).sum(1) if len(removed_index) else []
    )
    removed = tuple(
        NearDuplicate(dataset.records[k].path, dataset.records[r].path, int(d))
        for r, k, d in zip(removed_index, kept_index, distances, strict=True)
    )
    n_groups = len(np.unique(kept_index))
    log.info(
        "%d near-duplicate group(s) among %d images; %d image(s) to remove (threshold %d bits)",
        n_groups,
        len(dataset),
        len(removed),
        threshold,
    )
    return DedupReport(dataset.root, threshold, hash_size, len(dataset), n_groups, removed)


def find_leaks(
    dataset: ImageDataset, split: Split, hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD
) -> tuple[Leak, ...]:
    """Near-duplicate pairs with one image in train and the other in test, closest first."""
    test_local, train_local, distance = close_pairs(hashes[split.test], hashes[split.train], threshold)
    order = np.lexsort((train_local, test_local, distance))
    return tuple(
        Leak(dataset.records[split.train[t]].path, dataset.records[split.test[q]].path, int(d))
        for q, t, d in zip(test_local[order], train_local[order], distance[order], strict=True)
    )


def move_duplicates(report: DedupReport, root: Path) -> list[tuple[Path, Path]]:
    """Move every removed image to ``root/_duplicates/<label>/<name>`` (renamed on a clash).

    Returns:
        ``(old, new)`` path pairs, in report order. Files already gone are skipped with a warning.
    """
    root = Path(root)
    moved = []
    for item in report.removed:
        source = item.removed
        if not source.exists():
            log.warning("%s: already gone, not moved", printable(str(source)))
            continue
        try:
            relative = source.relative_to(root)
        except ValueError:
            relative = Path(source.parent.name) / source.name
        target = root / DUPLICATES_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        stem, suffix, n = target.stem, target.suffix, 1
        while target.exists():
            target = target.with_name(f"{stem}-{n}{suffix}")
            n += 1
        os.replace(source, target)
        moved.append((source, target))
    return moved
