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


@dataclass(frozen=True)
class EmbeddingMap:
    """Gallery coordinates on a 2-D map, with the projection to place queries."""

    projection: Projection
    labels: list[str]


def embedding_map(ws: Workspace, method: Literal["pca", "umap"] = "pca") -> EmbeddingMap:
    """The gallery's 2-D map, seeded by the dataset seed."""
    from core.projection import project_2d

    projection = project_2d(ws.embeddings, np.random.default_rng(ws.seed), method)
    return EmbeddingMap(projection, [record.label for record in ws.dataset.records])


def place_on_map(ws: Workspace, mapping: EmbeddingMap, image: Image.Image) -> np.ndarray:
    """Coordinates of an image on the gallery's map."""
    coordinates: np.ndarray = mapping.projection.transform(ws.embed([image]))[0]
    return coordinates
