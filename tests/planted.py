"""Planted near-duplicates for dedup tests and benchmarks/dedup.py: known copies of real photos.

Each variant turns an original photo into the bytes of a copy. ``EASY`` variants (re-encoding, rescaling) are what
the hash check must find; ``HARD`` ones are the edits of copy-detection benchmarks (Copydays, DISC21) that a
perceptual hash may miss and an embedding should find, reported separately:

* ``crop_3pct`` / ``crop_10pct``: a border of 3 % / 10 % of each side cut off, JPEG q=90;
* ``brighter_20pct``: brightness x1.2, JPEG q=90;
* ``colour_shift``: saturation x1.4 and contrast x0.85 (a re-shoot under other light), JPEG q=90;
* ``mirror``: flipped left-right (the same product shot facing the other way), PNG;
* ``crop_rescale_q50``: 8 % crop, scaled to 80 %, JPEG q=50 (a re-posted thumbnail).

Every edit is deterministic; which photos get which edit is drawn with a ``numpy.random.Generator``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _resized(image: Image.Image, factor: float) -> Image.Image:
    return image.resize(
        (max(8, round(image.width * factor)), max(8, round(image.height * factor))), Image.Resampling.BICUBIC
    )


def _cropped(image: Image.Image, share: float) -> Image.Image:
    dx, dy = round(image.width * share), round(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


EASY: dict[str, tuple[str, Callable[[bytes, Image.Image], bytes]]] = {
    "exact": ("jpg", lambda data, image: data),
    "jpeg_q30": ("jpg", lambda data, image: _encode(image, "JPEG", quality=30)),
    "png": ("png", lambda data, image: _encode(image, "PNG")),
    "half_size": ("jpg", lambda data, image: _encode(_resized(image, 0.5), "JPEG", quality=85)),
    "quarter_size_q60": ("jpg", lambda data, image: _encode(_resized(image, 0.25), "JPEG", quality=60)),
    "double_size": ("png", lambda data, image: _encode(_resized(image, 2.0), "PNG")),
}
HARD: dict[str, tuple[str, Callable[[bytes, Image.Image], bytes]]] = {
    "crop_3pct": ("jpg", lambda data, image: _encode(_cropped(image, 0.03), "JPEG", quality=90)),
    "crop_10pct": ("jpg", lambda data, image: _encode(_cropped(image, 0.10), "JPEG", quality=90)),
    "brighter_20pct": (
        "jpg",
        lambda data, image: _encode(ImageEnhance.Brightness(image).enhance(1.2), "JPEG", quality=90),
    ),
    "colour_shift": (
        "jpg",
        lambda data, image: _encode(
            ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(1.4)).enhance(0.85), "JPEG", quality=90
        ),
    ),
    "mirror": ("png", lambda data, image: _encode(ImageOps.mirror(image), "PNG")),
    "crop_rescale_q50": ("jpg", lambda data, image: _encode(_resized(_cropped(image, 0.08), 0.8), "JPEG", quality=50)),
}
VARIANTS = {**EASY, **HARD}


def plant(
    sources: Sequence[Path], out: Path, variants: Sequence[str], rng: np.random.Generator
) -> list[tuple[Path, Path, str]]:
    """Copy ``sources`` into ``out/<label>/`` and add one planted copy per (source, variant).

    Copies are named ``zz-...`` so that the original sorts first in its label folder (dedup keeps the
    first of each group). Variants are spread over the sources with ``rng``.

    Returns:
        ``(original, copy, variant)`` for every planted copy.
    """
    from core.images import load_image

    planted = []
    for source in sources:
        target = out / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    chosen = rng.choice(len(sources), size=len(variants), replace=len(variants) > len(sources))
    for n, (variant, index) in enumerate(zip(variants, chosen, strict=True)):
        source = sources[index]
        original = out / source.parent.name / source.name
        suffix, make = VARIANTS[variant]
        copy = original.parent / f"zz-{n:03d}-{variant}-{source.stem}.{suffix}"
        copy.write_bytes(make(source.read_bytes(), load_image(source)))
        planted.append((original, copy, variant))
    return planted
