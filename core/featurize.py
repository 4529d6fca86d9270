"""Featurizers (image -> L2-normalised embedding) and an on-disk feature cache keyed by content hash.

One contract for every back end: ``embed(images) -> float32[N, D]`` with unit-length rows.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import struct
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core.artifacts import UNREADABLE_NPZ, atomic_save_npz
from core.data import ImageRecord
from core.images import content_hash, decode_image, printable, read_image_file
from core.preprocessing import Preprocessing, fingerprint_of, normalize_pixels, resize_crop

if TYPE_CHECKING:
    from core.backbones import Backbone

log = logging.getLogger(__name__)

#: Called as ``progress(done, total)`` after each batch.
ProgressFn = Callable[[int, int], None]


class Featurizer(Protocol):
    """Anything that turns images into L2-normalised embeddings."""

    @property
    def fingerprint(self) -> str:
        """Identifies the model, weights and preprocessing; features are cached under it."""
        ...

    @property
    def preprocessing(self) -> Preprocessing: ...

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed ``float32[N, 3, S, S]`` batch into ``float32[N, D]`` unit rows."""
        ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed resized, centre-cropped RGB ``uint8[N, S, S, 3]`` into ``float32[N, D]`` unit rows."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images into ``float32[N, D]`` unit rows."""
        ...


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row to unit Euclidean length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, eps)).astype(np.float32)


class TorchFeaturizer:
    """Pooled penultimate-layer features of a PyTorch backbone, L2-normalised.

    Args:
        backbone: The network and its preprocessing, built with ``num_classes=0``.
        device: ``"cuda"``, ``"cpu"`` or ``None`` for CUDA when available.
    """

    def __init__(self, backbone: Backbone, device: str | None = None) -> None:
        import torch

        self.backbone = backbone
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels-last runs convolutions ~1.7x faster on CPU here (see benchmarks/featurize.py)
        self.model = backbone.model.to(self.device).to(memory_format=torch.channels_last).eval()

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.backbone.name, self.backbone.weights_id, self.preprocessing)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            features = self.model(inputs)
        return l2_normalize(features.float().cpu().numpy())

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.embed_arrays(normalize_pixels(pixels, self.preprocessing))

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images into ``float32[N, D]`` unit rows."""
        return self.embed_pixels(np.stack([resize_crop(image, self.preprocessing) for image in images]))


@runtime_checkable
class ParallelFeaturizer(Protocol):
    """A featurizer that can also embed on a single thread, several runs side by side.

    onnxruntime on a CPU loses part of each core to keeping its threads in step after every operator (and more
    when a decoding thread preempts one of them); one single-threaded run per core, each on its part of a batch,
    with the next batch queued behind them, keeps every core on the model (see :func:`embed_pixel_batches`).
    """

    def single_thread_embedder(self) -> SingleThreadEmbedder | None:
        """How to embed on single threads side by side; None when that would not be faster (a GPU provider)."""
        ...


class SingleThreadEmbedder(NamedTuple):
    """``embed``: like ``embed_pixels``, on the calling thread only, safe to call from several threads at once;
    ``runs``: how many such calls the featurizer's thread budget allows at once (1: no parallelism)."""

    embed: Callable[[np.ndarray], np.ndarray]
    runs: int


def default_workers() -> int:
    """Decoding threads (and concurrent single-threaded model runs): one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def read_and_prepare(path: Path, preprocessing: Preprocessing) -> tuple[str, np.ndarray]:
    """Read a file once, hash those bytes and decode those bytes into model-ready ``uint8[S, S, 3]`` pixels.

    JPEGs decode in draft mode (scaled down by DCT while staying at least the resize size), larger images
    are reduced by an integer factor before the resampling filter, and only the centre crop is resampled.

    Returns:
        ``(sha256 of the bytes decoded, pixels)``: the hash always describes these pixels, even if the file
        changed since it was first listed.

    Raises:
        ImageLoadError: Not a regular file, too large, unreadable or not a usable image; names the file.
    """
    data = read_image_file(path)
    image = decode_image(data, name=str(path), draft_size=preprocessing.resize_size)
    return content_hash(data), resize_crop(image, preprocessing)


def embed_pixel_batches(
    featurizer: Featurizer, batches: Iterable[np.ndarray], model_workers: int | None = None
) -> Iterator[np.ndarray]:
    """Embed ``uint8[n, S, S, 3]`` pixel batches, in order, pulling the next batch while one is embedded.

    A :class:`ParallelFeaturizer` (onnxruntime on a CPU) splits each batch over ``model_workers`` single-threaded
    runs (default: the featurizer's ``runs``, one per core for onnxruntime's default threads) with the next batch
    queued behind them, so no core waits for the slowest part, and about one batch of images is in the model at
    once (one part per run: at most ``model_workers * ceil(batch / model_workers)`` images), as on the
    batch-at-a-time path. Other featurizers embed one batch at a time with their own threads, on the caller's
    thread.

    Raises:
        Whatever ``batches`` raises, after the batches already submitted have been yielded.
    """
    parallel = featurizer.single_thread_embedder() if isinstance(featurizer, ParallelFeaturizer) else None
    workers = model_workers or (parallel.runs if parallel else 1)
    if parallel is None or workers == 1:
        yield from (featurizer.embed_pixels(pixels) for pixels in batches)
        return
    in_flight: deque[list[Future[np.ndarray]]] = deque()

    def oldest() -> np.ndarray:
        return np.concatenate([future.result() for future in in_flight.popleft()])

    with ThreadPoolExecutor(workers, "embed") as pool:
        iterator = iter(batches)
        try:
            while True:
                try:
                    pixels = next(iterator)
                except StopIteration:
                    break
                except Exception:
                    while in_flight:  # what was submitted before the failure still comes out first
                        yield oldest()
                    raise
                parts = np.array_split(pixels, max(1, min(workers, len(pixels))))
                in_flight.append([pool.submit(parallel.embed, part) for part in parts])
                if len(in_flight) > 1:
                    yield oldest()
            while in_flight:
                yield oldest()
        finally:
            for futures in in_flight:
                for future in futures:
                    future.cancel()


@dataclass(frozen=True)
class EmbeddedBatch:
    """One batch out of :func:`iter_embed_files`.

    Attributes:
        start: Position of the first of these files in the input sequence.
        sha256: Content hash of the bytes each embedding was computed from.
        embeddings: ``float32[n, D]`` unit rows.
    """

    start: int
    sha256: list[str]
    embeddings: np.ndarray


def iter_embed_files(
    featurizer: Featurizer,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    model_workers: int | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed image files batch by batch, decoding in a thread pool that runs ahead of the model.

    Files are read, hashed, decoded and cropped to uint8 by ``workers`` threads (default: one per core), at most
    two batches ahead of the batch being embedded, so memory stays bounded whatever the number of files. The model
    side is :func:`embed_pixel_batches`: on onnxruntime on a CPU, ``model_workers`` single-threaded runs per batch.
    Batches come out in order.

    Raises:
        ValueError: ``batch_size`` below 1.
        ImageLoadError: A file cannot be read or decoded; the message names it. The batches before its batch
            come out first.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    paths = list(paths)
    preprocessing = featurizer.preprocessing
    ahead = 2 * batch_size
    hashes: deque[list[str]] = deque()
    with ThreadPoolExecutor(workers or default_workers(), "decode") as decoders:
        decoding: deque[Future[tuple[str, np.ndarray]]] = deque()

        def decoded() -> Iterator[np.ndarray]:
            submitted = 0
            for start in range(0, len(paths), batch_size):
                stop = min(start + batch_size, len(paths))
                while submitted < min(len(paths), stop + ahead):
                    decoding.append(decoders.submit(read_and_prepare, paths[submitted], preprocessing))
                    submitted += 1
                prepared = [decoding.popleft().result() for _ in range(stop - start)]
                hashes.append([sha256 for sha256, _ in prepared])
                yield np.stack([pixels for _, pixels in prepared])

        try:
            start = 0
            for embeddings in embed_pixel_batches(featurizer, decoded(), model_workers):
                batch = EmbeddedBatch(start, hashes.popleft(), embeddings)
                start += len(batch.sha256)
                yield batch
                if progress:
                    progress(start, len(paths))
        finally:
            for future in decoding:
                future.cancel()


def embed_files(
    featurizer: Featurizer,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    model_workers: int | None = None,
) -> np.ndarray:
    """Embed image files into ``float32[N, D]`` unit rows; decoding overlaps the model (see :func:`iter_embed_files`).

    Raises:
        ValueError: ``batch_size`` below 1.
        ImageLoadError: A file cannot be read or decoded; the message names it.
    """
    batches = iter_embed_files(featurizer, paths, batch_size, workers, progress, model_workers)
    outputs = [batch.embeddings for batch in batches]
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outputs)


#: Parts are merged into the main file once they hold this share of its rows (so each row is rewritten a bounded
#: number of times: a change costs O(changes) amortised, not a rewrite of the whole cache).
MERGE_SHARE = 0.25
#: Above this many parts they are merged into one part (the main file untouched), bounding what a lookup opens.
MAX_PARTS = 16
#: Rows checked for NaN / infinity at a time while reading a cache file (bounds the temporary mask).
_CHECK_ROWS = 65_536


@dataclass(frozen=True)
class Hashes:
    """Content hashes as text, with the first 64 bits of each as a number when every one is a 64-hex digest, so they
    can be sorted and searched as integers (numpy searches text about a thousand times slower).

    Attributes:
        text: ``str[n]``.
        prefix: ``uint64[n]``, or None when a hash is not 64 hex digits (then the text is searched).
    """

    text: np.ndarray
    prefix: np.ndarray | None

    @classmethod
    def of(cls, values: Sequence[str] | np.ndarray) -> Hashes:
        text = np.asarray(values)
        if text.dtype.kind != "U":
            text = text.astype(str)
        prefix = None
        if text.dtype.itemsize == 4 * 64:  # at most 64 characters: then 64 each if they add up to 64 n
            joined = "".join(text.tolist())
            if len(joined) == 64 * len(text):
                try:
                    prefix = np.frombuffer(bytes.fromhex(joined), ">u8").reshape(len(text), 4)[:, 0].astype(np.uint64)
                except ValueError:
                    prefix = None
        return cls(text, prefix)

    def __len__(self) -> int:
        return len(self.text)

    def sort_order(self) -> np.ndarray:
        """The order that sorts them (by number where there is one)."""
        return np.argsort(self.prefix if self.prefix is not None else self.text, kind="stable")

    def is_sorted(self) -> bool:
        values = self.prefix if self.prefix is not None else self.text
        return len(values) < 2 or bool((values[1:] >= values[:-1]).all())

    def take(self, rows: np.ndarray) -> Hashes:
        return Hashes(self.text[rows], None if self.prefix is None else self.prefix[rows])


@dataclass(frozen=True)
class CachedRows:
    """The rows of one feature-cache file: content hashes sorted for binary search, and the vectors.

    Attributes:
        path: The file.
        keys: Its content hashes, sorted.
        vectors: ``float32[n, D]`` in the file's own order (memory-mapped for an uncompressed file).
        order: Row of ``vectors`` for each sorted key; None when the file is already sorted by hash (as this cache
            writes them; files of older versions were not).
    """

    path: Path
    keys: Hashes
    vectors: np.ndarray
    order: np.ndarray | None = None

    def find(self, wanted: Hashes) -> np.ndarray:
        """The row of ``vectors`` holding each wanted hash, -1 where this file has none (vectorised search)."""
        size = len(self.keys)
        found = np.full(len(wanted), -1, np.int64)
        if not size or not len(wanted):
            return found
        mine, theirs = self.keys.prefix, wanted.prefix
        if mine is None or theirs is None:  # not all content hashes: search the text
            at = np.minimum(np.searchsorted(self.keys.text, wanted.text), size - 1)
            hit = np.flatnonzero(self.keys.text[at] == wanted.text)
        else:
            at = np.minimum(np.searchsorted(mine, theirs), size - 1)
            same = np.flatnonzero(mine[at] == theirs)
            equal = self.keys.text[at[same]] == wanted.text[same]
            hit = same[equal]
            shared = same[~equal]  # another hash with the same first 64 bits: search those by text
            if len(shared):
                by_text = self.text_order
                text = self.keys.text[by_text]
                near = np.minimum(np.searchsorted(text, wanted.text[shared]), size - 1)
                match = text[near] == wanted.text[shared]
                at[shared[match]] = by_text[near[match]]
                hit = np.concatenate([hit, shared[match]])
        found[hit] = at[hit] if self.order is None else self.order[at[hit]]
        return found

    @functools.cached_property
    def text_order(self) -> np.ndarray:
        """The order of :attr:`keys` by text (computed when first needed: only for hashes sharing 64 bits)."""
        return np.argsort(self.keys.text, kind="stable")

    def __len__(self) -> int:
        return len(self.keys)


class CachedEmbeddings(Mapping[str, np.ndarray]):
    """Every cached embedding of a featurizer, by content hash, over its files (later files win); built without a
    table of every row."""

    def __init__(self, files: Sequence[CachedRows]) -> None:
        self.files = list(files)

    def locate(self, wanted: Hashes) -> tuple[np.ndarray, np.ndarray]:
        """``(file, row)`` of each wanted hash (``file`` -1 where no file has it); a later file wins."""
        source = np.full(len(wanted), -1, np.int64)
        rows = np.full(len(wanted), -1, np.int64)
        for number, cached in enumerate(self.files):
            found = cached.find(wanted)
            hit = found >= 0
            source[hit], rows[hit] = number, found[hit]
        return source, rows

    def gather(self, wanted: Hashes, located: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``float32[len(wanted), D]``, the rows of hashes that are all cached (one vectorised copy per file).

        Args:
            wanted: The hashes.
            located: Their :meth:`locate`, when known already.

        Raises:
            KeyError: A hash no file holds.
        """
        source, rows = located if located is not None else self.locate(wanted)
        if (source < 0).any():
            raise KeyError(str(wanted.text[np.argmax(source < 0)]))
        width = self.files[0].vectors.shape[1] if self.files else 0
        out = np.empty((len(wanted), width), np.float32)
        for number, cached in enumerate(self.files):
            mine = np.flatnonzero(source == number)
            if len(mine):
                order = np.argsort(rows[mine], kind="stable")  # read the file front to back
                out[mine[order]] = cached.vectors[rows[mine][order]]
        return out

    def keys_array(self) -> np.ndarray:
        """Every cached hash once, sorted."""
        if not self.files:
            return np.array([], str)
        return np.unique(np.concatenate([cached.keys.text for cached in self.files]))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.gather(Hashes.of([key]))[0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool((self.locate(Hashes.of([key]))[0] >= 0).all())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_array().tolist())

    def __len__(self) -> int:
        return len(self.keys_array())


class FeatureCache:
    """Embeddings on disk per featurizer fingerprint, keyed by the content hash of the bytes embedded.

    Re-running on the same images is a lookup; renamed or moved files are still hits. Layout:
    ``<fingerprint>.npz`` (``sha256`` sorted, ``embeddings``) plus ``<fingerprint>.part-*.npz`` files holding what
    was embedded since (each written once, sorted, atomically). A run saves what it embeds as new parts; the parts are
    merged into the main file only once they hold :data:`MERGE_SHARE` of its rows (and into one part above
    :data:`MAX_PARTS` parts), so a change of a few photos in a cache of 10^6 costs a small new part and a binary search
    of each file, not a rewrite of the cache. Files are memory-mapped where possible, and never become a table of
    every row. A killed run keeps every saved part and a rerun embeds only the rest. A truncated or corrupt file is a
    cache miss (logged, naming the file), never an error.

    Args:
        directory: Folder of the cache.
        save_every_s: Save a part after the first batch, then at most this often while embedding (0: after every
            batch), so a run killed (even by SIGKILL) after its first batch resumes from what it saved.
    """

    def __init__(self, directory: str | Path, save_every_s: float = 10.0) -> None:
        self.directory = Path(directory)
        self.save_every_s = save_every_s

    def path_for(self, fingerprint: str) -> Path:
        return self.directory / f"{fingerprint}.npz"

    def part_paths(self, fingerprint: str) -> list[Path]:
        """Saved progress of unfinished runs, oldest name first."""
        return sorted(self.directory.glob(f"{glob.escape(fingerprint)}.part-*.npz"))

    def load(self, fingerprint: str) -> CachedEmbeddings:
        """All cached embeddings for a featurizer, by sha256 (empty when none).

        Unreadable files are skipped, and so are files holding NaN or infinite values, or vectors of another width
        than the first readable file (the main one when it is readable): each is one warning naming the file, and
        its images are embedded again.
        """
        files: list[CachedRows] = []
        for path in [self.path_for(fingerprint), *self.part_paths(fingerprint)]:
            found = self._read(path)
            if found is None or not len(found):
                continue
            if files and found.vectors.shape[1] != files[0].vectors.shape[1]:
                log.warning(
                    "%s: feature cache file of %d-d vectors beside %d-d ones, ignored: its images are embedded again",
                    printable(str(path)),
                    found.vectors.shape[1],
                    files[0].vectors.shape[1],
                )
                continue
            files.append(found)
        return CachedEmbeddings(files)

    @staticmethod
    def _read(path: Path) -> CachedRows | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                hashes = archive["sha256"]
                embeddings = mapped_npz_member(path, "embeddings")
                if embeddings is None:  # compressed: read whole
                    embeddings = archive["embeddings"]
            if hashes.ndim != 1 or embeddings.ndim != 2 or len(hashes) != len(embeddings):
                raise ValueError(f"sha256 {hashes.shape} does not match embeddings {embeddings.shape}")
            if embeddings.dtype != np.float32:
                embeddings = embeddings.astype(np.float32)
            for start in range(0, len(embeddings), _CHECK_ROWS):
                if not np.isfinite(embeddings[start : start + _CHECK_ROWS]).all():
                    raise ValueError("embeddings hold NaN or infinite values")
        except UNREADABLE_NPZ as err:
            log.warning(
                "%s: unreadable feature cache file, ignored: its images are embedded again (%s: %s)",
                printable(str(path)),
                type(err).__name__,
                printable(str(err)),
            )
            return None
        keys = Hashes.of(hashes)
        if not keys.is_sorted():  # written by an older version
            order = keys.sort_order()
            return CachedRows(path, keys.take(order), embeddings, order)
        return CachedRows(path, keys, embeddings)

    def add(self, fingerprint: str, sha256s: Sequence[str], embeddings: np.ndarray) -> Path:
        """Add embeddings computed elsewhere (e.g. by the Spark job) for a featurizer, as one more saved part.

        Raises:
            ValueError: Misaligned inputs, not 64-hex content hashes, or non-finite values.
        """
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(sha256s) or not len(sha256s):
            raise ValueError(f"{len(sha256s)} content hashes but embeddings of shape {embeddings.shape}")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings hold NaN or infinite values")
        if any(len(sha) != 64 for sha in sha256s):
            raise ValueError("a content hash is not 64 hex digits")
        self.directory.mkdir(parents=True, exist_ok=True)
        return self._save_part(fingerprint, np.asarray(sha256s, str), embeddings)

    def _save_part(self, fingerprint: str, hashes: np.ndarray, embeddings: np.ndarray) -> Path:
        path = self.directory / f"{fingerprint}.part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        _save_sorted(path, hashes, embeddings)
        return path

    def _tidy(self, fingerprint: str, cached: CachedEmbeddings, parts: list[Path]) -> None:
        """Merge the parts into the main file once they hold :data:`MERGE_SHARE` of its rows, or into one part when
        there are more than :data:`MAX_PARTS`; otherwise leave them (a small change stays a small part)."""
        main = self.path_for(fingerprint)
        main_rows = sum(len(found) for found in cached.files if found.path == main)
        part_rows = sum(len(found) for found in cached.files if found.path != main)
        if part_rows and part_rows >= MERGE_SHARE * main_rows:
            merged, target = cached.files, main
        elif len(parts) > MAX_PARTS:
            merged = [found for found in cached.files if found.path != main]
            target = self.directory / f"{fingerprint}.part-{time.time_ns():020d}-{os.getpid()}-merged.npz"
        else:
            return
        prefixes = [found.keys.prefix for found in merged]
        keys = Hashes(
            np.concatenate([found.keys.text for found in merged]),
            None if any(prefix is None for prefix in prefixes) else np.concatenate(prefixes),  # type: ignore[arg-type]
        )
        files = np.concatenate([np.full(len(found), number) for number, found in enumerate(merged)])
        rows = np.concatenate([np.arange(len(found)) if found.order is None else found.order for found in merged])
        keep = _sorted_last(keys)  # a later file wins
        vectors = np.empty((len(keep), merged[0].vectors.shape[1]), np.float32)
        for number, found in enumerate(merged):
            mine = np.flatnonzero(files[keep] == number)
            vectors[mine] = found.vectors[rows[keep[mine]]]
        atomic_save_npz(target, sha256=keys.text[keep], embeddings=vectors)
        for part in parts:
            if part != target:
                part.unlink(missing_ok=True)

    def embed(
        self,
        featurizer: Featurizer,
        records: Sequence[ImageRecord],
        batch_size: int = 32,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """Embeddings of ``records`` in order, computing and saving only the missing ones.

        A file is read once; the bytes read are hashed and decoded, and the embedding is stored under that
        hash. A file changed since it was listed (``record.sha256`` is then stale) gets the embedding of its
        new content, stored under the new content's hash, never under the old one. The records' hashes are looked
        up by binary search in each cache file; only the missing records are made into paths (records kept as
        columns, :class:`core.data.RecordColumns`, are never iterated).

        Raises:
            ImageLoadError: A file cannot be read or decoded (what was embedded before it stays saved).
        """
        fingerprint = featurizer.fingerprint
        parts = self.part_paths(fingerprint)
        cached = self.load(fingerprint)
        column = getattr(records, "sha256s", None)
        wanted = Hashes.of(column if column is not None else [record.sha256 for record in records])
        source, rows = cached.locate(wanted)
        missing = np.flatnonzero(source < 0)
        if len(missing):
            log.info("featurizing %d of %d images (%d cached)", len(missing), len(records), len(records) - len(missing))
            # the hash each missing record's embedding is stored under: a file changed since it was listed gets
            # its new content's
            keys = wanted.text[missing].astype(f"U{max(64, wanted.text.dtype.itemsize // 4)}")
            cached, parts = self._embed_missing(featurizer, records, missing, keys, cached, parts, batch_size, progress)
            source[missing], rows[missing] = cached.locate(Hashes.of(keys))
        elif progress:
            progress(len(records), len(records))
        if parts:
            self._tidy(fingerprint, cached, parts)
        if not len(records):
            return np.zeros((0, 0), np.float32)
        return cached.gather(wanted, (source, rows))

    def _embed_missing(
        self,
        featurizer: Featurizer,
        records: Sequence[ImageRecord],
        missing: np.ndarray,
        keys: np.ndarray,
        cached: CachedEmbeddings,
        parts: list[Path],
        batch_size: int,
        progress: ProgressFn | None,
    ) -> tuple[CachedEmbeddings, list[Path]]:
        """Embed the records at ``missing`` (``keys``: their hashes, aligned), one file per missing hash, save them as
        parts and set each read record's key to the hash of what was read. Returns the cache with the new parts, and
        every part."""
        first = np.sort(np.unique(keys, return_index=True)[1])  # positions in ``missing``, in record order
        cached = self._embed_group(featurizer, records, missing, first, keys, cached, parts, batch_size, progress)
        # records listing the hash of a file that had changed when it was read: read their own files
        rest = np.setdiff1d(np.arange(len(missing)), first)
        rest = rest[cached.locate(Hashes.of(keys[rest]))[0] < 0]
        if len(rest):
            cached = self._embed_group(featurizer, records, missing, rest, keys, cached, parts, batch_size, progress)
        return cached, parts

    def _embed_group(
        self,
        featurizer: Featurizer,
        records: Sequence[ImageRecord],
        missing: np.ndarray,
        group: np.ndarray,
        keys: np.ndarray,
        cached: CachedEmbeddings,
        parts: list[Path],
        batch_size: int,
        progress: ProgressFn | None,
    ) -> CachedEmbeddings:
        """Embed the records at ``missing[group]`` and save them as parts; ``keys[group]`` become what was read."""
        paths = [records[int(missing[position])].path for position in group]
        new_files: list[CachedRows] = []
        unsaved_keys: list[str] = []
        unsaved: list[np.ndarray] = []

        def save() -> None:
            path = self._save_part(featurizer.fingerprint, np.asarray(unsaved_keys, str), np.concatenate(unsaved))
            parts.append(path)
            found = self._read(path)
            if found is not None:
                new_files.append(found)
            unsaved_keys.clear()
            unsaved.clear()

        last_save = -math.inf  # the first batch is saved at once: a run killed early still keeps it
        try:
            for batch in iter_embed_files(featurizer, paths, batch_size=batch_size, progress=progress):
                for offset, sha256 in enumerate(batch.sha256):
                    index = int(group[batch.start + offset])
                    if sha256 != keys[index]:
                        path = printable(str(paths[batch.start + offset]))
                        log.warning("%s: changed since it was listed; embedded as it is now", path)
                        keys[index] = sha256
                unsaved_keys.extend(batch.sha256)
                unsaved.append(np.asarray(batch.embeddings, np.float32))
                if time.monotonic() - last_save >= self.save_every_s:
                    save()
                    last_save = time.monotonic()
        except BaseException:  # a bad file or Ctrl-C: keep what was embedded before it
            if unsaved:
                save()
            raise
        if unsaved:
            save()
        return CachedEmbeddings([*cached.files, *new_files])


def _sorted_last(keys: Hashes) -> np.ndarray:
    """Rows of ``keys`` sorted by hash, each hash once: the last of its rows (a later file or batch wins)."""
    order = keys.sort_order()  # stable: a hash's rows keep their order
    text = keys.text[order]
    keep = np.ones(len(order), bool)
    keep[:-1] = text[1:] != text[:-1]
    return order[keep]


def _save_sorted(path: Path, hashes: np.ndarray, embeddings: np.ndarray) -> None:
    """Write a cache file sorted by hash, each hash once (the last row of a repeated hash wins)."""
    keep = _sorted_last(Hashes.of(hashes))
    atomic_save_npz(path, sha256=hashes[keep], embeddings=np.ascontiguousarray(embeddings[keep], np.float32))


def mapped_npz_member(path: Path, name: str) -> np.ndarray | None:
    """The array ``name`` of an uncompressed ``.npz`` (what ``np.savez`` writes), memory-mapped read-only; None when
    the member is compressed.

    Raises:
        KeyError: No such member.
        ValueError, OSError, zipfile.BadZipFile: Not a readable ``.npz``.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{name}.npy: no local zip header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise ValueError(f"{name}.npy holds Python objects")
    if offset + dtype.itemsize * math.prod(shape) > path.stat().st_size:
        raise ValueError(f"{name}.npy: {shape} {dtype} runs past the end of the file")
    if not math.prod(shape):
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran_order else "C")
