"""Featurizers (image -> L2-normalised embedding) and an on-disk feature cache keyed by content hash.

One contract for every back end: ``embed(images) -> float32[N, D]`` with unit-length rows.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class FeatureCache:
    """Embeddings on disk per featurizer fingerprint, keyed by the content hash of the bytes embedded.

    Re-running on the same images is a lookup; renamed or moved files are still hits. Layout:
    ``<fingerprint>.npz`` (``sha256``, ``embeddings``) plus, while a featurize is running or after one was
    killed, ``<fingerprint>.part-*.npz`` files holding what was embedded since; a finished run merges them into
    the main file. Every file is written atomically, so a killed run keeps every saved part and a rerun embeds
    only the rest. A truncated or corrupt file is a cache miss (logged, naming the file), never an error.

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

    def load(self, fingerprint: str) -> dict[str, np.ndarray]:
        """All cached embeddings for a featurizer, by sha256 (empty when none).

        Unreadable files are skipped, and so are files holding NaN or infinite values, or vectors of another width
        than the first readable file (the main one when it is readable): each is one warning naming the file, and
        its images are embedded again.
        """
        cached: dict[str, np.ndarray] = {}
        width: int | None = None
        for path in [self.path_for(fingerprint), *self.part_paths(fingerprint)]:
            found = self._read(path)
            if not found:
                continue
            found_width = len(next(iter(found.values())))
            if width is not None and found_width != width:
                log.warning(
                    "%s: feature cache file of %d-d vectors beside %d-d ones, ignored: its images are embedded again",
                    printable(str(path)),
                    found_width,
                    width,
                )
                continue
            width = found_width
            cached.update(found)
        return cached

    @staticmethod
    def _read(path: Path) -> dict[str, np.ndarray]:
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as archive:
                hashes, embeddings = archive["sha256"], archive["embeddings"]
                if hashes.ndim != 1 or embeddings.ndim != 2 or len(hashes) != len(embeddings):
                    raise ValueError(f"sha256 {hashes.shape} does not match embeddings {embeddings.shape}")
                if not np.isfinite(embeddings).all():
                    raise ValueError("embeddings hold NaN or infinite values")
                return dict(zip(hashes.tolist(), embeddings.astype(np.float32), strict=True))
        except UNREADABLE_NPZ as err:
            log.warning(
                "%s: unreadable feature cache file, ignored: its images are embedded again (%s: %s)",
                printable(str(path)),
                type(err).__name__,
                printable(str(err)),
            )
            return {}

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
        return self._save_part(fingerprint, dict(zip(sha256s, embeddings, strict=True)))

    def _save_part(self, fingerprint: str, new: dict[str, np.ndarray]) -> Path:
        path = self.directory / f"{fingerprint}.part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        atomic_save_npz(path, sha256=np.array(list(new), dtype=str), embeddings=np.stack(list(new.values())))
        return path

    def _consolidate(self, fingerprint: str, cached: dict[str, np.ndarray], parts: list[Path]) -> None:
        """Write everything into the main file, then drop the parts it now holds."""
        atomic_save_npz(
            self.path_for(fingerprint),
            sha256=np.array(list(cached), dtype=str),
            embeddings=np.stack(list(cached.values())).astype(np.float32),
        )
        for part in parts:
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
        new content, stored under the new content's hash, never under the old one.

        Raises:
            ImageLoadError: A file cannot be read or decoded (what was embedded before it stays saved).
        """
        fingerprint = featurizer.fingerprint
        parts = self.part_paths(fingerprint)
        cached = self.load(fingerprint)
        missing: dict[str, Path] = {}
        for record in records:
            if record.sha256 not in cached:
                missing.setdefault(record.sha256, record.path)
        content_of: dict[Path, str] = {}  # files read in this run -> hash of the bytes read
        if missing:
            log.info("featurizing %d of %d images (%d cached)", len(missing), len(records), len(records) - len(missing))
            unsaved: dict[str, np.ndarray] = {}
            last_save = -math.inf  # the first batch is saved at once: a run killed early still keeps it
            listed = {path: sha256 for sha256, path in missing.items()}
            paths = list(listed)
            try:
                for batch in iter_embed_files(featurizer, paths, batch_size=batch_size, progress=progress):
                    for path, sha256, embedding in zip(
                        paths[batch.start :], batch.sha256, batch.embeddings, strict=False
                    ):
                        content_of[path] = sha256
                        if sha256 != listed[path]:
                            log.warning("%s: changed since it was listed; embedded as it is now", printable(str(path)))
                        unsaved[sha256] = cached[sha256] = np.asarray(embedding, np.float32)
                    if time.monotonic() - last_save >= self.save_every_s:
                        parts.append(self._save_part(fingerprint, unsaved))
                        unsaved, last_save = {}, time.monotonic()
            except BaseException:  # a bad file or Ctrl-C: keep what was embedded before it
                if unsaved:
                    self._save_part(fingerprint, unsaved)
                raise
        elif progress:
            progress(len(records), len(records))
        if missing or parts:
            self._consolidate(fingerprint, cached, parts)
        if not records:
            return np.zeros((0, 0), np.float32)
        return np.stack([cached[content_of.get(record.path, record.sha256)] for record in records]).astype(np.float32)
