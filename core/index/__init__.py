"""Vector indexes over gallery embeddings: one contract, three back ends.

``add(ids, embeddings)``, ``remove(ids)``, ``search(queries, k, ranker) -> (ids, scores)``, ``save(path)`` and
``load(path)``. Ids are non-negative ``int64``; :func:`content_ids` derives stable ids from image SHA-256 hashes,
so an image keeps its id when files are renamed or the dataset is prepared again. Scores follow the ranker
contract (higher = more similar, same values as ``ranker.score`` up to float rounding).

Back ends:

* :class:`~core.index.exact.ExactIndex` (``ExactConfig``): numpy, blockwise top-k, every ranker. The default
  for small galleries.
* :class:`~core.index.faiss_backend.FaissIndex` (``FaissConfig``): faiss flat, IVF or HNSW, for large galleries.
* :class:`~core.index.milvus_backend.MilvusIndex` (``MilvusConfig``): Milvus Lite file or Milvus server by URI.

The approximate back ends serve one *vector space* chosen when they are created (:class:`VectorSpace`):
cosine, L2, SVM-weighted L2 (plain L2 after scaling each dimension by ``sqrt(|w|)``, which is exact only when
every SVM weight is ``<= 0``; see :func:`space_for`), or the learned projection (cosine after its matrix). L1 and
random rankers need the exact index.

A saved index is a folder of versions, switched atomically::

    <folder>/CURRENT              the name of the live version, then ``manifest-sha256 <hex>``: the checksum of
                                  its manifest (replaced with os.replace)
    <folder>/v-<time>-p<pid>-<random>/   manifest.json (back end, model id, dimension, vector space, ranker,
                                  data hash, count, config, schema version, SHA-256 and size of every file) + the
                                  back end's files

:meth:`VectorIndex.save` writes a complete new version folder, fsyncs it, then replaces ``CURRENT``; only after
that switch are older versions removed. A crash, SIGKILL or full disk at any point leaves the previous index
loadable (a full disk is a one-line :class:`~core.errors.ArtifactError`). :func:`load_index` follows ``CURRENT``,
checks the manifest against its checksum there and its fields against what they must be (types, a dimension the
files hold), and verifies the files' checksums and counts before use, refusing a damaged index with one line naming
the folder and ``index build``. Version folders left by a killed save (their process gone) are removed by the next
load or save. A folder saved before versions existed (``manifest.json`` at its top) still loads. Loading with
``fingerprint=`` refuses another model's index, and ``add``/``search`` with ``fingerprint=`` refuse embeddings of
another model. Milvus keeps its data in Milvus itself (its ``.db`` file or server): only its manifest is versioned.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from core.artifacts import atomic_write, atomic_write_json, environment_versions, read_json, write_problem
from core.errors import ArtifactError, WorkbenchError
from core.rankers import CosineRanker, L2Ranker, Ranker

if TYPE_CHECKING:
    from core.metric_learning import ProjectionRanker

log = logging.getLogger(__name__)

INDEX_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: File in an index folder naming its live version folder.
CURRENT_NAME = "CURRENT"
VERSION_PREFIX = "v-"
_VERSION_NAME = re.compile(r"v-[0-9A-Za-z_-]{1,80}")
_CHUNK = 1 << 20

#: Below this many vectors the exact index is the default (see ``benchmarks/index.py``).
EXACT_DEFAULT_MAX = 200_000


class ModelMismatchError(WorkbenchError):
    """Embeddings of one model were offered to an index built from another."""


class UnsupportedRankerError(WorkbenchError, ValueError):
    """The index cannot serve this ranker (e.g. L1 on an approximate index)."""


class IndexHits(NamedTuple):
    """Search results, best first: ``ids int64[Nq, k]`` and ``scores float32[Nq, k]``.

    Approximate back ends may find fewer than ``k``; missing slots hold id ``-1`` and score ``-inf``.
    """

    ids: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class VectorSpace:
    """What an approximate index measures.

    Attributes:
        metric: ``"cosine"``, ``"l2"``, ``"weighted_l2"`` (the SVM ranker) or ``"projection"`` (the inner product of
            :meth:`core.metric_learning.ProjectionRanker.transform`).
        scale: ``sqrt(|w|)`` per dimension for ``"weighted_l2"``.
        bias: The SVM intercept, added back to the scores.
        projection: The projection ranker for ``"projection"`` (kept in the manifest: its header, and its arrays
            as base64 of their bytes).
    """

    metric: str
    scale: np.ndarray | None = None
    bias: float = 0.0
    projection: ProjectionRanker | None = None

    @property
    def inner_product(self) -> bool:
        """Whether the back end searches by inner product (of unit vectors) rather than L2."""
        return self.metric in ("cosine", "projection")

    @property
    def ranker_name(self) -> str:
        """The registry name of the ranker this space serves."""
        return {"weighted_l2": "svm"}.get(self.metric, self.metric)

    def output_dim(self, dim: int) -> int:
        """Length of the vectors the back end stores for embeddings of length ``dim``."""
        return dim if self.projection is None else self.projection.output_dim

    def to_json(self) -> dict[str, Any]:
        scale = None if self.scale is None else [float(value) for value in self.scale]
        payload: dict[str, Any] = {"metric": self.metric, "scale": scale, "bias": self.bias}
        if self.projection is not None:
            header, arrays = self.projection.state()
            payload["projection"] = {
                "header": header,
                "arrays": {name: _array_to_json(array) for name, array in arrays.items()},
            }
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> VectorSpace:
        from core.metric_learning import ProjectionRanker

        scale, stored = payload.get("scale"), payload.get("projection")
        projection = None
        if stored is not None:
            arrays = {name: _array_from_json(array) for name, array in stored["arrays"].items()}
            projection = ProjectionRanker.from_state(stored["header"], arrays)
        elif payload.get("matrix") is not None:  # written before neighbour labels: the matrix alone
            projection = ProjectionRanker(matrix=_array_from_json({"dtype": "<f4", **payload["matrix"]}))
        return cls(
            payload["metric"],
            None if scale is None else np.asarray(scale, np.float32),
            float(payload.get("bias", 0.0)),
            projection,
        )

    def same_as(self, other: VectorSpace) -> bool:
        if self.metric != other.metric or self.bias != other.bias or not _same_array(self.scale, other.scale):
            return False
        if self.projection is None or other.projection is None:
            return self.projection is None and other.projection is None
        return self.projection.same_scores_as(other.projection)

    def inconsistency(self, dim: int) -> str | None:
        """What does not fit embeddings of length ``dim`` (scale length, projection width, finite values), or None."""
        if self.scale is not None and (self.scale.shape != (dim,) or not np.isfinite(self.scale).all()):
            return f"the space's scale has shape {self.scale.shape}, expected ({dim},) finite values"
        if not np.isfinite(self.bias):
            return "the space's bias is not finite"
        if self.projection is not None and self.projection.input_dim != dim:
            return f"the space's projection takes {self.projection.input_dim}-d embeddings, the index holds {dim}-d"
        return None

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Map embeddings into the space the back end searches with a plain inner product or L2."""
        vectors = np.asarray(vectors, np.float32)
        if self.projection is not None:
            return self.projection.transform(vectors)
        if self.inner_product:
            return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if self.metric == "weighted_l2":
            return vectors * self.scale
        return vectors

    def scores_from_distances(self, distances: np.ndarray) -> np.ndarray:
        """Back-end output (inner product, or squared L2) -> the ranker's score, higher = more similar."""
        distances = np.asarray(distances, np.float32)
        if self.inner_product:
            return distances
        if self.metric == "l2":
            return -np.sqrt(np.maximum(distances, 0.0))
        return (self.bias - np.maximum(distances, 0.0)).astype(np.float32)


def _array_to_json(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, np.asarray(array).dtype.newbyteorder("<"))
    return {"shape": list(array.shape), "dtype": array.dtype.str, "base64": base64.b64encode(array.tobytes()).decode()}


def _array_from_json(payload: dict[str, Any]) -> np.ndarray:
    data = payload["base64"] if "base64" in payload else payload["float32_base64"]
    return np.frombuffer(base64.b64decode(data), np.dtype(payload["dtype"])).reshape(payload["shape"])


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def space_for(ranker: Ranker) -> VectorSpace:
    """The vector space an approximate index needs to serve ``ranker``.

    The SVM score ``w . (u - v)**2 + b`` equals ``b - ||s * (u - v)||**2`` with ``s = sqrt(-w)`` when every weight is
    ``<= 0``, which :meth:`core.svm.SVMRanker.fit` guarantees: a plain L2 nearest-neighbour search after scaling
    both sides by ``s``. A hand-made SVM with a positive weight rewards distance along its dimension, so its score
    is no longer "minus a distance" and no nearest-neighbour index can rank by it; such rankers (and L1, random)
    get :class:`UnsupportedRankerError`: use the exact index. The projection ranker's score is the cosine of
    ``x M`` and ``y M`` (with neighbour labels, of the longer rows of its ``transform``): an inner-product search of
    those unit vectors.

    Raises:
        UnsupportedRankerError: The ranker has no equivalent nearest-neighbour space.
    """
    from core.metric_learning import ProjectionRanker
    from core.svm import SVMRanker

    if type(ranker) is CosineRanker:
        return VectorSpace("cosine")
    if type(ranker) is L2Ranker:
        return VectorSpace("l2")
    if isinstance(ranker, SVMRanker):
        weights = ranker._weights()
        positive = int(np.sum(weights > 0))
        if positive:
            raise UnsupportedRankerError(
                f"SVM ranker has {positive} positive weight(s) of {weights.size}: its score is not a nearest-neighbour "
                "distance (sqrt(|w|) scaling needs every weight <= 0); use the exact index for this ranker"
            )
        return VectorSpace("weighted_l2", np.sqrt(-weights).astype(np.float32), float(ranker.bias))
    if isinstance(ranker, ProjectionRanker) and ranker.matrix is not None:
        return VectorSpace("projection", projection=ranker)
    raise UnsupportedRankerError(
        f"ranker {ranker.name!r} needs the exact index (approximate back ends serve cosine, l2, svm and projection)"
    )


def content_ids(sha256_hex: Sequence[str]) -> np.ndarray:
    """Stable non-negative int64 ids from image content hashes (the first 60 bits of each SHA-256).

    Collisions are astronomically unlikely (about 4e-7 for 1e6 images) but :meth:`VectorIndex.add` rejects them.
    """
    return np.array([int(digest[:15], 16) for digest in sha256_hex], dtype=np.int64)


def ids_hash(ids: np.ndarray) -> str:
    """SHA-256 of the sorted ids: with :func:`content_ids` this identifies the set of indexed images."""
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).astype("<i8").tobytes()).hexdigest()


def check_ids(ids: Sequence[int] | np.ndarray, what: str = "ids") -> np.ndarray:
    """Cast to a 1-D int64 array of distinct non-negative values."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{what}: expected a 1-D array of integers, got shape {ids.shape} dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what}: ids must be non-negative (got {int(ids.min())})")
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{what}: duplicate ids in one call")
    return ids


class VectorIndex(ABC):
    """The index contract. Subclasses set :attr:`backend` and implement the abstract methods.

    Args:
        fingerprint: Featurizer fingerprint of the embeddings this index holds.
        dim: Embedding dimension.

    Attributes:
        ranker_name: The ranker it was built for: what a search uses when none is named (saved in the manifest).
    """

    backend: str = "index"
    ranker_name: str = "cosine"

    def __init__(self, fingerprint: str, dim: int) -> None:
        if not fingerprint:
            raise ValueError("fingerprint must name the featurizer (its fingerprint)")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.fingerprint = fingerprint
        self.dim = int(dim)

    @abstractmethod
    def __len__(self) -> int:
        """Number of live (searchable) vectors."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """The live ids, ``int64[N]`` (order unspecified)."""

    @abstractmethod
    def _add(self, ids: np.ndarray, embeddings: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, ranker: Ranker) -> IndexHits: ...

    @abstractmethod
    def _save_files(self, folder: Path) -> dict[str, Any]:
        """Write the back end's files into ``folder``; return extra manifest fields."""

    @classmethod
    @abstractmethod
    def _load_files(cls, folder: Path, manifest: dict[str, Any]) -> VectorIndex: ...

    @classmethod
    def _release_superseded(cls, manifest: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Free what a superseded version (its ``manifest``) holds outside its folder, unless the ``live`` version's
        manifest still uses it; called after the switch. Files in the folder need nothing: it is removed."""
        return None  # exact and faiss keep everything in the version folder

    def check_model(self, fingerprint: str | None) -> None:
        """Raise :class:`ModelMismatchError` when ``fingerprint`` is given and is not this index's model."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"index holds embeddings of {self.fingerprint!r}, not {fingerprint!r}: build a new index for that model"
            )

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{what}: expected (N, {self.dim}) embeddings, got {vectors.shape}")
        step = max(1, 16_000_000 // max(1, self.dim))  # in blocks: no boolean copy of a 10^6-row gallery
        if not all(np.isfinite(vectors[start : start + step]).all() for start in range(0, len(vectors), step)):
            raise ValueError(f"{what}: embeddings contain NaN or infinity")
        return vectors

    def add(self, ids: Sequence[int] | np.ndarray, embeddings: np.ndarray, fingerprint: str | None = None) -> None:
        """Add vectors under new ids; existing vectors are not touched (no rebuild).

        Raises:
            ModelMismatchError: ``fingerprint`` is given and differs from the index's.
            ValueError: Wrong shape, an id already present, or mismatched lengths.
        """
        self.check_model(fingerprint)
        ids = check_ids(ids)
        embeddings = self._check_vectors(embeddings, "add")
        if len(ids) != len(embeddings):
            raise ValueError(f"add: {len(ids)} ids for {len(embeddings)} embeddings")
        if len(ids):
            self._add(ids, embeddings)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        ids = check_ids(ids)
        return self._remove(ids) if len(ids) else 0

    def search(self, queries: np.ndarray, k: int, ranker: Ranker, fingerprint: str | None = None) -> IndexHits:
        """The ``k`` most similar indexed vectors per query under ``ranker``, best first.

        Returns:
            ``IndexHits(ids int64[Nq, k'], scores float32[Nq, k'])`` with ``k' = min(k, len(self))``.
        """
        self.check_model(fingerprint)
        queries = self._check_vectors(queries, "search")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, len(self))
        if k == 0 or len(queries) == 0:
            return IndexHits(np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.float32))
        return self._search(queries, k, ranker)

    def inconsistency(self) -> str | None:
        """What in a loaded index does not fit together (vector width, space, dimension), or None."""
        return None

    def manifest(self) -> dict[str, Any]:
        """What identifies this index: back end, model, dimension, data hash and count."""
        return {
            "schema_version": INDEX_SCHEMA_VERSION,
            "backend": self.backend,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "count": len(self),
            "ranker": self.ranker_name,
            "data_hash": ids_hash(self.ids()),
            "versions": environment_versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the index into folder ``path`` as a new version and switch to it atomically.

        The back end's files and ``manifest.json`` (with their checksums) go into a new version folder, which is
        fsynced; then ``CURRENT`` is replaced to name it; only then are older versions removed. If anything fails
        before the switch, the new version is removed and the previous index stays the live one.

        Raises:
            ArtifactError: The index could not be written (disk full...); one line naming the folder.
        """
        folder = Path(path)
        version = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-p{os.getpid()}-{secrets.token_hex(4)}"
        staging = folder / version
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_orphans(folder)
            staging.mkdir()
            extra = self._save_files(staging)
            checksums = {
                name: {"sha256": _file_sha256(staging / name), "bytes": (staging / name).stat().st_size}
                for name in extra.get("files", [])
                if _is_plain_name(name)
            }
            atomic_write_json(staging / MANIFEST_NAME, {**self.manifest(), **extra, "checksums": checksums})
            pointer = f"{version}\n{_MANIFEST_SUM} {_file_sha256(staging / MANIFEST_NAME)}\n"
            _fsync_folder(staging)
            atomic_write(folder / CURRENT_NAME, lambda handle: handle.write(pointer.encode("ascii")))
            _fsync_folder(folder)
        except (OSError, ArtifactError) as err:
            shutil.rmtree(staging, ignore_errors=True)
            cause = err if isinstance(err, OSError) else err.__cause__
            problem = write_problem(cause) if isinstance(cause, OSError) else str(err)
            raise ArtifactError(
                f"{_shown(folder)}: index not saved ({problem}); the previous index is unchanged"
            ) from err
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _remove_superseded(folder, version)
        return folder

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> VectorIndex:
        """Read an index saved by :meth:`save` (any back end when called on :class:`VectorIndex`)."""
        return load_index(path, fingerprint)


def _shown(path: Path) -> str:
    from core.images import printable  # lazy: Pillow is not needed otherwise

    return printable(str(path))


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_folder(folder: Path) -> None:
    """Make a folder's entries durable (a rename is only safe once its folder is synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(descriptor)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
    finally:
        os.close(descriptor)


def _remove_superseded(folder: Path, live: str) -> None:
    """After the switch: remove older versions (and what their back end holds elsewhere, such as a Milvus
    collection), leftovers of killed saves, and a pre-version layout's files."""
    live_manifest = _manifest_or_none(folder / live / MANIFEST_NAME)
    for entry in folder.iterdir():
        if entry.name != live and _VERSION_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            _release_backend_data(entry / MANIFEST_NAME, live_manifest)
            shutil.rmtree(entry, ignore_errors=True)
    legacy = folder / MANIFEST_NAME
    if legacy.is_file():
        try:
            names = read_json(legacy).get("files", [])
        except (ArtifactError, AttributeError):
            names = []
        for name in [*names, MANIFEST_NAME]:
            if isinstance(name, str) and _is_plain_name(name):
                (folder / name).unlink(missing_ok=True)


def _manifest_or_none(path: Path) -> dict[str, Any] | None:
    try:
        manifest = read_json(path)
    except (ArtifactError, OSError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _release_backend_data(manifest_path: Path, live: dict[str, Any] | None) -> None:
    """Let a superseded version's back end free what it holds outside the folder; a failure is logged, not raised
    (the new version is live already)."""
    manifest = _manifest_or_none(manifest_path)
    backend = _backends().get(str(manifest.get("backend"))) if manifest else None
    if manifest is None or backend is None:
        return
    try:
        backend._release_superseded(manifest, live)
    except Exception as err:  # any back-end failure here must not undo a finished save
        log.warning("%s: superseded index data not released (%s)", _shown(manifest_path.parent), err)


#: The word before the manifest's SHA-256 on the second line of ``CURRENT``.
_MANIFEST_SUM = "manifest-sha256"
#: The creator's process id in a version name (``v-<time>-p<pid>-<random>``).
_VERSION_PID = re.compile(r"v-[0-9T]+-p([0-9]{1,10})-[0-9a-f]+")
REBUILD_HINT = "run `python -m workbench index build` to rebuild it"


def _read_pointer(folder: Path) -> tuple[Path, str | None]:
    """The live version folder and the manifest checksum ``CURRENT`` records (None: saved before checksums, or
    before versions existed)."""
    try:
        lines = (folder / CURRENT_NAME).read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        if (folder / MANIFEST_NAME).is_file():
            return folder, None
        raise ArtifactError(f"{_shown(folder)}: no index saved here; run `index build` first") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(
            f"{_shown(folder)}: damaged index (unreadable {CURRENT_NAME}: {err}); {REBUILD_HINT}"
        ) from err
    name = lines[0].strip() if lines else ""
    if not _VERSION_NAME.fullmatch(name) or not (folder / name).is_dir():
        raise ArtifactError(
            f"{_shown(folder)}: damaged index ({CURRENT_NAME} names a missing version {name[:90]!r}); {REBUILD_HINT}"
        )
    checksum = None
    for line in lines[1:]:
        key, _, value = line.strip().partition(" ")
        if key == _MANIFEST_SUM:
            checksum = value.strip()
    return folder / name, checksum


def current_version(path: str | Path) -> Path:
    """The folder holding the live version of the index saved in ``path`` (``path`` itself for an index saved
    before versions existed).

    Raises:
        ArtifactError: No index there, or ``CURRENT`` names a missing or invalid version.
    """
    return _read_pointer(Path(path))[0]


def remove_orphans(path: str | Path) -> list[str]:
    """Remove version folders left by a killed save: not the live one, and made by a process that is gone.

    A version being written by a running save (its process alive) is left alone, and so are versions named
    before process ids were part of the name (the next save removes those). Returns the names removed.
    """
    folder = Path(path)
    try:
        live = current_version(folder).name
    except ArtifactError:
        live = ""
    removed = []
    with suppress(OSError):
        for entry in folder.iterdir():
            match = _VERSION_PID.fullmatch(entry.name)
            if entry.name == live or match is None or entry.is_symlink() or not entry.is_dir():
                continue
            if not _process_alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        log.info("%s: removed %d version(s) left by killed saves", _shown(folder), len(removed))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the live version of the index saved in folder ``path``.

    Raises:
        ArtifactError: Missing, unreadable or another schema version.
    """
    version, checksum = _read_pointer(Path(path))
    file = version / MANIFEST_NAME
    if not file.exists():
        raise ArtifactError(
            f"{_shown(Path(path))}: damaged index ({MANIFEST_NAME} missing from {file.parent.name}); {REBUILD_HINT}"
        )
    if checksum is not None and _file_sha256(file) != checksum:
        raise ArtifactError(
            f"{_shown(file)}: damaged index (the manifest was changed after it was saved: its SHA-256 is not the one "
            f"{CURRENT_NAME} records); {REBUILD_HINT}"
        )
    manifest = read_json(file)
    if not isinstance(manifest, dict) or manifest.get("schema_version") != INDEX_SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(
            f"{_shown(file)}: schema version {found!r}, expected {INDEX_SCHEMA_VERSION}; {REBUILD_HINT}"
        )
    _check_manifest(file, manifest)
    return manifest


def _check_manifest(file: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest whose fields are not what :meth:`VectorIndex.save` writes (types and ranges)."""
    from core.rankers import list_rankers

    def positive_int(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    problems = []
    if not isinstance(manifest.get("fingerprint"), str) or not manifest["fingerprint"]:
        problems.append("fingerprint must be a non-empty string")
    if not isinstance(manifest.get("backend"), str):
        problems.append("backend must be a string")
    if not positive_int(manifest.get("dim"), 1):
        problems.append(f"dim must be a positive integer, got {manifest.get('dim')!r}"[:120])
    if not positive_int(manifest.get("count"), 0):
        problems.append(f"count must be a non-negative integer, got {manifest.get('count')!r}"[:120])
    if "config" in manifest and not isinstance(manifest["config"], dict):
        problems.append("config must be a table")
    if "space" in manifest and not isinstance(manifest["space"], dict):
        problems.append("space must be a table")
    if "ranker" in manifest and manifest["ranker"] not in list_rankers():
        problems.append(f"ranker {str(manifest['ranker'])[:40]!r} is not a ranker of this version")
    if problems:
        raise ArtifactError(f"{_shown(file)}: damaged index ({'; '.join(problems)}); {REBUILD_HINT}")


def verify_files(path: str | Path, manifest: dict[str, Any] | None = None) -> None:
    """Check every file of the live version against the sizes and SHA-256 checksums of its manifest.

    Raises:
        ArtifactError: A file is missing, truncated or altered; one line naming the folder and the file.
    """
    folder = Path(path)
    version = current_version(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    checksums = manifest.get("checksums", {})
    if not isinstance(checksums, dict):
        raise ArtifactError(f"{_shown(folder)}: damaged index (checksums in {MANIFEST_NAME} are not a table)")
    for name, expected in checksums.items():
        file = version / name
        if not _is_plain_name(name) or not isinstance(expected, dict):
            raise ArtifactError(f"{_shown(folder)}: damaged index (bad checksum entry {name[:60]!r})")
        try:
            size = file.stat().st_size
        except OSError:
            raise ArtifactError(f"{_shown(folder)}: damaged index ({name} is missing)") from None
        if size != expected.get("bytes"):
            raise ArtifactError(
                f"{_shown(folder)}: damaged index ({name} has {size:,} bytes, manifest says {expected.get('bytes')})"
            )
        if _file_sha256(file) != expected.get("sha256"):
            raise ArtifactError(f"{_shown(folder)}: damaged index ({name} does not match its checksum)")


def _backends() -> dict[str, type[VectorIndex]]:
    from core.index.exact import ExactIndex
    from core.index.faiss_backend import FaissIndex
    from core.index.milvus_backend import MilvusIndex

    return {"exact": ExactIndex, "faiss": FaissIndex, "milvus": MilvusIndex}


def load_index(path: str | Path, fingerprint: str | None = None, verify: bool = True) -> VectorIndex:
    """Load a saved index of any back end; with ``fingerprint``, refuse an index of another model.

    The live version is checked first: with ``verify``, every file's size and SHA-256 checksum against the
    manifest; always, that the files hold as many ids as vectors and as many as the manifest says. If a
    concurrent :meth:`~VectorIndex.save` replaces the version while it is being read, the new one is read.

    Raises:
        ArtifactError: Missing, unreadable or damaged; one line naming the folder.
        ModelMismatchError: The index was built from another model's embeddings.
    """
    folder = Path(path)
    for attempt in range(3):
        version = current_version(folder)
        try:
            index = _load_version(folder, version, fingerprint, verify)
            remove_orphans(folder)
            return index
        except ArtifactError:
            if attempt == 2 or current_version(folder) == version:
                raise
            log.info("%s: index replaced while loading; loading the new version", _shown(folder))
    raise AssertionError("unreachable")  # pragma: no cover


def _load_version(folder: Path, version: Path, fingerprint: str | None, verify: bool) -> VectorIndex:
    manifest = read_manifest(folder)
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        raise ModelMismatchError(
            f"{_shown(folder)}: index holds embeddings of {manifest.get('fingerprint')!r}, not {fingerprint!r}"
        )
    backend = _backends().get(str(manifest.get("backend")))
    if backend is None:
        raise ArtifactError(f"{_shown(folder)}: unknown index back end {manifest.get('backend')!r}")
    if verify:
        verify_files(folder, manifest)
    try:
        index = backend._load_files(version, manifest)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise ArtifactError(
            f"{_shown(folder)}: damaged index (unreadable {manifest.get('backend')} files: {detail}); {REBUILD_HINT}"
        ) from err
    if len(index) != manifest.get("count") or index.dim != manifest.get("dim"):
        raise ArtifactError(
            f"{_shown(folder)}: damaged index (files hold {len(index)} x {index.dim}, "
            f"manifest says {manifest.get('count')} x {manifest.get('dim')}); {REBUILD_HINT}"
        )
    problem = index.inconsistency()
    if problem:
        raise ArtifactError(f"{_shown(folder)}: damaged index ({problem}); {REBUILD_HINT}")
    index.ranker_name = str(manifest.get("ranker") or index.ranker_name)
    return index


def config_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as JSON-ready fields."""
    return dataclasses.asdict(config)


def create_index(config: Any, fingerprint: str, dim: int, ranker: Ranker | None = None) -> VectorIndex:
    """A new empty index of the back end ``config`` describes.

    Args:
        config: ``ExactConfig``, ``FaissConfig`` or ``MilvusConfig``.
        fingerprint: Featurizer fingerprint.
        dim: Embedding dimension.
        ranker: For approximate back ends, the ranker the index will serve (default cosine).
    """
    from core.index.exact import ExactConfig, ExactIndex
    from core.index.faiss_backend import FaissConfig, FaissIndex
    from core.index.milvus_backend import MilvusConfig, MilvusIndex

    ranker = ranker if ranker is not None else CosineRanker()
    index: VectorIndex
    if isinstance(config, ExactConfig):  # serves every ranker; remembers which one it was built for
        index = ExactIndex(fingerprint, dim, config)
    elif isinstance(config, FaissConfig):
        index = FaissIndex(fingerprint, dim, space_for(ranker), config)
    elif isinstance(config, MilvusConfig):
        index = MilvusIndex(fingerprint, dim, space_for(ranker), config)
    else:
        raise TypeError(f"unknown index config {type(config).__name__}")
    index.ranker_name = ranker.name
    input_dim = getattr(ranker, "input_dim", dim)
    if input_dim != dim:
        raise ModelMismatchError(f"ranker {ranker.name!r} scores {input_dim}-d embeddings, the index holds {dim}-d")
    return index


def default_config(n_vectors: int) -> Any:
    """Exact up to :data:`EXACT_DEFAULT_MAX` vectors, faiss HNSW above."""
    from core.index.exact import ExactConfig
    from core.index.faiss_backend import FaissConfig

    return ExactConfig() if n_vectors <= EXACT_DEFAULT_MAX else FaissConfig(kind="hnsw")


__all__ = [
    "CURRENT_NAME",
    "EXACT_DEFAULT_MAX",
    "INDEX_SCHEMA_VERSION",
    "REBUILD_HINT",
    "IndexHits",
    "ModelMismatchError",
    "UnsupportedRankerError",
    "VectorIndex",
    "VectorSpace",
    "check_ids",
    "content_ids",
    "create_index",
    "current_version",
    "default_config",
    "ids_hash",
    "load_index",
    "read_manifest",
    "remove_orphans",
    "space_for",
    "verify_files",
]
