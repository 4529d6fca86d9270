"""The catalogue of a dataset folder: what is in it, kept up to date at the cost of what changed.

Like git's index, the catalogue keeps each image file's ``(size, mtime_ns, inode)`` beside what reading it once
told: its content hash, its difference hash, or why it is unusable. Refreshing walks the folder and stats every
file (no file is opened), reuses what it knows for files whose stat is unchanged (a move or rename within the
folder keeps its inode and mtime, so it is not re-read either), and reads and decodes only new or rewritten
files. The comparison says what happened since the last refresh: added, removed, rewritten and moved photos.

The walk follows :func:`core.data.scan_folder`'s rules (one folder per label, hidden entries and
``DUPLICATES_DIR`` skipped, image suffixes only, exact duplicates keep their first path), and
:meth:`Catalogue.scan_report` gives the same report a scan would.

On disk (``WorkDir.catalogue``) it is one ``.npz`` of arrays, written atomically; a damaged or foreign file is
ignored with a warning (every file is then read again), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.artifacts import UNREADABLE_NPZ, atomic_save_npz, pack_texts, unpack_texts
from core.config import FILE_LIMITS, ImageLimits
from core.data import (
    IMAGE_SUFFIXES,
    ImageDataset,
    RecordColumns,
    ScanReport,
    SkippedFile,
    _inspect_file,
    label_folders,
    label_of,
    link_out_of,
)
from core.errors import DatasetError
from core.images import DHASH_SIZE, printable

log = logging.getLogger(__name__)

#: Bumped when the file layout changes; another version is ignored (the folder is read again).
CATALOGUE_VERSION = 3
_HASH_BYTES = DHASH_SIZE * DHASH_SIZE // 8
_HEX = re.compile("[0-9a-f]*")
#: Files modified this close to the listing are read again by the next refresh (file times are coarser than ns).
RACY_NS = 2_000_000_000
#: ``progress(done, total)`` while new or changed files are read.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Every image file of a dataset folder (sorted by label folder, then path) and what is known of it.

    Attributes:
        root: The dataset folder.
        paths: Paths relative to ``root`` (``<label folder>/.../<file>``).
        labels: Label of each file (its label folder's, see :func:`core.data.label_of`).
        size, mtime_ns, inode: The stat each file had when it was read.
        sha256: Content hash (hex) of each usable file; empty for unusable ones.
        dhash: Packed difference hash of each file (zeros for unusable ones).
        problem: Why a file is unusable (empty when it is usable).
        ignored: Files that are not images by their suffix, with why.
        signature: A hash of every file's path, label, content hash and problem: equal signatures, equal datasets.
        taken_ns: When the folder was listed (ns since the epoch; 0: unknown). A file whose mtime lies within
            :data:`RACY_NS` of it may have been written again in the same clock tick without its stat showing
            it, so the next refresh reads it again (git's "racily clean" entries).
        directories: Every folder walked (relative to ``root``; ``"."`` is ``root`` itself) and its mtime (ns)
            then: a folder whose mtime is unchanged has gained, lost and renamed no entry since.
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    size: np.ndarray
    mtime_ns: np.ndarray
    inode: np.ndarray
    sha256: tuple[str, ...]
    dhash: np.ndarray
    problem: tuple[str, ...]
    ignored: tuple[SkippedFile, ...] = ()
    directories: tuple[str, ...] = ()
    directory_mtime_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    signature: str = ""
    taken_ns: int = 0

    def __post_init__(self) -> None:
        if not self.signature:
            object.__setattr__(self, "signature", _signature(self.paths, self.labels, self.sha256, self.problem))

    def __len__(self) -> int:
        return len(self.paths)

    def scan_report(self) -> ScanReport:
        """The dataset this folder gives (usable files, exact duplicates after their first path) and what was
        left out, as :func:`core.data.scan_folder` reports it. Records are kept as columns
        (:class:`core.data.RecordColumns`): no path object is made per photo."""
        hashes = np.array(self.sha256, dtype="S64")
        usable = np.array([not problem for problem in self.problem], bool)
        order = np.flatnonzero(usable)
        _, first = np.unique(hashes[order], return_index=True)
        kept = np.sort(order[first])
        skipped: list[SkippedFile] = list(self.ignored)
        if len(kept) != len(self):
            first_path_of = {self.sha256[row]: self.root / self.paths[row] for row in kept.tolist()}
            is_kept = np.zeros(len(self), bool)
            is_kept[kept] = True
            for row in np.flatnonzero(~is_kept).tolist():
                path = self.root / self.paths[row]
                if self.problem[row]:
                    skipped.append(SkippedFile(path, self.problem[row]))
                else:
                    shown = printable(str(first_path_of[self.sha256[row]]))
                    skipped.append(SkippedFile(path, f"{printable(str(path))}: exact duplicate of {shown}"))
        if not len(kept):
            raise DatasetError(f"{printable(str(self.root))}: no usable images found")
        rows = kept.tolist()
        records = RecordColumns(
            self.root,
            [self.paths[row] for row in rows],
            [self.labels[row] for row in rows],
            [self.sha256[row] for row in rows],
        )
        return ScanReport(ImageDataset(records, self.root), tuple(skipped), self.dhash[kept])


#: Folders of up to this many files are watched file by file (:class:`FolderWatch`); larger ones by folder times.
WATCH_FILES = 5_000


@dataclass(frozen=True, eq=False)
class FolderWatch:
    """A cheap check that a folder still is as a catalogue saw it, for long-running front ends (the app, the REST
    service): one stat per folder, plus one per file when the folder holds at most :data:`WATCH_FILES` files.

    A folder's time changes whenever an entry is added, removed or renamed in it; a file rewritten in place under
    its old name changes only its own stat, which larger folders do not watch (their next deep refresh sees it).

    Attributes:
        root: The dataset folder.
        paths: Watched folders, then watched files, relative to ``root``.
        mtime_ns: Their times when the catalogue was taken.
        size: The files' sizes (-1 for folders).
    """

    root: Path
    paths: tuple[str, ...]
    mtime_ns: np.ndarray
    size: np.ndarray

    @staticmethod
    def folders(root: Path, directories: tuple[str, ...], mtime_ns: np.ndarray) -> FolderWatch:
        """A watch of folder times alone (one stat per folder)."""
        return FolderWatch(Path(root), directories, np.asarray(mtime_ns, np.int64), np.full(len(directories), -1))

    @staticmethod
    def of(catalogue: Catalogue) -> FolderWatch:
        """What to watch of a catalogue's folder."""
        files = len(catalogue) <= WATCH_FILES
        return FolderWatch(
            Path(catalogue.root),
            catalogue.directories + (catalogue.paths if files else ()),
            np.concatenate([catalogue.directory_mtime_ns, catalogue.mtime_ns if files else []]).astype(np.int64),
            np.concatenate([np.full(len(catalogue.directories), -1), catalogue.size if files else []]).astype(np.int64),
        )

    def changed(self) -> bool:
        """Whether a watched folder or file changed (or went) since the catalogue was taken."""
        for relative, mtime, size in zip(self.paths, self.mtime_ns.tolist(), self.size.tolist(), strict=True):
            try:
                stat = os.stat(self.root / relative)
            except OSError:
                return True
            if stat.st_mtime_ns != mtime or (size >= 0 and stat.st_size != size):
                return True
        return False


@dataclass(frozen=True)
class CatalogueChanges:
    """What a refresh found changed since the catalogue was last saved (relative paths).

    Attributes:
        added: New paths with new content.
        removed: Paths gone, their content with them.
        rewritten: Same path, other content (a file overwritten in place).
        moved: ``(old, new)`` paths of content that moved (a rename, or a photo moved to another label).
        read: Files read and decoded in this refresh (new, rewritten or touched); the rest were only stat'ed.
        first: No usable catalogue was saved before (every file was read).
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rewritten: tuple[str, ...] = ()
    moved: tuple[tuple[str, str], ...] = ()
    read: int = 0
    first: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.rewritten or self.moved)

    def summary(self) -> str:
        """One line, e.g. ``3 new, 1 removed, 2 rewritten, 1 moved``; ``no change`` when nothing changed."""
        parts = [
            f"{len(items)} {word}"
            for items, word in (
                (self.added, "new"),
                (self.removed, "removed"),
                (self.rewritten, "rewritten"),
                (self.moved, "moved"),
            )
            if items
        ]
        return ", ".join(parts) or "no change"


def _walk_files(
    folder: Path, directories: dict[str, int], root: Path, left_out: list[SkippedFile]
) -> Iterator[tuple[str, os.stat_result]]:
    """``(path, stat)`` of every non-hidden file under ``folder``, iteratively (no recursion limit); each folder
    walked is recorded in ``directories`` with its mtime (ns). A symbolic link leading out of ``root`` is neither
    followed nor listed: it goes to ``left_out`` (:func:`core.data.link_out_of`)."""
    pending = [str(folder)]
    while pending:
        directory = pending.pop()
        try:
            directories[directory] = os.stat(directory).st_mtime_ns
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        outside = link_out_of(entry.path, root) if entry.is_symlink() else None
                        if outside is not None:
                            left_out.append(outside)
                        elif entry.is_dir():
                            pending.append(entry.path)
                        else:
                            yield entry.path, entry.stat()
                    except OSError as err:  # a dangling link, a file removed while listed
                        log.warning("%s: cannot stat (%s), left out", printable(entry.path), err.strerror)
        except OSError as err:
            log.warning("%s: cannot list (%s), left out", printable(directory), err.strerror)


@dataclass(frozen=True)
class _Listing:
    paths: list[str]
    labels: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    inode: np.ndarray
    skipped: list[SkippedFile]
    directories: dict[str, int]


def _list_folder(root: Path) -> _Listing:
    """Stat every candidate image of ``root`` (no file is opened), sorted by label folder then path."""
    paths: list[str] = []
    labels: list[str] = []
    stats: list[tuple[int, int, int]] = []
    skipped: list[SkippedFile] = []
    prefix = len(str(root).rstrip(os.sep)) + 1
    folders, left_out = label_folders(root)  # core.data's rules: links out of root, NFC/NFD twins
    skipped.extend(left_out)
    directories = {str(root): os.stat(root).st_mtime_ns}
    for folder in folders:
        label = label_of(folder.name)
        found = sorted(_walk_files(folder, directories, root, skipped))
        if not found:
            log.warning("%s: empty label folder, ignored", printable(str(folder)))
        for path, stat in found:
            if os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
                suffix = printable(os.path.splitext(path)[1]) or "none"
                skipped.append(SkippedFile(Path(path), f"{printable(path)}: not an image file extension ({suffix})"))
                continue
            paths.append(path[prefix:])
            labels.append(label)
            stats.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
    table = np.array(stats, np.int64).reshape(-1, 3)
    relative = {directory: directory[prefix:] or "." for directory in directories}
    return _Listing(
        paths,
        labels,
        table[:, 0].copy(),
        table[:, 1].copy(),
        table[:, 2].copy(),
        skipped,
        {relative[directory]: mtime for directory, mtime in directories.items()},
    )


def refresh_catalogue(
    root: str | Path,
    previous: Catalogue | None = None,
    workers: int = 4,
    limits: ImageLimits = FILE_LIMITS,
    progress: ProgressFn | None = None,
    deep: bool = True,
) -> tuple[Catalogue, CatalogueChanges]:
    """The catalogue of ``root`` as it is now, reading only files that are new or changed since ``previous``.

    A file is taken as unchanged when its size, mtime (ns) and inode match what ``previous`` holds for the same
    path, or, for a path ``previous`` does not hold, for a path that has gone (a move). Everything else is read,
    hashed and decoded once (in ``workers`` threads).

    Args:
        root: The dataset folder.
        previous: What was known (None: read every file).
        workers: Threads that read and decode.
        limits: Size and pixel ceilings for each file.
        progress: Called as ``progress(done, total)`` while files are read.
        deep: Stat every file. When False and every folder ``previous`` walked has its old mtime (no entry was
            added, removed or renamed anywhere), ``previous`` is returned after one stat per folder; a file
            rewritten in place (same name) is then only seen by the next deep refresh.

    Raises:
        DatasetError: ``root`` is missing, has no label folders, or two folders would get the same label.
    """
    root = Path(root)
    usable_before = previous is not None and Path(previous.root).resolve() == root.resolve()
    if (
        not deep
        and usable_before
        and previous is not None
        and previous.directories
        and not FolderWatch.folders(root, previous.directories, previous.directory_mtime_ns).changed()
    ):
        return previous, CatalogueChanges()
    taken_ns = time.time_ns()
    listing = _list_folder(root)
    n = len(listing.paths)
    sha256: list[str] = [""] * n
    problem: list[str] = [""] * n
    dhash = np.zeros((n, _HASH_BYTES), np.uint8)
    known = np.zeros(n, bool)
    same_path_before = np.full(n, -1, np.int64)
    moved_from = np.full(n, -1, np.int64)
    if usable_before:
        assert previous is not None
        row_of = {path: row for row, path in enumerate(previous.paths)}
        same_path_before = np.array([row_of.get(path, -1) for path in listing.paths], np.int64)
        here = same_path_before >= 0
        rows = same_path_before[here]
        known[here] = (
            (previous.size[rows] == listing.size[here])
            & (previous.mtime_ns[rows] == listing.mtime_ns[here])
            & (previous.inode[rows] == listing.inode[here])
            & (previous.mtime_ns[rows] < previous.taken_ns - RACY_NS)
        )
        # a path not held before may be a held file moved: same stat, and its old path is gone
        still_here = set(listing.paths)
        gone = {
            (int(previous.size[row]), int(previous.mtime_ns[row]), int(previous.inode[row])): row
            for row, path in enumerate(previous.paths)
            if path not in still_here and previous.mtime_ns[row] < previous.taken_ns - RACY_NS
        }
        for index in np.flatnonzero(~here):
            stat = (int(listing.size[index]), int(listing.mtime_ns[index]), int(listing.inode[index]))
            row = gone.pop(stat, None)
            if row is not None:
                known[index], moved_from[index] = True, row
        source = np.where(same_path_before >= 0, same_path_before, moved_from)
        for index in np.flatnonzero(known):
            row = int(source[index])
            sha256[index], problem[index] = previous.sha256[row], previous.problem[row]
        dhash[known] = previous.dhash[source[known]]
    to_read = np.flatnonzero(~known)
    if len(to_read):
        log.info("cataloguing %s: reading %d of %d files", printable(str(root)), len(to_read), n)

        def inspect(index: int) -> tuple[str | None, np.ndarray | None, str | None]:
            return _inspect_file(root / listing.paths[index], True, limits)

        indices: list[int] = to_read.tolist()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for done, (row, (digest, perceptual, reason)) in enumerate(
                zip(indices, pool.map(inspect, indices), strict=True), start=1
            ):
                if digest is None or perceptual is None:
                    problem[row] = str(reason)
                else:
                    sha256[row] = digest
                    dhash[row] = perceptual
                if progress is not None and (done % 256 == 0 or done == len(to_read)):
                    progress(done, len(to_read))
    catalogue = Catalogue(
        root,
        tuple(listing.paths),
        tuple(listing.labels),
        listing.size,
        listing.mtime_ns,
        listing.inode,
        tuple(sha256),
        dhash,
        tuple(problem),
        tuple(listing.skipped),
        tuple(listing.directories),
        np.array(list(listing.directories.values()), np.int64),
        taken_ns=taken_ns,
    )
    changes = _compare(previous if usable_before else None, catalogue, len(to_read))
    return catalogue, changes


def _kept(catalogue: Catalogue) -> dict[str, str]:
    """Path -> content hash of the photos the dataset keeps (usable; the first path of each content)."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    for path, sha in zip(catalogue.paths, catalogue.sha256, strict=True):
        if sha and sha not in seen:
            seen.add(sha)
            kept[path] = sha
    return kept


def _compare(previous: Catalogue | None, current: Catalogue, read: int) -> CatalogueChanges:
    """What changed between two catalogues of one folder, by path and content hash (usable files only)."""
    if previous is None:
        return CatalogueChanges(added=tuple(_kept(current)), read=read, first=True)
    before, after = _kept(previous), _kept(current)
    rewritten = tuple(path for path, sha in after.items() if path in before and before[path] != sha)
    gone = [path for path in before if path not in after]
    new = [path for path in after if path not in before]
    new_by_content: dict[str, list[str]] = {}
    for path in new:
        new_by_content.setdefault(after[path], []).append(path)
    moved, removed = [], []
    for path in gone:
        targets = new_by_content.get(before[path])
        if targets:
            moved.append((path, targets.pop(0)))
        else:
            removed.append(path)
    moved_to = {target for _, target in moved}
    added = tuple(path for path in new if path not in moved_to)
    return CatalogueChanges(added, tuple(removed), rewritten, tuple(moved), read)


def save_catalogue(catalogue: Catalogue, path: str | Path) -> None:
    """Write the catalogue atomically to ``path`` (``.npz``; paths stored as bytes, undecodable names kept)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    names = sorted(set(catalogue.labels))
    code_of = {name: code for code, name in enumerate(names)}
    atomic_save_npz(
        path,
        version=np.array(CATALOGUE_VERSION),
        root=np.frombuffer(os.fsencode(str(Path(catalogue.root).resolve())), np.uint8),
        paths=pack_texts(catalogue.paths),
        label_names=pack_texts(tuple(names)),
        label_codes=np.array([code_of[label] for label in catalogue.labels], np.int64),
        stat=np.column_stack([catalogue.size, catalogue.mtime_ns, catalogue.inode]).astype(np.int64),
        sha256=np.array(catalogue.sha256, dtype="S64"),
        dhash=catalogue.dhash,
        problems=pack_texts(catalogue.problem),
        ignored=pack_texts(tuple(str(item.path.relative_to(catalogue.root)) for item in catalogue.ignored)),
        ignored_reasons=pack_texts(tuple(item.reason for item in catalogue.ignored)),
        directories=pack_texts(catalogue.directories),
        directory_mtime_ns=np.asarray(catalogue.directory_mtime_ns, np.int64),
        signature=np.array(catalogue.signature),
        taken_ns=np.array(catalogue.taken_ns, np.int64),
    )


def _signature(paths: Sequence[str], labels: Sequence[str], sha256: Sequence[str], problems: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for column in (paths, labels, sha256, problems):
        digest.update(pack_texts(column).tobytes())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class CatalogueHeader:
    """What opening a large, unchanged folder needs of its saved catalogue, read without the per-file arrays.

    Attributes:
        root: The dataset folder.
        count: Files catalogued.
        signature: :attr:`Catalogue.signature`.
        watch: Its folders and their times.
    """

    root: Path
    count: int
    signature: str
    watch: FolderWatch


def load_catalogue_header(path: str | Path) -> CatalogueHeader | None:
    """The header of the catalogue saved at ``path`` (None when missing or unusable: the caller then loads or
    rebuilds the whole catalogue, which warns)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["version"]) != CATALOGUE_VERSION:
                return None
            root = Path(os.fsdecode(archive["root"].tobytes()))
            mtimes = archive["directory_mtime_ns"]
            directories = unpack_texts(archive["directories"], len(mtimes))
            count = int(archive["label_codes"].shape[0])
            signature = str(archive["signature"])
    except (*UNREADABLE_NPZ, UnicodeDecodeError):
        return None
    if mtimes.ndim != 1 or mtimes.dtype != np.int64:
        return None
    watch = FolderWatch.folders(root, directories, mtimes)
    return CatalogueHeader(root, count, signature, watch)


def _hashes(sha256: np.ndarray) -> tuple[str, ...]:
    """Hex content hashes from an ``S64`` array (empty for unusable files), decoded in one call.

    Raises:
        ValueError: A value that is neither empty nor 64 hex digits.
    """
    if sha256.dtype != np.dtype("S64"):
        raise ValueError(f"content hashes of type {sha256.dtype}")
    text = sha256.tobytes().decode("ascii")
    hashes = tuple(text[start : start + 64].rstrip("\0") for start in range(0, len(text), 64))
    if not all(len(value) in (0, 64) for value in hashes) or not _HEX.fullmatch(text.replace("\0", "")):
        raise ValueError("a content hash is not 64 hex digits")
    return hashes


def _labels(names_buffer: np.ndarray, codes: np.ndarray, count: int) -> tuple[str, ...]:
    if codes.shape != (count,):
        raise ValueError(f"{count} files but {codes.shape} label codes")
    if count == 0:
        return ()
    if codes.min() < 0:
        raise ValueError("a negative label code")
    names = unpack_texts(names_buffer, int(codes.max()) + 1)
    return tuple(names[code] for code in codes.tolist())


def load_catalogue(path: str | Path) -> Catalogue | None:
    """The catalogue saved at ``path``; None (with a warning naming the file) when it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["version"]) != CATALOGUE_VERSION:
                raise ValueError(f"version {int(archive['version'])}, expected {CATALOGUE_VERSION}")
            stat = archive["stat"]
            count = len(stat)
            sha256 = archive["sha256"]
            dhash = archive["dhash"]
            if stat.ndim != 2 or stat.shape[1] != 3 or stat.dtype != np.int64:
                raise ValueError(f"stat table of shape {stat.shape} and type {stat.dtype}")
            if sha256.shape != (count,) or dhash.shape != (count, _HASH_BYTES) or dhash.dtype != np.uint8:
                raise ValueError(f"{count} files but sha256 {sha256.shape} and dhash {dhash.shape}")
            hashes = _hashes(sha256)
            root = Path(os.fsdecode(archive["root"].tobytes()))
            directory_mtime_ns = archive["directory_mtime_ns"]
            if directory_mtime_ns.ndim != 1 or directory_mtime_ns.dtype != np.int64:
                raise ValueError(f"folder times of shape {directory_mtime_ns.shape}")
            reasons = archive["ignored_reasons"]
            ignored_paths = unpack_texts(archive["ignored"], len(unpack_texts(reasons, -1)) if reasons.size else 0)
            return Catalogue(
                root,
                unpack_texts(archive["paths"], count),
                _labels(archive["label_names"], archive["label_codes"], count),
                stat[:, 0].copy(),
                stat[:, 1].copy(),
                stat[:, 2].copy(),
                hashes,
                dhash,
                unpack_texts(archive["problems"], count),
                tuple(
                    SkippedFile(root / relative, reason)
                    for relative, reason in zip(ignored_paths, unpack_texts(reasons, len(ignored_paths)), strict=True)
                ),
                unpack_texts(archive["directories"], len(directory_mtime_ns)),
                directory_mtime_ns,
                str(archive["signature"]),
                int(archive["taken_ns"]),
            )
    except (*UNREADABLE_NPZ, UnicodeDecodeError) as err:
        log.warning(
            "%s: unusable catalogue, ignored: every file of the folder is read again (%s: %s)",
            printable(str(path)),
            type(err).__name__,
            printable(str(err)),
        )
        return None


def refresh_saved_catalogue(
    root: str | Path,
    path: str | Path,
    workers: int = 4,
    limits: ImageLimits = FILE_LIMITS,
    progress: ProgressFn | None = None,
    deep: bool = True,
) -> tuple[Catalogue, CatalogueChanges]:
    """Load the catalogue saved at ``path``, refresh it against ``root`` (see :func:`refresh_catalogue`) and save it
    back when anything differs."""
    previous = load_catalogue(path)
    catalogue, changes = refresh_catalogue(root, previous, workers, limits, progress, deep)
    if catalogue is not previous and (
        previous is None
        or changes
        or changes.read
        or previous.paths != catalogue.paths
        or previous.directories != catalogue.directories
        or not np.array_equal(previous.directory_mtime_ns, catalogue.directory_mtime_ns)
        or previous.ignored != catalogue.ignored
    ):
        save_catalogue(catalogue, path)
    return catalogue, changes
