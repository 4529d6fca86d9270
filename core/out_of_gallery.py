"""The one "no close match" signal: is any gallery image as close to a query as images of one label usually are
to each other?

Calibrated on the gallery itself: for gallery images with another image of their label, the cosine similarity to
their closest such image; a low quantile of those is the floor. A query whose best cosine similarity to the gallery
lies below it is further from everything than nearly every gallery image is from its own kind. The app shows it as
a banner, the CLI as a line and the REST API as a field, all from :meth:`workbench.workspace.Workspace.match`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Gallery images sampled to calibrate the floor (each compared with the whole gallery).
MAX_ROWS = 1_000


def same_label_floor(
    embeddings: np.ndarray,
    labels: np.ndarray,
    quantile: float = 0.1,
    block: int = 1024,
    max_rows: int | None = MAX_ROWS,
    rng: np.random.Generator | None = None,
) -> float:
    """How similar an image usually is, at the least, to its closest image of the same label.

    For every gallery image with another image of its label, its highest cosine similarity to one of them;
    the ``quantile`` of those. A query whose best gallery score falls below this has no close match: it is
    further from everything than nearly every gallery image is from its own kind.

    Args:
        embeddings: L2-normalised gallery embeddings, ``(N, D)``.
        labels: Label of each embedding, ``(N,)``.
        quantile: Share of same-label nearest neighbours allowed to lie below the floor.
        block: Rows compared at once (memory is ``block x N`` floats).
        max_rows: Gallery images whose nearest same-label image is sought (a seeded uniform sample of them when
            the gallery is larger; each is still compared with the whole gallery, so the cost is
            ``max_rows x N``). None: every image.
        rng: Draws that sample (default: seed 0).

    Raises:
        ValueError: No label has two images, or shapes disagree.
    """
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and labels {labels.shape} do not match")
    sampled = np.arange(len(embeddings))
    if max_rows is not None and len(embeddings) > max_rows:
        generator = rng if rng is not None else np.random.default_rng(0)
        sampled = np.sort(generator.choice(len(embeddings), size=max_rows, replace=False))
    best = np.full(len(sampled), -np.inf, np.float32)
    for start in range(0, len(sampled), block):
        rows = sampled[start : start + block]
        scores = embeddings[rows] @ embeddings.T
        scores[labels[rows, None] != labels[None, :]] = -np.inf
        scores[np.arange(len(rows)), rows] = -np.inf  # not itself
        best[start : start + len(rows)] = scores.max(axis=1)
    best = best[np.isfinite(best)]
    if not len(best):
        raise ValueError("no label has two images: nothing to compare a query's score with")
    return float(np.quantile(best, quantile))


@dataclass(frozen=True)
class MatchStrength:
    """The query's best cosine similarity to the gallery beside the gallery's own same-label floor."""

    best: float
    floor: float

    def explain(self) -> str:
        """One sentence, the same in every door."""
        return (
            f"the query's best cosine similarity to any gallery image is {self.best:.2f}, below {self.floor:.2f}, "
            "which 90 % of gallery images reach with their closest image of the same label; the results are the "
            "least distant images, not necessarily similar ones"
        )

    @property
    def close(self) -> bool:
        """Whether some gallery image is as close to the query as same-label images usually are to each other."""
        return self.best >= self.floor
