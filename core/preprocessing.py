"""Preprocessing that travels with the weights, as plain data, and the transform it describes.

Torch-free on purpose: an onnxruntime-only process (query-time search) needs it without loading torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a model; it travels with the weights.

    Attributes:
        input_size: Side of the square crop fed to the network.
        resize_size: Shorter side after resizing, before the centre crop.
        mean: Per-channel mean subtracted from [0, 1] pixel values.
        std: Per-channel divisor applied after the mean.
        interpolation: Pillow resampling filter name (``"bicubic"`` or ``"bilinear"``).
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def resize_crop(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize the shorter side and centre-crop an RGB image into ``uint8[S, S, 3]``."""
    size, short = preprocessing.input_size, preprocessing.resize_size
    width, height = image.size
    scale = short / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, resample=_RESAMPLE[preprocessing.interpolation])
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalize_pixels(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``uint8[..., S, S, 3]`` pixels into normalised ``float32[..., 3, S, S]``."""
    array = pixels.astype(np.float32) / 255.0
    array = (array - np.asarray(preprocessing.mean, np.float32)) / np.asarray(preprocessing.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize, centre-crop and normalise an RGB image into ``float32[3, S, S]``."""
    return normalize_pixels(resize_crop(image, preprocessing), preprocessing)


def fingerprint_of(name: str, weights_id: str, preprocessing: Preprocessing) -> str:
    """Short stable id of a featurizer: architecture, weights and preprocessing."""
    text = f"{name}|{weights_id}|{preprocessing}"
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
