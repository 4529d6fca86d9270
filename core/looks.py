"""The look metric: does an edited copy of a photo bring its original back first?

Label metrics ask "same label?"; users also ask "which one is it?". Copy-detection benchmarks (Copydays, DISC21)
answer that by editing a photo the way it gets re-shot, cropped and re-compressed, then searching with the edited
copy: the original should come first. Here each evaluated photo gets one seeded copy (:func:`make_copy`):

1. a crop keeping 75–90 % of the area at a random place (:attr:`CopyEdits.crop_area`);
2. a rescale to 70 % of the side (:attr:`CopyEdits.scale`);
3. brightness and colour saturation each changed by up to ±15 % (:attr:`CopyEdits.brightness`, ``colour``);
4. a mirror image with probability 1/2 (:attr:`CopyEdits.mirror`);
5. JPEG re-compression at quality 40–70 (:attr:`CopyEdits.jpeg_quality`).

The copy queries the whole gallery, which holds the original but not the copy. The *rank of the original* is
``1 + ``the number of gallery images, other than the original and its byte-identical twins, that score at least as
high (ties count against the original, as in :func:`core.evaluate.positive_ranks`). Recall@1 is the share of copies
whose original ranks first. Each copy's randomness comes from ``(seed, record index)``, so a photo gets the same
copy whichever sample it is evaluated in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from core.evaluate import Estimate, mean_with_interval, proportion_interval
from core.rankers import BLOCK_ELEMENTS, Ranker, check_embeddings

#: Bumped whenever :class:`CopyEdits`' defaults or :func:`make_copy` change what a copy looks like.
COPY_EDITS_VERSION = 1
#: Copies evaluated per split at most (a stratified, seeded sample beyond it): each copy is an image to featurize.
MAX_COPIES = 500


@dataclass(frozen=True)
class CopyEdits:
    """The edits that make a copy; each range is drawn uniformly per photo.

    Attributes:
        crop_area: Share of the area the crop keeps, ``(low, high)``.
        scale: Side of the copy over the side of the crop.
        brightness: Largest relative brightness change (0.15: factors 0.85–1.15).
        colour: Largest relative saturation change.
        mirror: Probability of a left-right mirror.
        jpeg_quality: JPEG quality range of the re-compression, ``(low, high)`` inclusive.
    """

    crop_area: tuple[float, float] = (0.75, 0.90)
    scale: float = 0.7
    brightness: float = 0.15
    colour: float = 0.15
    mirror: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 70)

    def __post_init__(self) -> None:
        low, high = self.crop_area
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_area must satisfy 0 < low <= high <= 1, got {self.crop_area}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {self.scale}")
        if not (0 <= self.brightness < 1 and 0 <= self.colour < 1 and 0 <= self.mirror <= 1):
            raise ValueError("brightness and colour must lie in [0, 1), mirror in [0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 95:
            raise ValueError(f"jpeg_quality must satisfy 1 <= low <= high <= 95, got {self.jpeg_quality}")


def copy_rng(seed: int, record: int) -> np.random.Generator:
    """The generator of one photo's copy: the same photo gets the same edits in every sample."""
    return np.random.default_rng([int(seed), int(record), COPY_EDITS_VERSION])


def make_copy(image: Image.Image, rng: np.random.Generator, edits: CopyEdits = CopyEdits()) -> Image.Image:
    """An edited copy of an RGB image: crop, rescale, brightness and colour, maybe a mirror, then JPEG.

    Args:
        image: The original.
        rng: Draws every edit (pass :func:`copy_rng` for reproducible copies).
        edits: The edit ranges.
    """
    image = image.convert("RGB")
    width, height = image.size
    area = rng.uniform(*edits.crop_area)
    aspect = rng.uniform(0.9, 1.1) if area < 1 else 1.0  # a crop's aspect ratio wobbles around the photo's
    crop_w = int(np.clip(round(width * np.sqrt(area * aspect)), 1, width))
    crop_h = int(np.clip(round(height * np.sqrt(area / aspect)), 1, height))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    copy = image.crop((left, top, left + crop_w, top + crop_h))
    size = (max(1, round(crop_w * edits.scale)), max(1, round(crop_h * edits.scale)))
    copy = copy.resize(size, Image.Resampling.BILINEAR)
    copy = ImageEnhance.Brightness(copy).enhance(1 + rng.uniform(-edits.brightness, edits.brightness))
    copy = ImageEnhance.Color(copy).enhance(1 + rng.uniform(-edits.colour, edits.colour))
    if rng.random() < edits.mirror:
        copy = ImageOps.mirror(copy)
    buffer = io.BytesIO()
    low, high = edits.jpeg_quality
    copy.save(buffer, format="JPEG", quality=int(rng.integers(low, high + 1)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def original_ranks(
    ranker: Ranker,
    copies: np.ndarray,
    gallery: np.ndarray,
    originals: np.ndarray,
    content: np.ndarray | None = None,
    budget: int = BLOCK_ELEMENTS,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Rank of each copy's original in the whole gallery by ``ranker``; 1 is best.

    Args:
        ranker: Fitted ranker (higher = more similar).
        copies: ``float32[Q, D]`` embeddings of the copies.
        gallery: ``float32[N, D]`` gallery embeddings, holding the originals.
        originals: ``int64[Q]`` the gallery row of each copy's original.
        content: Optional ``[N]`` content id per gallery row (e.g. SHA-256): rows with the original's content are
            its twins and never rank above it.
        budget: Score-matrix elements per block (the gallery is scored in blocks, never ``Q x N`` at once).
        exclude: Optional ``int64[Q]`` gallery row never counted against each copy (the query photo itself, when a
            gallery photo searches for its near-duplicate); -1 for none.

    Returns:
        ``int64[Q]``: ``1 +`` gallery rows of other content scoring at least the original's score.

    Raises:
        ValueError: Misaligned inputs or originals outside the gallery.
    """
    copies, gallery = check_embeddings(copies, gallery)
    originals = np.asarray(originals, np.int64)
    if originals.shape != (len(copies),):
        raise ValueError(f"{len(copies)} copies but {originals.shape} originals")
    if originals.size and (originals.min() < 0 or originals.max() >= len(gallery)):
        raise ValueError(f"originals must lie in [0, {len(gallery)})")
    if content is not None and len(content) != len(gallery):
        raise ValueError(f"{len(gallery)} gallery rows but {len(content)} content ids")
    skip = np.full(len(copies), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if skip.shape != (len(copies),):
        raise ValueError(f"{len(copies)} copies but {skip.shape} rows to exclude")
    if content is None:
        codes = np.arange(len(gallery))
    else:
        codes = np.unique(np.asarray(content), return_inverse=True)[1].reshape(-1)
    own = codes[originals]
    target = ranker.score_pairs(copies, gallery[originals]).astype(np.float32)
    ranks = np.ones(len(copies), np.int64)
    step = max(1, budget // max(1, len(copies)))
    for start in range(0, len(gallery), step):
        scores = ranker.score(copies, gallery[start : start + step])
        other = codes[start : start + step][None, :] != own[:, None]
        other &= np.arange(start, min(start + step, len(gallery)))[None, :] != skip[:, None]
        ranks += ((scores >= target[:, None]) & other).sum(axis=1)
    return ranks


@dataclass(frozen=True)
class CopyResult:
    """The look metric of one ranker.

    Attributes:
        ranker: The ranker's name.
        n_copies: Copies evaluated.
        recall_at_1: Share of copies whose original came first, with its Wilson score 95 % interval.
        mean_rank: Mean rank of the original, with a bootstrap 95 % interval.
        query_pool: Photos the copies were sampled from (0: every photo of the split has a copy).
        ranks: ``int64[n_copies]`` each original's rank.
        originals: ``int64[n_copies]`` the record index of each original.
    """

    ranker: str
    n_copies: int
    recall_at_1: Estimate
    mean_rank: Estimate
    query_pool: int = 0
    ranks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False)
    originals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), compare=False)

    @property
    def note(self) -> str:
        """What was sampled, in one sentence ("" when every photo of the split has a copy)."""
        if not self.query_pool:
            return ""
        return f"copies of {self.n_copies} of {self.query_pool} photos (stratified by label, seeded)"

    def to_dict(self) -> dict:
        """JSON-ready summary (ranks included)."""
        return {
            "ranker": self.ranker,
            "n_copies": self.n_copies,
            "query_pool": self.query_pool,
            "note": self.note,
            "recall@1": asdict(self.recall_at_1),
            "mean_rank": asdict(self.mean_rank),
            "edits_version": COPY_EDITS_VERSION,
            "ranks": self.ranks.tolist(),
        }


def copy_retrieval(
    ranker: Ranker,
    copies: np.ndarray,
    gallery: np.ndarray,
    originals: np.ndarray,
    rng: np.random.Generator,
    content: Sequence[str] | np.ndarray | None = None,
    query_pool: int = 0,
    exclude: np.ndarray | None = None,
) -> CopyResult:
    """Recall@1 and mean rank of the originals of ``copies`` (see :func:`original_ranks`), with 95 % intervals.

    Args:
        ranker: Fitted ranker.
        copies: Embeddings of the copies.
        gallery: Gallery embeddings, holding the originals.
        originals: Gallery row of each copy's original.
        rng: Drives the bootstrap of the mean rank (recall@1, a proportion, gets a Wilson score interval).
        content: Optional content id per gallery row (twins of an original never rank above it).
        query_pool: Photos the copies were sampled from, for the report (0: none were left out).
        exclude: Optional gallery row per copy never counted against it (see :func:`original_ranks`).

    Raises:
        ValueError: No copies, or misaligned inputs.
    """
    if len(copies) == 0:
        raise ValueError("no copies to evaluate")
    content_ids = None if content is None else np.asarray(content)
    ranks = original_ranks(ranker, copies, gallery, originals, content_ids, exclude=exclude)
    return CopyResult(
        ranker=ranker.name,
        n_copies=len(ranks),
        recall_at_1=proportion_interval(int((ranks == 1).sum()), len(ranks)),
        mean_rank=mean_with_interval(ranks.astype(np.float64), rng),
        query_pool=query_pool,
        ranks=ranks,
        originals=np.asarray(originals, np.int64),
    )


def format_looks_table(results: Sequence[CopyResult], edited: bool = True) -> str:
    """A fixed-width table of the look metric per ranker: copy recall@1 and mean rank of the original, 95 % CIs
    (``edited``: the copies are :func:`make_copy`'s, and a line says how they were made; a last line says how the
    intervals were computed)."""
    header = f"{'ranker':<10} {'copies':>6} {'copy recall@1':>24} {'mean rank of original':>27}"
    lines = [header, "-" * len(header)]
    for result in results:
        recall, rank = result.recall_at_1, result.mean_rank
        lines.append(
            f"{result.ranker:<10} {result.n_copies:>6} {recall.value:>8.1%} [{recall.low:5.1%}, {recall.high:5.1%}] "
            f"{rank.value:>10.2f} [{rank.low:6.2f}, {rank.high:6.2f}]"
        )
    notes = dict.fromkeys(result.note for result in results if result.note)
    lines.extend(f"({note})" for note in notes)
    if edited:
        lines.append(
            "(copies: crop to 75-90 % of the area, 70 % size, brightness and colour +-15 %, half mirrored, JPEG 40-70)"
        )
    if results:
        lines.append("(95 % intervals: Wilson score for copy recall@1, bootstrap over the copies for the mean rank)")
    return "\n".join(lines)
