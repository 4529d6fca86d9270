"""Looking inside a workspace: similarity heatmaps that explain a match, and 2-D maps of the embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from core.data import ImageRecord
from core.featurize import TorchFeaturizer
from workbench.workspace import Workspace, torch_featurizer

if TYPE_CHECKING:
    from core.backbones import Backbone
    from core.projection import Projection


@dataclass(frozen=True)
class Explanation:
    """Heatmaps of what drives the similarity of a query and one result."""

    similarity: float
    query_overlay: Image.Image
    result_overlay: Image.Image


def torch_backbone(ws: Workspace) -> Backbone:
    """The PyTorch network behind the workspace's featurizer (built when queries run on onnxruntime)."""
    if isinstance(ws.featurizer, TorchFeaturizer):
        return ws.featurizer.backbone
    return torch_featurizer(ws.spec).backbone


def explain(backbone: Backbone, query: Image.Image, record: ImageRecord) -> Explanation:
    """Where a query and a gallery image agree: exact per-region shares of their cosine similarity."""
    from core.explain import overlay, similarity_maps
    from core.images import load_image

    maps = similarity_maps(backbone, query, load_image(record.path))
    return Explanation(
        maps.similarity, overlay(maps.query_pixels, maps.query_map), overlay(maps.result_pixels, maps.result_map)
    )


#: The most photos a 2-D map is fitted on and draws: a larger gallery is mapped through a stratified sample (UMAP on
#: 10^6 points takes hours and a browser cannot draw them); queries are placed with the fitted projection.
MAP_POINTS = 20_000


@dataclass(frozen=True)
class EmbeddingMap:
    """A 2-D map of the gallery, or of a stratified sample of it, with the projection to place queries.

    ``rows`` are the record rows of the points (ascending), ``labels`` and ``names`` their labels and display names,
    ``total`` the number of photos in the gallery.
    """

    projection: Projection
    rows: np.ndarray
    labels: list[str]
    names: list[str]
    total: int

    @property
    def sampled(self) -> bool:
        """Whether the map shows a sample rather than every photo."""
        return len(self.rows) < self.total


def embedding_map(ws: Workspace, method: Literal["pca", "umap"] = "pca", max_points: int = MAP_POINTS) -> EmbeddingMap:
    """The gallery's 2-D map, seeded by the dataset seed: fitted on every photo up to ``max_points``, beyond that on a
    sample of ``max_points`` stratified by label (:func:`core.evaluate.sample_queries`), so its cost does not grow
    with the gallery."""
    from core.evaluate import sample_queries
    from core.images import printable
    from core.projection import project_2d

    rng = np.random.default_rng(ws.seed)
    label_array = ws.dataset.label_array
    rows = sample_queries(np.arange(len(label_array)), label_array, max_points, rng)
    projection = project_2d(ws.embeddings[rows], rng, method)
    names = [printable(ws.relative_path(ws.dataset.record(int(row)))) for row in rows]
    return EmbeddingMap(projection, rows, [str(label) for label in label_array[rows]], names, len(label_array))


def place_on_map(ws: Workspace, mapping: EmbeddingMap, image: Image.Image) -> np.ndarray:
    """Coordinates of an image on the gallery's map."""
    coordinates: np.ndarray = mapping.projection.transform(ws.embed([image]))[0]
    return coordinates
