"""Datasets from a folder-per-label layout, stratified seeded splits and comparative sets."""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, overload

import numpy as np

from core.attributes import ATTRIBUTES_FILE, read_attributes
from core.config import FILE_LIMITS, ImageLimits
from core.errors import DatasetError, ImageLoadError
from core.images import DHASH_SIZE, content_hash, decode_image, perceptual_hash, printable, read_image_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
OnError = Literal["skip", "raise"]
#: Folder (inside a dataset root) where ``dedup --apply`` moves near-duplicates; never scanned as a label.
DUPLICATES_DIR = "_duplicates"


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image. ``sha256`` identifies its content, whatever its path."""

    path: Path
    label: str
    sha256: str


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a dataset, with the reason."""

    path: Path
    reason: str


class RecordColumns(Sequence[ImageRecord]):
    """Records kept as columns (relative path, label, content hash) under one root: a record object is made only
    when one is asked for, so a dataset of a million photos opens without building a million paths.

    Equal to any sequence of the same records, a tuple included.
    """

    __slots__ = ("labels", "relative_paths", "root", "sha256s")

    def __init__(
        self, root: Path, relative_paths: Sequence[str], labels: Sequence[str], sha256s: Sequence[str]
    ) -> None:
        if not len(relative_paths) == len(labels) == len(sha256s):
            raise ValueError(f"{len(relative_paths)} paths, {len(labels)} labels and {len(sha256s)} hashes")
        self.root, self.relative_paths, self.labels, self.sha256s = Path(root), relative_paths, labels, sha256s

    def __len__(self) -> int:
        return len(self.relative_paths)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ImageRecord, ...]: ...

    def __getitem__(self, index: int | slice) -> ImageRecord | tuple[ImageRecord, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        return ImageRecord(self.root / self.relative_paths[index], self.labels[index], self.sha256s[index])

    def __iter__(self) -> Iterator[ImageRecord]:
        root = self.root
        for relative, label, sha256 in zip(self.relative_paths, self.labels, self.sha256s, strict=True):
            yield ImageRecord(root / relative, label, sha256)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordColumns):
            return (self.root, tuple(self.relative_paths), tuple(self.labels), tuple(self.sha256s)) == (
                other.root,
                tuple(other.relative_paths),
                tuple(other.labels),
                tuple(other.sha256s),
            )
        return (
            isinstance(other, Sequence)
            and len(other) == len(self)
            and all(a == b for a, b in zip(self, other, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence: not hashable, like a list


@dataclass(frozen=True)
class ImageDataset:
    """An ordered collection of labelled images; the order defines record indices.

    ``records`` is a tuple, or :class:`RecordColumns` for large folders (records made on demand).
    """

    records: Sequence[ImageRecord]
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> ImageRecord:
        """The record at ``index`` (cheap whatever the size)."""
        return self.records[index]

    @property
    def labels(self) -> tuple[str, ...]:
        """Sorted distinct labels."""
        if isinstance(self.records, RecordColumns):
            return tuple(sorted(set(self.records.labels)))
        return tuple(sorted({record.label for record in self.records}))

    @property
    def label_array(self) -> np.ndarray:
        """Label of each record, as a string array aligned with ``records``."""
        if isinstance(self.records, RecordColumns):
            return np.array(self.records.labels, dtype=object)
        return np.array([record.label for record in self.records], dtype=object)

    @property
    def relative_paths(self) -> Sequence[str]:
        """Each record's path relative to ``root`` (the path itself without a root)."""
        if isinstance(self.records, RecordColumns):
            return self.records.relative_paths
        if self.root is None:
            return [str(record.path) for record in self.records]
        return [str(record.path.relative_to(self.root)) for record in self.records]

    @property
    def sha256s(self) -> Sequence[str]:
        """Content hash of each record, aligned with ``records``."""
        if isinstance(self.records, RecordColumns):
            return self.records.sha256s
        return [record.sha256 for record in self.records]

    def label_counts(self) -> dict[str, int]:
        """Number of images per label."""
        labels, counts = np.unique(self.label_array.astype(str), return_counts=True)
        return {str(label): int(count) for label, count in zip(labels, counts, strict=True)}

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """A dataset with the records at ``indices``, in that order."""
        return ImageDataset(tuple(self.records[i] for i in indices), self.root)


@dataclass(frozen=True)
class ScanReport:
    """What a folder scan kept and what it left out."""

    dataset: ImageDataset
    skipped: tuple[SkippedFile, ...]
    #: Difference hash of each record (``uint8[N, DHASH_SIZE**2 / 8]``, packed bits), aligned with
    #: ``dataset.records``; None when the scan was asked not to hash.
    dhashes: np.ndarray | None = None


def _inspect_file(path: Path, with_hash: bool, limits: ImageLimits) -> tuple[str | None, np.ndarray | None, str | None]:
    """Hash and fully decode one file; return (sha256, dhash, None) or (None, None, reason).

    The hash is of the very bytes that were decoded, read once.
    """
    try:
        data = read_image_file(path, limits)
        image = decode_image(data, name=str(path), limits=limits)
        dhash = perceptual_hash(image, DHASH_SIZE) if with_hash else None
    except ImageLoadError as err:
        return None, None, str(err)
    return content_hash(data), dhash, None


def label_of(folder_name: str) -> str:
    """The label of a label folder: its name in Unicode NFC, with undecodable bytes and control characters escaped.

    Two folders whose names differ only in invalid UTF-8 bytes (``caf\\xe9`` and ``caf\\xff``) keep two labels;
    two whose names differ only in Unicode normalisation (``café`` typed on Linux, NFC, and on macOS, NFD) print
    identically, so they get the same label here and :func:`scan_folder` refuses the pair in one line.
    """
    return printable(unicodedata.normalize("NFC", folder_name))


def check_within_roots(path: str | Path, roots: Sequence[str | Path]) -> Path:
    """The real location of ``path`` (every symbolic link resolved), which must lie inside one of ``roots``.

    Links are resolved before the check, on both sides, so a link inside an allowed folder that leads out of it
    is refused, and an allowed folder reached through a link is still allowed.

    Raises:
        DatasetError: ``path`` resolves outside every root; one line naming the path, where it leads and the roots.
    """
    real = Path(os.path.realpath(path))
    allowed = [Path(os.path.realpath(root)) for root in roots]
    if any(real == root or root in real.parents for root in allowed):
        return real
    where = ", ".join(printable(str(root)) for root in allowed)
    if real == Path(os.path.abspath(path)):
        raise DatasetError(f"{printable(str(path))}: outside the folders that may be opened ({where})")
    raise DatasetError(
        f"{printable(str(path))}: a link to {printable(str(real))}, outside the folders that may be opened "
        f"({where}); a link may not leave them: copy the photos in or remove the link"
    )


def _same_label_problem(label_dir: Path, other: Path, label: str) -> str:
    if label_dir.name != other.name and label_of(label_dir.name) == label_of(other.name):

        def form(name: str) -> str:
            return next((f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, name)), "mixed")

        return (
            f"{printable(str(label_dir))} ({form(label_dir.name)}) and {printable(str(other))} "
            f"({form(other.name)}): two folders whose names differ only in Unicode normalisation, both label "
            f"{label!r}; merge them into one folder"
        )
    return (
        f"{printable(str(label_dir))}: label {label!r} is also the label of {printable(str(other))}; "
        "rename one of the folders"
    )


def label_folders(root: str | Path) -> tuple[list[Path], list[SkippedFile]]:
    """The label folders of a dataset, sorted, and the folders left out because they link out of ``root``.

    Hidden folders and :data:`DUPLICATES_DIR` are not labels. A label folder that is a symbolic link leading out
    of ``root`` is left out (:func:`check_within_roots`). Labels come from :func:`label_of`.

    Raises:
        DatasetError: ``root`` is missing, has no label folders, or two folders get the same label (names that
            differ only in Unicode normalisation included); one line naming both folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{printable(str(root))}: dataset folder not found")
    folders: list[Path] = []
    left_out: list[SkippedFile] = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.name.startswith(".") and path.name != DUPLICATES_DIR:
            outside = link_out_of(path, root)
            if outside is None:
                folders.append(path)
            else:
                left_out.append(outside)
    if not folders:
        shown = printable(str(root))
        raise DatasetError(f"{shown}: no label folders (expected {shown}/<label>/<image files>)")
    folder_of: dict[str, Path] = {}
    for folder in folders:
        label = label_of(folder.name)
        if label in folder_of:
            raise DatasetError(_same_label_problem(folder, folder_of[label], label))
        folder_of[label] = folder
    return folders, left_out


def link_out_of(path: str | Path, root: str | Path) -> SkippedFile | None:
    """``path`` as a skipped entry when it is a symbolic link leading out of ``root``, else None (one ``lstat``
    for entries that are not links)."""
    if not os.path.islink(path):
        return None
    try:
        check_within_roots(path, [root])
    except DatasetError as err:
        return SkippedFile(Path(path), str(err))
    return None


def scan_folder(
    root: str | Path,
    on_error: OnError = "skip",
    workers: int = 4,
    perceptual_hashes: bool = True,
    limits: ImageLimits = FILE_LIMITS,
) -> ScanReport:
    """Build a dataset from ``root/<label>/<image>``, checking that every image decodes.

    Files are decoded once here so that bad files are reported up front, named, and not discovered
    halfway through featurizing. Exact duplicates (same bytes) keep their first occurrence only, so
    one picture can never land on both sides of a split. Label folders whose names are not valid
    UTF-8 get a printable label (undecodable bytes shown as ``\\xNN``, see :func:`label_of`);
    ``DUPLICATES_DIR`` is not a label. Symbolic links (label folders or files) that lead out of ``root`` are
    skipped and reported (:func:`check_within_roots`): a dataset is what lies inside its folder. Entries that are not regular files (a FIFO, a device, a link to
    one) or are larger than ``limits.max_file_bytes`` are skipped and reported without being read.

    Args:
        root: Folder whose sub-folders are labels.
        on_error: ``"skip"`` leaves bad files out and reports them; ``"raise"`` stops at the first.
        workers: Threads used to decode (Pillow releases the GIL while decoding).
        perceptual_hashes: Also compute each image's difference hash while it is decoded anyway
            (``ScanReport.dhashes``, used for near-duplicate and leakage checks).
        limits: Size and pixel ceilings for each file.

    Raises:
        DatasetError: ``root`` is missing, has no label folders, two folders would get the same label (names
            that differ only in Unicode normalisation included), or there is no usable image.
        ImageLoadError: With ``on_error="raise"``, the first bad file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{printable(str(root))}: dataset folder not found")
    label_dirs, skipped = label_folders(root)
    candidates: list[tuple[Path, str]] = []
    for label_dir in label_dirs:
        files = sorted(p for p in label_dir.rglob("*") if not p.name.startswith(".") and not p.is_dir())
        if not files:
            log.warning("%s: empty label folder, ignored", printable(str(label_dir)))
        label = label_of(label_dir.name)
        for path in files:
            outside = link_out_of(path, root)
            if outside is not None:
                skipped.append(outside)
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                candidates.append((path, label))
            else:
                suffix = printable(path.suffix) or "none"
                skipped.append(SkippedFile(path, f"{printable(str(path))}: not an image file extension ({suffix})"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        inspected = list(
            pool.map(lambda path: _inspect_file(path, perceptual_hashes, limits), (path for path, _ in candidates))
        )
    records: list[ImageRecord] = []
    dhashes: list[np.ndarray | None] = []
    first_path_of: dict[str, Path] = {}
    for (path, label), (sha256, dhash, reason) in zip(candidates, inspected, strict=True):
        if sha256 is None:
            if on_error == "raise":
                raise ImageLoadError(reason)
            skipped.append(SkippedFile(path, str(reason)))
        elif sha256 in first_path_of:
            skipped.append(
                SkippedFile(path, f"{printable(str(path))}: exact duplicate of {printable(str(first_path_of[sha256]))}")
            )
        else:
            first_path_of[sha256] = path
            records.append(ImageRecord(path, label, sha256))
            dhashes.append(dhash)
    for item in skipped:
        log.warning("skipped %s", item.reason)
    if not records:
        raise DatasetError(f"{printable(str(root))}: no usable images found")
    hashes = np.stack([h for h in dhashes if h is not None]) if perceptual_hashes else None
    return ScanReport(ImageDataset(tuple(records), root), tuple(skipped), hashes)


@dataclass(frozen=True)
class Split:
    """Indices into a dataset for the train and test sides."""

    train: np.ndarray
    test: np.ndarray


def stratified_split(labels: Sequence[str] | np.ndarray, train_fraction: float, rng: np.random.Generator) -> Split:
    """Split each label's images into train and test with the same fraction.

    Each label with at least two images keeps at least one image on each side; a label with a single
    image goes to train (it cannot be queried anyway). scikit-learn's ``train_test_split`` refuses such
    labels, which real folders do have, hence this small function. When rounding would leave one side
    without any label of 2 or more images (no query there could have a positive), one label that can
    spare an image gives it to that side (see :func:`_queryable_sides`).

    Args:
        labels: Label of each record.
        train_fraction: Share of each label's images used for training, in (0, 1).
        rng: Source of randomness; the split is a pure function of its state.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    labels = np.asarray(labels, dtype=object)
    names = sorted(set(labels.tolist()))
    members_of = [rng.permutation(np.flatnonzero(labels == label)) for label in names]
    sizes = np.array([len(members) for members in members_of], dtype=np.int64)
    n_train = np.array([round(train_fraction * size) for size in sizes], dtype=np.int64)
    n_train = np.where(sizes >= 2, np.clip(n_train, 1, np.maximum(sizes - 1, 1)), sizes)
    n_train = _queryable_sides(sizes, n_train)
    train_parts = [members[:n] for members, n in zip(members_of, n_train.tolist(), strict=True)]
    test_parts = [members[n:] for members, n in zip(members_of, n_train.tolist(), strict=True)]
    return Split(
        np.sort(np.concatenate(train_parts or [np.zeros(0, np.int64)])),
        np.sort(np.concatenate(test_parts or [np.zeros(0, np.int64)])),
    )


def content_split(
    sha256s: Sequence[str], labels: Sequence[str] | np.ndarray, train_fraction: float, seed: int
) -> Split:
    """Split by content: each image goes to train when a seeded hash of its content falls below ``train_fraction``.

    Unlike :func:`stratified_split`, an image's side depends on nothing but its own content, the seed and the
    fraction, so photos added to a folder join a side without moving any other photo: earlier reports of the test
    split stay comparable. Per label the share is ``train_fraction`` on average, not exactly. Small labels get
    :func:`stratified_split`'s guarantees by moving the photos nearest the cut: a label of two or more images keeps
    at least one on each side, and each side keeps a label with two or more images where the data allow.

    Args:
        sha256s: Content hash (hex) of each record.
        labels: Label of each record.
        train_fraction: Expected share of training images, in (0, 1).
        seed: Salts the hash (another seed, another split).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    labels = np.asarray(labels, dtype=object)
    if len(sha256s) != len(labels):
        raise ValueError(f"{len(sha256s)} content hashes but {len(labels)} labels")
    position = _content_positions(sha256s, seed)
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    sizes = np.bincount(codes, minlength=len(names)).astype(np.int64)
    n_train = np.bincount(codes, weights=position < train_fraction, minlength=len(names)).astype(np.int64)
    n_train = np.where(sizes >= 2, np.clip(n_train, 1, np.maximum(sizes - 1, 1)), sizes)
    n_train = _queryable_sides(sizes, n_train)
    # within a label, the n_train images of lowest position train: the hash rule itself unless a guarantee moved
    # the cut, and then only the images nearest it move
    order = np.lexsort((position, codes))
    rank_in_label = np.empty(len(labels), np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_in_label[order] = np.arange(len(labels)) - np.repeat(starts, sizes)
    is_train = rank_in_label < n_train[codes]
    return Split(np.flatnonzero(is_train).astype(np.int64), np.flatnonzero(~is_train).astype(np.int64))


def _content_positions(sha256s: Sequence[str], seed: int) -> np.ndarray:
    """A uniform position in [0, 1) per content hash and seed (splitmix64 of the hash's first 64 bits)."""
    return (_content_keys(sha256s, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _content_keys(sha256s: Sequence[str], seed: int, salt: int = 0) -> np.ndarray:
    """A uniform 64-bit key per content hash, seed and salt: splitmix64 of the hash's first 64 bits.

    Salt 0 is the split's key (:func:`content_split`); other salts give keys independent of it and of each other.
    """
    prefixes = bytes.fromhex("".join(sha[:16] for sha in sha256s))
    with np.errstate(over="ignore"):
        x = np.frombuffer(prefixes, dtype=">u8").astype(np.uint64)
        x ^= np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        x ^= np.uint64(0xD1B54A32D192ED03) * np.uint64(salt)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _queryable_sides(sizes: np.ndarray, n_train: np.ndarray) -> np.ndarray:
    """Move images between sides so that each side has a label with 2 or more images, where possible.

    A query needs a positive on its own side. Rounding each label alone can leave a side with a single image
    per label (3 images at 0.75 give 2 + 1 for every label, so no test query had a positive): then the
    largest label that can spare it gives one image to the short side. Splits that already work are unchanged.
    """
    n_train = n_train.copy()
    for side in ("test", "train"):
        n_side = sizes - n_train if side == "test" else n_train
        if (n_side >= 2).any():
            continue
        for label in np.argsort(-sizes, kind="stable"):
            other_after = (n_train if side == "test" else sizes - n_train).copy()
            other_after[label] = sizes[label] - 2
            if sizes[label] >= 3 and (other_after >= 2).any():
                n_train[label] = sizes[label] - 2 if side == "test" else 2
                break
    return n_train


def check_disjoint(dataset: ImageDataset, split: Split) -> None:
    """Raise if any image is on both sides of ``split``, by index, path or content hash.

    Raises:
        DatasetError: Naming the first offending file.
    """
    columns = {"path": dataset.relative_paths, "sha256": dataset.sha256s}
    for key, values in columns.items():
        train_row = {values[i]: int(i) for i in split.train.tolist()}
        for i in split.test.tolist():
            if values[i] in train_row:
                record, other = dataset.record(i), dataset.record(train_row[values[i]])
                raise DatasetError(
                    f"{printable(str(record.path))}: same {key} as training image {printable(str(other.path))} (train/test leakage)"
                )


@dataclass(frozen=True)
class ComparativeSets:
    """Queries, each with one positive and ``n_negatives`` negatives, as indices into one dataset.

    ``references[:, 0]`` is the positive; ``references[:, 1:]`` are the negatives.
    """

    queries: np.ndarray
    references: np.ndarray

    @property
    def n_negatives(self) -> int:
        return int(self.references.shape[1] - 1)

    def __len__(self) -> int:
        return int(self.queries.shape[0])


def make_comparative_sets(
    labels: Sequence[str] | np.ndarray,
    n_queries_per_label: int,
    n_negatives: int,
    rng: np.random.Generator,
) -> ComparativeSets:
    """Draw comparative sets: per label up to ``n_queries_per_label`` distinct queries.

    Each query gets one positive (same label, another image) and ``n_negatives`` distinct negatives
    from other labels. When the data are too small, the number of negatives shrinks to what every
    label can offer, so all sets have the same size and ranks stay comparable. The draw follows record positions:
    one added image redraws every set; :func:`content_comparative_sets` keeps sets stable as a folder grows.

    Raises:
        DatasetError: Fewer than two labels, or no label with two images.
    """
    labels = np.asarray(labels, dtype=object)
    names = sorted(set(labels.tolist()))
    members_of = {name: np.flatnonzero(labels == name) for name in names}
    sizes = np.array([len(members_of[name]) for name in names], dtype=np.int64)
    usable_mask, n_negatives = _set_sizes(sizes, n_negatives)
    usable = [name for name, ok in zip(names, usable_mask.tolist(), strict=True) if ok]
    queries, references = [], []
    for name in usable:
        members = members_of[name]
        n_queries = min(n_queries_per_label, len(members))
        query_pos = rng.choice(len(members), size=n_queries, replace=False)
        # positive: any other member, drawn uniformly by skipping past the query's own slot
        offsets = rng.integers(1, len(members), size=n_queries)
        positives = members[(query_pos + offsets) % len(members)]
        others = np.flatnonzero(labels != name)
        # distinct negatives per row: the n smallest of independent uniform keys
        keys = rng.random((n_queries, len(others)))
        negatives = (
            others[np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]]
            if n_negatives
            else np.empty((n_queries, 0), int)
        )
        queries.append(members[query_pos])
        references.append(np.column_stack([positives, negatives]))
    return ComparativeSets(np.concatenate(queries), np.concatenate(references).astype(np.int64))


def _set_sizes(sizes: np.ndarray, n_negatives: int) -> tuple[np.ndarray, int]:
    """Which labels can be queried (2 or more images), and the negatives per set every such label can offer.

    Raises:
        DatasetError: Fewer than two labels, or no label with two images.
    """
    if len(sizes) < 2:
        raise DatasetError(f"need at least 2 labels to draw negatives, found {len(sizes)}")
    usable = sizes >= 2
    if not usable.any():
        raise DatasetError("no label has 2 or more images, so no query can have a positive")
    available = int((sizes.sum() - sizes[usable]).min())
    if n_negatives > available:
        log.warning(
            "only %d negatives available for some label; using %d instead of %d", available, available, n_negatives
        )
        n_negatives = available
    return usable, n_negatives


#: Salts of :func:`_content_keys` for the comparative sets (0 is the split's).
_QUERY_SALT, _CIRCLE_SALT = 1, 2


def content_comparative_sets(
    labels: Sequence[str] | np.ndarray,
    sha256s: Sequence[str],
    n_queries_per_label: int,
    n_negatives: int,
    seed: int,
) -> ComparativeSets:
    """Comparative sets drawn by content, so that photos added to a folder change only the sets they meet.

    Like :func:`make_comparative_sets` (same sizes, same shrinking of ``n_negatives``, same errors), but every choice
    follows from seeded hashes of the photos' content (as :func:`content_split` does), not from record positions:

    - the queries of a label are its ``n_queries_per_label`` photos of smallest query key;
    - all photos stand on a circle ordered by a second key; walking on from a query, the first photo of its label
      is its positive and the first ``n_negatives`` photos of other labels are its negatives.

    An added photo changes a label's queries only when its query key is among the smallest, and a set only when it
    lands between the query and the set's last reference on the circle: there it replaces one reference. A set
    holds each other photo with the same chance, as a uniform draw would. Cost O(N log N + Q * n_negatives * log N)
    for N photos and Q queries; nothing Q x N.

    Args:
        labels: Label of each record.
        sha256s: Content hash (hex) of each record.
        n_queries_per_label: Queries per label (fewer where a label is smaller).
        n_negatives: Negatives per query (shrunk when the data are too small).
        seed: Salts the hashes (another seed, other sets).

    Raises:
        DatasetError: Fewer than two labels, or no label with two images.
        ValueError: As many content hashes as labels are needed.
    """
    labels = np.asarray(labels, dtype=object)
    if len(sha256s) != len(labels):
        raise ValueError(f"{len(sha256s)} content hashes but {len(labels)} labels")
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    codes = codes.astype(np.int64)
    sizes = np.bincount(codes, minlength=len(names)).astype(np.int64)
    usable, n_negatives = _set_sizes(sizes, n_negatives)
    count = len(labels)
    records = np.arange(count, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rank_of_sorted = records - np.repeat(starts, sizes)  # rank within the label, for records sorted by label first

    # queries: per label the smallest query keys (ties by record), grouped by label name
    by_query_key = np.lexsort((records, _content_keys(sha256s, seed, _QUERY_SALT), codes))
    chosen = (rank_of_sorted < n_queries_per_label) & usable[codes[by_query_key]]
    queries = by_query_key[chosen]
    query_codes = codes[queries]

    # the circle: records in order of a second key; each label's records in circle order
    circle = np.lexsort((records, _content_keys(sha256s, seed, _CIRCLE_SALT)))
    place = np.empty(count, np.int64)
    place[circle] = records
    by_label_place = np.lexsort((place, codes))
    rank_on_circle = np.empty(count, np.int64)
    rank_on_circle[by_label_place] = rank_of_sorted
    query_ranks = rank_on_circle[queries]
    positives = by_label_place[starts[query_codes] + (query_ranks + 1) % sizes[query_codes]]

    # negatives: other-label records numbered in circle order; the j-th sits at place j + (own-label records before
    # it), counted by one search in the labels' "other-label records before each own one", offset per label
    others_before_own = place[by_label_place] - rank_of_sorted
    stride = count + 1
    searchable = codes[by_label_place] * stride + others_before_own  # ascending: by label, then along the circle
    first_other = place[queries] - query_ranks  # other-label records up to the query on the circle
    n_others = count - sizes[query_codes]
    other_ranks = (first_other[:, None] + np.arange(n_negatives)[None, :]) % n_others[:, None]
    own_before = np.searchsorted(searchable, query_codes[:, None] * stride + other_ranks, side="right")
    negatives = circle[other_ranks + own_before - starts[query_codes][:, None]]
    references = np.column_stack([positives, negatives]).astype(np.int64)
    return ComparativeSets(queries.astype(np.int64), references)


def apply_condition(report: ScanReport, condition: str, attributes: Path | None = None) -> ScanReport:
    """Relabel a scan by one attribute column: the *condition* that defines "similar".

    The attributes file (default ``<root>/attributes.csv``; its format: :mod:`core.attributes`) has a ``path``
    column (relative to the dataset root) and one column per attribute, e.g. ``path,texture,sleeve``. Images
    without a value for the condition are left out and reported; rows naming missing images are ignored.

    Raises:
        DatasetError: No attributes file, no ``path`` column, an unknown condition or a malformed row,
            naming the file and line.
    """
    root = report.dataset.root
    path = Path(attributes) if attributes else (root / ATTRIBUTES_FILE if root else None)
    if path is None or not path.is_file():
        raise DatasetError(f"{path}: attributes file not found (needed for condition {condition!r})")
    values = read_attributes(path).values_of(condition)
    records, skipped = [], list(report.skipped)
    kept = []
    for index, record in enumerate(report.dataset.records):
        value = values.get(PurePosixPath(record.path.relative_to(root).as_posix())) if root else None
        if value:
            records.append(ImageRecord(record.path, value, record.sha256))
            kept.append(index)
        else:
            skipped.append(SkippedFile(record.path, f"{printable(str(record.path))}: no {condition!r} value in {path}"))
    if not records:
        raise DatasetError(f"{path}: no image of {root} has a {condition!r} value")
    dhashes = report.dhashes[kept] if report.dhashes is not None else None
    return ScanReport(ImageDataset(tuple(records), root), tuple(skipped), dhashes)
