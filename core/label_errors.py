"""Likely label errors: images whose nearest neighbours mostly carry another label.

For each image, its ``k`` nearest other images vote (the shared k-NN graph of :mod:`core.knn`: exact up to
:data:`core.knn.EXACT_MAX_ROWS` images, clustered above); an image is a suspect when the most common neighbour label
differs from its own and holds at least ``min_share`` of the votes. Suspects are ranked by that share, then by how
few neighbours agree with the image's own label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.knn import KnnGraph, knn_graph
from core.rankers import Ranker


@dataclass(frozen=True)
class LabelSuspect:
    """An image whose neighbours disagree with its label.

    Attributes:
        index: Record index of the image.
        label: Its label.
        neighbour_label: The most common label among its neighbours.
        share: Share of its neighbours carrying ``neighbour_label``.
        own_share: Share of its neighbours carrying its own label.
        neighbours: Record indices of its neighbours, best first.
    """

    index: int
    label: str
    neighbour_label: str
    share: float
    own_share: float
    neighbours: tuple[int, ...]


def likely_label_errors(
    ranker: Ranker,
    embeddings: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    k: int = 10,
    min_share: float = 0.5,
    graph: KnnGraph | None = None,
) -> list[LabelSuspect]:
    """Images whose ``k`` nearest neighbours mostly carry another label, most suspicious first.

    Args:
        ranker: Fitted ranker (higher = more similar); unused when ``graph`` is given.
        embeddings: One row per image.
        labels: Label of each image.
        k: Neighbours that vote.
        min_share: Smallest share of the majority other label for an image to be listed.
        graph: The k-NN graph of ``embeddings`` by ``ranker`` with at least ``k`` neighbours (built here when
            None: :func:`core.knn.knn_graph`).

    Raises:
        ValueError: Misaligned inputs, fewer than two images, ``k`` / ``min_share`` out of range, or a graph of
            other rows or fewer neighbours.
    """
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels).astype(str)
    if len(labels) != len(embeddings) or len(labels) < 2:
        raise ValueError(f"need at least two images with one label each, got {len(embeddings)} and {len(labels)}")
    if k < 1 or not 0.0 < min_share <= 1.0:
        raise ValueError(f"k must be >= 1 and min_share in (0, 1], got {k} and {min_share}")
    k = min(k, len(labels) - 1)
    if graph is None:
        graph = knn_graph(embeddings, k, ranker)
    if len(graph.indices) != len(labels) or graph.k < k:
        raise ValueError(f"k-NN graph of {graph.indices.shape} does not serve {len(labels)} images with k={k}")
    neighbours = graph.indices[:, :k]
    names, codes = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(labels), len(names)), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), codes[neighbours].reshape(-1)), 1)
    own_votes = votes[np.arange(len(labels)), codes]
    others = votes.copy()
    others[np.arange(len(labels)), codes] = -1
    majority = others.argmax(axis=1)
    share = others[np.arange(len(labels)), majority] / k
    suspects = np.flatnonzero((share >= min_share) & (others.max(axis=1) > own_votes))
    order = suspects[np.lexsort((suspects, own_votes[suspects], -share[suspects]))]
    return [
        LabelSuspect(
            index=int(i),
            label=str(labels[i]),
            neighbour_label=str(names[majority[i]]),
            share=float(share[i]),
            own_share=float(own_votes[i] / k),
            neighbours=tuple(int(j) for j in neighbours[i]),
        )
        for i in order
    ]
