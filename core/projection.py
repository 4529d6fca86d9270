"""2-D maps of an embedding space: PCA by default, UMAP when installed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

log = logging.getLogger(__name__)


class ProjectionModel(Protocol):
    """A fitted projection model (scikit-learn's PCA, umap-learn's UMAP): maps new rows onto the map."""

    def transform(self, embeddings: np.ndarray, /) -> np.ndarray: ...


@dataclass(frozen=True)
class Projection:
    """A fitted 2-D projection; ``points`` are the gallery's coordinates."""

    method: str
    points: np.ndarray
    model: ProjectionModel

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Place new embeddings (e.g. a query) on the same map."""
        return np.asarray(self.model.transform(np.asarray(embeddings, np.float32)), np.float32)


def project_2d(embeddings: np.ndarray, rng: np.random.Generator, method: Literal["pca", "umap"] = "pca") -> Projection:
    """Fit a 2-D projection of unit embeddings; deterministic for a given generator state.

    Raises:
        ValueError: Fewer than 3 embeddings, or an unknown method.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings) < 3:
        raise ValueError(f"need at least 3 embeddings for a map, got {len(embeddings)}")
    seed = int(rng.integers(2**31 - 1))
    if method == "umap":
        try:
            import umap
        except ImportError:
            log.warning("umap-learn is not installed; using PCA")
            method = "pca"
        else:
            model = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(embeddings) - 1))
            return Projection("umap", np.asarray(model.fit_transform(embeddings), np.float32), model)
    if method != "pca":
        raise ValueError(f"unknown projection {method!r}; choose pca or umap")
    from sklearn.decomposition import PCA

    model = PCA(n_components=2, random_state=seed)
    return Projection("pca", np.asarray(model.fit_transform(embeddings), np.float32), model)
