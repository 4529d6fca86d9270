"""Atomic artifact writing: a temp file in the same folder, then ``os.replace``.

A crash or Ctrl-C mid-write leaves the previous artifact intact, never a half-written one. A write that fails
(disk full, quota, read-only file system, permission) raises :class:`~core.errors.ArtifactError` naming the
file and the cause in one line ("no space left on device"), and leaves the previous artifact as it was.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.errors import ArtifactError

SCHEMA_VERSION = 1


def write_problem(err: OSError) -> str:
    """A short lower-case reason for a failed write: ``"no space left on device"``, ``"permission denied"``..."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    reason = err.strerror or (os.strerror(err.errno) if err.errno else "") or str(err) or type(err).__name__
    return reason[:1].lower() + reason[1:]


def _shown(path: Path) -> str:
    from core.images import printable  # lazy: core.images imports Pillow

    return printable(str(path))


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Raises:
        ArtifactError: Creating, writing or renaming failed with an ``OSError`` (disk full...); names ``path``.
    """
    path = Path(path)
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(handle)
        temp = Path(temp_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
        yield temp
        os.replace(temp, path)
    except OSError as err:
        raise ArtifactError(f"{_shown(path)}: cannot write ({write_problem(err)})") from err
    finally:
        if temp is not None:
            with suppress(OSError):
                temp.unlink(missing_ok=True)


class _WriteRecorder:
    """A binary file that remembers the first ``OSError`` of its ``write``.

    Some writers (``torch.save``) catch that error and raise their own (``RuntimeError: enforce fail at
    inline_container.cc``); the recorded one says what really happened (disk full).
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file atomically by calling ``write(binary_handle)``; the data is fsynced first.

    Raises:
        ArtifactError: The write failed (disk full, quota, permission...); the previous file is unchanged.
    """
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        recorder = _WriteRecorder(handle)
        try:
            write(recorder)  # type: ignore[arg-type]
        except Exception as err:
            if recorder.error is not None and not isinstance(err, OSError):
                raise recorder.error from err
            raise
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (UTF-8, indented, keys sorted for stable diffs)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays to ``.npz`` atomically (no pickled objects: load with ``allow_pickle=False``)."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]  # numpy stubs


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array to ``.npy`` atomically (no pickled objects)."""
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def pack_texts(texts: Sequence[str]) -> np.ndarray:
    """Texts (file names, labels) as one NUL-separated byte buffer, encoded in one call; names that are not valid
    in the file system's encoding keep their bytes (file names cannot hold NUL)."""
    return np.frombuffer("\0".join(texts).encode(sys.getfilesystemencoding(), "surrogateescape"), np.uint8)


def unpack_texts(buffer: np.ndarray, count: int) -> tuple[str, ...]:
    """Texts packed by :func:`pack_texts`; ``count`` of them (any number when negative).

    Raises:
        ValueError: Another number of texts.
    """
    if count == 0:
        return ()
    texts = tuple(buffer.tobytes().decode(sys.getfilesystemencoding(), "surrogateescape").split("\0"))
    if count >= 0 and len(texts) != count:
        raise ValueError(f"{len(texts)} texts where {count} were expected")
    return texts


def save_npz_with_header(path: str | Path, header: dict[str, Any], **arrays: np.ndarray) -> None:
    """Save arrays plus a JSON header (schema version, config, metadata) to ``.npz`` atomically, no pickle."""
    atomic_save_npz(path, header=np.array(json.dumps(header, default=_json_default)), **arrays)


#: What reading a damaged ``.npz`` raises: truncated or empty (``EOFError``, ``BadZipFile``), bad deflate data
#: (``zlib.error``), a missing member (``KeyError``), an object array refused without pickle (``ValueError``).
UNREADABLE_NPZ = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)


def load_npz_with_header(
    path: str | Path, what: str, schema_version: int, missing_hint: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_npz_with_header`: its arrays and its header.

    Args:
        path: The ``.npz`` file.
        what: What it holds, for messages (``"SVM ranker"``).
        schema_version: The only version accepted.
        missing_hint: How to write the file anew, for a missing or damaged one (``"run `... fit --ranker svm`"``).

    Raises:
        ArtifactError: Missing, unreadable, or another schema version; one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no {what} saved here; {missing_hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files if key != "header"}
            header = json.loads(str(archive["header"]))
    except UNREADABLE_NPZ as err:  # the type only: numpy's own text may suggest unpickling the file
        raise ArtifactError(
            f"{path}: unreadable {what}, damaged or not written by this tool ({type(err).__name__}); {missing_hint}"
        ) from err
    if not isinstance(header, dict) or header.get("schema_version") != schema_version:
        found = header.get("schema_version") if isinstance(header, dict) else None
        raise ArtifactError(
            f"{path}: {what} of schema version {found!r}, this version reads {schema_version}; {missing_hint}"
        )
    return arrays, header


def read_npz_header(path: str | Path, what: str, rebuild_hint: str) -> dict[str, Any]:
    """The JSON header of a file written by :func:`save_npz_with_header`, without loading its arrays.

    Reads through :data:`UNREADABLE_NPZ`, the one list of what a damaged ``.npz`` raises.

    Raises:
        ArtifactError: Missing, truncated, damaged, or a header that is not a JSON object; one line naming the
            file and ``rebuild_hint``.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{_shown(path)}: no {what} saved here; {rebuild_hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
    except UNREADABLE_NPZ as err:
        raise ArtifactError(
            f"{_shown(path)}: unreadable {what}, damaged or not written by this tool ({type(err).__name__}); "
            f"{rebuild_hint}"
        ) from err
    if not isinstance(header, dict):
        raise ArtifactError(f"{_shown(path)}: {what} header is not a JSON object; {rebuild_hint}")
    return header


def check_finite(path: str | Path, what: str, rebuild_hint: str, **values: Any) -> None:
    """Refuse NaN or infinite values read from an artifact: one line naming the file, the value and the fix.

    Args:
        path: The artifact.
        what: What it holds (``"SVM ranker"``).
        rebuild_hint: How to write it anew.
        values: Arrays or numbers by name (``weights=..., bias=...``).

    Raises:
        ArtifactError: Some value is not a finite number.
    """
    for name, value in values.items():
        try:
            array = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise ArtifactError(f"{_shown(Path(path))}: {what} {name} is not numeric; {rebuild_hint}") from None
        bad = int(array.size - np.isfinite(array).sum())
        if bad:
            raise ArtifactError(
                f"{_shown(Path(path))}: {what} {name} holds {bad} NaN or infinite value(s) of {array.size}; "
                f"{rebuild_hint}"
            )


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact.

    Raises:
        ArtifactError: Missing or not valid JSON; names the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        try:
            import orjson  # several times faster on a large prepared.json; optional (requirements-scale.txt)

            return orjson.loads(data)
        except (ImportError, ValueError):  # not installed, or NaN / Infinity, which only json reads
            return json.loads(data.decode("utf-8"))
    except FileNotFoundError as err:
        raise ArtifactError(f"{path}: not found") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: unreadable JSON ({err})") from err


def environment_versions() -> dict[str, str]:
    """Versions that matter for reproducing an artifact."""
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn"):
        with suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
