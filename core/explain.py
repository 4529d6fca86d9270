"""Why two images were ranked as similar: exact spatial decomposition of their cosine similarity.

The backbones pool their last convolutional feature map ``A`` (``C x H x W``) by averaging, so the unit
embedding is ``e = mean_hw A / ||mean_hw A||`` and the cosine similarity of a query q and a result r splits
exactly over the result's locations::

    cos(q, r) = sum_hw  e_q . A_r[:, hw] / (H W ||mean A_r||)

Each term says how much that region of r contributes to the similarity (and symmetrically for q). No
gradients and no approximation: the map of each image sums to the similarity itself, a property the tests
check. Regions where two nearly identical images *differ* show up as the drop between an image's map
against itself and its map against the other one (:func:`difference_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core.backbones import Backbone
from core.preprocessing import normalize_pixels, resize_crop

if TYPE_CHECKING:
    import torch


@runtime_checkable
class _HasForwardFeatures(Protocol):
    """timm models: the unpooled last feature map; isinstance tests the method's presence."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SimilarityMaps:
    """Per-location contributions to one cosine similarity, each on the feature grid (``H x W``).

    Attributes:
        similarity: The cosine similarity of the two embeddings (= each map's sum).
        query_map: Contribution of each query location.
        result_map: Contribution of each result location.
        query_pixels: The query as the network saw it, ``uint8[S, S, 3]``.
        result_pixels: The result as the network saw it.
    """

    similarity: float
    query_map: np.ndarray
    result_map: np.ndarray
    query_pixels: np.ndarray
    result_pixels: np.ndarray


def feature_maps(backbone: Backbone, pixels: np.ndarray) -> np.ndarray:
    """Last convolutional feature maps ``float32[N, C, H, W]`` for ``uint8[N, S, S, 3]`` pixels.

    Raises:
        ValueError: The architecture exposes no spatial feature map.
    """
    import torch

    model = backbone.model.eval()
    batch = torch.from_numpy(normalize_pixels(pixels, backbone.preprocessing))
    with torch.inference_mode():
        if isinstance(model, _HasForwardFeatures):  # timm models
            maps = model.forward_features(batch)
        elif hasattr(model, "layer4"):  # torchvision ResNets: everything before the pooling
            maps = torch.nn.Sequential(*list(model.children())[:-2])(batch)
        else:
            raise ValueError(f"{backbone.name}: no spatial feature map to explain")
    return maps.float().numpy()


def _contributions(maps: np.ndarray, other_unit: np.ndarray) -> np.ndarray:
    pooled = maps.mean(axis=(1, 2))
    cells = maps.shape[1] * maps.shape[2]
    return np.einsum("c,chw->hw", other_unit, maps) / (cells * np.linalg.norm(pooled))


def similarity_maps(backbone: Backbone, query: Image.Image, result: Image.Image) -> SimilarityMaps:
    """Decompose the cosine similarity of two RGB images over the locations of each."""
    pixels = np.stack([resize_crop(query, backbone.preprocessing), resize_crop(result, backbone.preprocessing)])
    query_maps, result_maps = feature_maps(backbone, pixels)
    units = [m.mean(axis=(1, 2)) / np.linalg.norm(m.mean(axis=(1, 2))) for m in (query_maps, result_maps)]
    return SimilarityMaps(
        similarity=float(units[0] @ units[1]),
        query_map=_contributions(query_maps, units[1]),
        result_map=_contributions(result_maps, units[0]),
        query_pixels=pixels[0],
        result_pixels=pixels[1],
    )


def difference_map(backbone: Backbone, reference: Image.Image, other: Image.Image) -> np.ndarray:
    """Where ``other`` departs from ``reference``: drop of each location's contribution, ``H x W``.

    Compares ``reference``'s map against itself with ``other``'s map against ``reference``; large values
    mark the regions that make ``other`` less similar.
    """
    self_maps = similarity_maps(backbone, reference, reference)
    other_maps = similarity_maps(backbone, reference, other)
    return self_maps.result_map - other_maps.result_map


def overlay(pixels: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """Blend a heatmap (any grid size, scaled to its own range) over ``uint8[S, S, 3]`` pixels: red high, blue low."""
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - low) / (high - low) if high > low else np.full_like(heatmap, 0.5)
    size = pixels.shape[1], pixels.shape[0]
    mask = (
        np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR), np.float32)
        / 255
    )
    colour = np.stack([mask, 0.15 * np.ones_like(mask), 1 - mask], axis=-1) * 255
    return Image.fromarray((pixels * (1 - opacity) + colour * opacity).astype(np.uint8))
