"""The one "no close match" signal: does the query look like a photo of the gallery's kind, or like noise?

Two references, both measured on the gallery's own featurizer:

* **the gallery's floor**: for a seeded sample of gallery images, the cosine similarity to their nearest other
  gallery image (any label); the 5 % quantile of those. A query at least that close to some gallery image is as
  close as gallery images are to each other: a match.
* **generated non-photos**: seeded noise, flat colours, gradients, patterns and text or screenshot-like images
  (:func:`non_photos`), embedded once. A query below the floor is still a match when it is closer to some gallery
  image than to every one of them: a real photo unlike the gallery's own (a full-frame flower photo beside
  cut-outs of plants) is nearer the gallery than noise is; noise, a blank page or a screenshot is nearer its kind.

So a query has **no close match** when its best cosine similarity to the gallery is below the floor *and* no higher
than its similarity to a generated non-photo. The two thresholds, and why, fit in the one sentence of
:meth:`MatchStrength.explain`. The app shows it as a banner, the CLI as a line and the REST API as a field, all
from :meth:`workbench.workspace.Workspace.match`. Measured in ``docs/out_of_gallery.md``
(``benchmarks/out_of_gallery.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.artifacts import atomic_write
from core.errors import ArtifactError

log = logging.getLogger(__name__)

#: Gallery images sampled to calibrate the floor (each compared with the whole gallery).
MAX_ROWS = 1_000
#: Share of gallery images whose nearest other image may lie below the floor.
FLOOR_QUANTILE = 0.05
#: Version of :func:`non_photos` and its seed, part of the cache file's name: a changed set is never read from an old
#: file.
NON_PHOTOS_VERSION = 1


def nearest_neighbour_floor(
    embeddings: np.ndarray,
    quantile: float = FLOOR_QUANTILE,
    block: int = 1024,
    max_rows: int | None = MAX_ROWS,
    rng: np.random.Generator | None = None,
) -> float:
    """How similar a gallery image is, at the least, to its nearest other gallery image (any label).

    For every (sampled) gallery image, its highest cosine similarity to another gallery image; the ``quantile`` of
    those.

    Args:
        embeddings: L2-normalised gallery embeddings, ``(N, D)``.
        quantile: Share of gallery images allowed to lie below the floor.
        block: Rows compared at once (memory is ``block x N`` floats).
        max_rows: Gallery images whose nearest neighbour is sought (a seeded uniform sample of them when the gallery
            is larger; each is still compared with the whole gallery, so the cost is ``max_rows x N``). None: every
            image.
        rng: Draws that sample (default: seed 0).

    Raises:
        ValueError: Fewer than two gallery images, or not a matrix.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"expected (N, D) gallery embeddings, got shape {embeddings.shape}")
    if len(embeddings) < 2:
        raise ValueError("the gallery has fewer than two images: nothing to compare a query's score with")
    sampled = np.arange(len(embeddings))
    if max_rows is not None and len(embeddings) > max_rows:
        generator = rng if rng is not None else np.random.default_rng(0)
        sampled = np.sort(generator.choice(len(embeddings), size=max_rows, replace=False))
    best = np.empty(len(sampled), np.float32)
    for start in range(0, len(sampled), block):
        rows = sampled[start : start + block]
        scores = embeddings[rows] @ embeddings.T
        scores[np.arange(len(rows)), rows] = -np.inf  # not itself
        best[start : start + len(rows)] = scores.max(axis=1)
    return float(np.quantile(best, quantile))


def _text_image(size: tuple[int, int], background: tuple[int, int, int], ink: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    lines = [
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit,",
        "sed do eiusmod tempor incididunt ut labore et dolore",
        "$ python -m workbench search photo.jpg -k 10 --ranker cosine",
        "rank    score  label       path",
    ]
    for row in range(size[1] // 14 - 1):
        draw.text((8, 6 + 14 * row), lines[row % len(lines)], fill=ink)
    return image


def non_photos(rng: np.random.Generator, size: int = 256) -> list[tuple[str, Image.Image]]:
    """Generated images that are no photo of anything, each with its kind: what "no close match" looks like.

    Noise (uniform colour and grey, Gaussian, coarse blocks), flat colours (black, white, mid-grey, light grey,
    red, green, blue, yellow), gradients (grey, colour), patterns (checkerboard, stripes) and text (dark on light,
    light on dark, a screenshot-like window).

    Args:
        rng: Draws the noise.
        size: Side of the square ones, in pixels.
    """
    images: list[tuple[str, Image.Image]] = []
    shape = (size, size, 3)
    images.append(("noise", Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))))
    images.append(("noise", Image.fromarray(np.repeat(rng.integers(0, 256, (size, size, 1), dtype=np.uint8), 3, 2))))
    images.append(("noise", Image.fromarray(np.clip(rng.normal(128, 40, shape), 0, 255).astype(np.uint8))))
    blocks = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    images.append(("noise", blocks.resize((size, size), Image.Resampling.NEAREST)))
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (240, 240, 240), (200, 30, 30), (40, 160, 60)]
    colours += [(20, 60, 200), (230, 200, 40)]
    images.extend(("flat colour", Image.new("RGB", (size, size), colour)) for colour in colours)
    ramp = np.tile(np.linspace(0, 255, size), (size, 1))
    images.append(("gradient", Image.fromarray(np.stack([ramp] * 3, axis=2).astype(np.uint8))))
    images.append(("gradient", Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=2).astype(np.uint8))))
    cells = (np.indices((size, size)) // max(1, size // 8)).sum(axis=0) % 2
    images.append(("pattern", Image.fromarray((cells * 255).astype(np.uint8)).convert("RGB")))
    bars = np.tile((np.arange(size) // max(1, size // 16)) % 2 * 255, (size, 1)).astype(np.uint8)
    images.append(("pattern", Image.fromarray(bars).convert("RGB")))
    images.append(("text", _text_image((400, 300), (255, 255, 255), (0, 0, 0))))
    images.append(("text", _text_image((400, 300), (20, 20, 20), (200, 255, 200))))
    window = _text_image((640, 400), (245, 245, 245), (0, 0, 0))
    draw = ImageDraw.Draw(window)
    draw.rectangle((0, 0, 640, 24), fill=(60, 90, 160))
    draw.rectangle((0, 24, 120, 400), fill=(225, 225, 230))
    draw.rectangle((480, 330, 600, 360), fill=(30, 120, 220))
    images.append(("text", window))
    return images


@dataclass(frozen=True)
class MatchStrength:
    """A query's best cosine similarity to the gallery beside the two references it is judged by.

    Attributes:
        best: The query's best cosine similarity to any gallery image.
        floor: The gallery's floor (:func:`nearest_neighbour_floor`).
        non_photo: The query's best cosine similarity to a generated non-photo (:func:`non_photos`).
        non_photo_kind: That non-photo's kind (noise, flat colour, gradient, pattern, text).
        quantile: The floor's quantile.
    """

    best: float
    floor: float
    non_photo: float
    non_photo_kind: str
    quantile: float = FLOOR_QUANTILE

    @property
    def close(self) -> bool:
        """As close to a gallery image as gallery images are to each other, or closer to one than to any
        generated non-photo."""
        return self.best >= self.floor or self.best > self.non_photo

    def explain(self) -> str:
        """One sentence, the same in every door."""
        share = f"{1 - self.quantile:.0%}".replace("%", " %")
        floor = f"{self.floor:.3f}, which {share} of gallery images reach with their nearest other gallery image"
        start = f"the query's best cosine similarity to a gallery image is {self.best:.3f}"
        if self.best >= self.floor:
            return f"{start}, at least {floor}"
        if self.close:
            return (
                f"{start}, below {floor}, but higher than to any generated non-photo ({self.non_photo:.3f}): a photo "
                "unlike the gallery's own, whose results may still be of its kind"
            )
        return (
            f"{start}, below {floor}, and no higher than to a generated non-photo ({self.non_photo_kind}, "
            f"{self.non_photo:.3f}): the results are the least distant images, not similar ones"
        )


@dataclass(frozen=True)
class MatchReference:
    """What a query of one gallery and featurizer is judged by: the floor and the embedded non-photos."""

    floor: float
    non_photo_embeddings: np.ndarray
    non_photo_kinds: tuple[str, ...]
    quantile: float = FLOOR_QUANTILE

    def strength(self, query: np.ndarray, best: float) -> MatchStrength:
        """The signal for one query embedding ``(1, D)`` or ``(D,)`` whose best gallery cosine is ``best``."""
        vector = np.asarray(query, np.float32).reshape(-1)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        scores = self.non_photo_embeddings @ vector
        nearest = int(np.argmax(scores))
        return MatchStrength(best, self.floor, float(scores[nearest]), self.non_photo_kinds[nearest], self.quantile)


def non_photo_cache(folder: Path, fingerprint: str) -> Path:
    """Where the non-photos' embeddings by the featurizer ``fingerprint`` are kept in a feature folder."""
    return folder / f"{fingerprint}.non-photos-v{NON_PHOTOS_VERSION}.npz"


def _cached_non_photos(path: Path, width: int) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Embeddings and kinds saved by :func:`calibrate`, or None (with a warning when the file is unusable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            embedded, kinds = np.asarray(saved["embeddings"], np.float32), tuple(str(k) for k in saved["kinds"])
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s: unreadable (%s); the non-photos are embedded again", path, err)
        return None
    norms = np.linalg.norm(embedded, axis=1) if embedded.ndim == 2 else np.zeros(0)
    if not kinds or embedded.shape != (len(kinds), width) or not np.allclose(norms, 1.0, atol=1e-3):
        log.warning(
            "%s: %s embeddings of %d kinds do not fit width %d; embedded again", path, embedded.shape, len(kinds), width
        )
        return None
    return embedded, kinds


def calibrate(
    gallery: np.ndarray,
    embed: Callable[[Sequence[Image.Image]], np.ndarray],
    rng: np.random.Generator | None = None,
    quantile: float = FLOOR_QUANTILE,
    max_rows: int | None = MAX_ROWS,
    cache: Path | None = None,
) -> MatchReference:
    """The gallery's floor and its featurizer's embeddings of the generated non-photos.

    Args:
        gallery: L2-normalised gallery embeddings, ``(N, D)``.
        embed: The gallery's featurizer: RGB images to L2-normalised ``(n, D)`` embeddings.
        rng: Draws the floor's sample, then the non-photos' noise (default: seed 0).
        quantile: The floor's quantile.
        max_rows: Gallery images sampled for the floor.
        cache: A file (:func:`non_photo_cache`) that keeps the non-photos' embeddings by this featurizer, read
            when it fits and written atomically when not, so a process embeds them once per featurizer. None:
            embed them every time.

    Raises:
        ValueError: Fewer than two gallery images, or the featurizer's width differs from the gallery's.
    """
    generator = rng if rng is not None else np.random.default_rng(0)
    floor = nearest_neighbour_floor(gallery, quantile, max_rows=max_rows, rng=generator)
    width = np.shape(gallery)[1]
    cached = _cached_non_photos(cache, width) if cache is not None else None
    if cached is not None:
        return MatchReference(floor, cached[0], cached[1], quantile)
    kinds, images = zip(*non_photos(generator), strict=True)
    embedded = np.asarray(embed(list(images)), np.float32)
    if embedded.shape != (len(images), width):
        raise ValueError(f"non-photo embeddings {embedded.shape} do not fit gallery embeddings {np.shape(gallery)}")
    embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, lambda handle: np.savez(handle, embeddings=embedded, kinds=np.array(kinds)))
        except (OSError, ArtifactError) as err:  # a read-only workdir still answers, embedding again next time
            log.warning("%s: not written (%s)", cache, err)
    return MatchReference(floor, embedded, tuple(kinds), quantile)
