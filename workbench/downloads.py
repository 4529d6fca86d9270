"""Model files the app offers for download: the featurizer as ONNX, alone or with the projection ranker baked in.

They take seconds to make (an export validated against PyTorch; a graph edit), so they are made on demand, kept on
disk and reused: the plain model is the featurizer's export cache (``workspace.exported_model``, the file the
``auto`` back end and ``python -m workbench export`` use), the baked one lies beside the projection ranker's file and
is made again when that ranker is refitted. No Streamlit here: the app's service module calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.workdir import PRETRAINED
from workbench.workspace import Workspace, exported_model

#: The learned ranker that can be baked into the model (its ``transform`` becomes the model's output).
BAKED_RANKER = "projection"


@dataclass(frozen=True)
class ModelFile:
    """An ONNX file ready to download, and the name to save it under."""

    path: Path
    file_name: str
    with_projection: bool

    @property
    def size_mb(self) -> float:
        """The file's size in MB (10^6 bytes)."""
        return self.path.stat().st_size / 1e6

    def read(self) -> bytes:
        """The file's bytes (read when the download is asked for)."""
        return self.path.read_bytes()


def can_bake_projection(ws: Workspace) -> bool:
    """Whether the projection ranker is fitted for this featurizer (so a model with it baked in can be made)."""
    return BAKED_RANKER in ws.rankers_on_offer()


def _target(ws: Workspace, with_projection: bool) -> Path:
    if with_projection:
        return ws.ranker_path(BAKED_RANKER).with_name(f"{BAKED_RANKER}-baked.onnx")
    return exported_model(ws.spec, ws.fingerprint)


def _model_file(ws: Workspace, path: Path, with_projection: bool) -> ModelFile:
    run = "" if ws.run == PRETRAINED else f"{ws.run}-"
    suffix = f"-{BAKED_RANKER}" if with_projection else ""
    return ModelFile(path, f"{run}{ws.fingerprint}{suffix}.onnx", with_projection)


def ready_onnx(ws: Workspace, with_projection: bool = False) -> ModelFile | None:
    """The model file when it is already made and current (nothing is exported here), else None."""
    path = _target(ws, with_projection)
    if not path.is_file():
        return None
    if with_projection and path.stat().st_mtime < ws.ranker_path(BAKED_RANKER).stat().st_mtime:
        return None  # the projection was refitted since it was baked in
    return _model_file(ws, path, with_projection)


def make_onnx(ws: Workspace, with_projection: bool = False) -> ModelFile:
    """The model file, exported (and validated against PyTorch) and baked now where missing or stale.

    Raises:
        workspace.RankerUnavailableError: ``with_projection`` and no projection ranker is fitted for this featurizer.
        ArtifactError: The export failed validation, or a file could not be read or written.
    """
    from core.metric_learning import ProjectionRanker
    from export.onnx_projection import bake_projection
    from workbench.workflows import export_featurizer

    ready = ready_onnx(ws, with_projection)
    if ready is not None:
        return ready
    plain = ready_onnx(ws) or _model_file(ws, export_featurizer(ws.spec, _target(ws, False)).path, False)
    if not with_projection:
        return plain
    ranker = ws.ranker(BAKED_RANKER)  # RankerUnavailableError when not fitted (its message says how to fit it)
    assert isinstance(ranker, ProjectionRanker)  # the registry's projection ranker
    path = bake_projection(plain.path, ranker, _target(ws, True))
    return _model_file(ws, path, True)
