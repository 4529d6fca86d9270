"""Workflows over a workspace, shared by the CLI and the app: fit learned rankers, train a run end to end,
the experiment report, near-duplicate removal, ONNX export and the saved vector index.

Each takes a :class:`~workbench.workspace.WorkspaceSpec` or an opened
:class:`~workbench.workspace.Workspace`, does its work through ``core`` and ``export``, and returns a result
dataclass; rendering (tables, progress bars, Streamlit widgets) stays in the front ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.artifacts import SCHEMA_VERSION, atomic_write_json, environment_versions
from core.errors import WorkbenchError
from core.evaluate import EvaluationResult
from core.featurize import ProgressFn
from core.rankers import LearnedRanker, list_rankers, ranker_spec
from core.workdir import PRETRAINED
from workbench.workspace import Workspace, WorkspaceSpec, open_workspace, prepared_data

if TYPE_CHECKING:
    from core.dedup import DedupReport
    from core.index import IndexHits, VectorIndex
    from core.svm import PairAccuracy
    from core.train import TrainProgress, TrainResult
    from export.onnx_export import ExportResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedRanker:
    """A learned ranker fitted and saved for one featurizer."""

    name: str
    path: Path
    seconds: float
    train_pairs: PairAccuracy | None = None
    test_pairs: PairAccuracy | None = None


def fit_ranker(ws: Workspace, name: str) -> FittedRanker:
    """Fit the learned ranker ``name`` on the workspace's training split and save it for its featurizer.

    Its settings come from the config section of the same name when there is one (``[svm]``).

    Raises:
        WorkbenchError: ``name`` is not a learned ranker of the registry.
    """
    try:
        spec = ranker_spec(name)
    except ValueError as err:
        raise WorkbenchError(str(err)) from None
    if not spec.learned:
        raise WorkbenchError(f"ranker {name!r} has nothing to learn; learned rankers: {', '.join(list_rankers(True))}")
    start = time.perf_counter()
    section = getattr(ws.spec.config, name, None)
    ranker = spec.build(section) if section is not None else spec.build()
    if not isinstance(ranker, LearnedRanker):
        raise WorkbenchError(f"ranker {name!r} cannot be fitted and saved")
    prepared = ws.prepared
    ranker.fit(ws.embeddings, prepared.dataset.label_array, prepared.train_sets)
    train_pairs = test_pairs = None
    pair_accuracy = getattr(ranker, "pair_accuracy", None)
    if pair_accuracy is not None:
        train_pairs, test_pairs = (
            pair_accuracy(ws.embeddings, prepared.train_sets),
            pair_accuracy(ws.embeddings, prepared.test_sets),
        )
    metadata: dict[str, Any] = {"featurizer": ws.fingerprint, "condition": ws.spec.config.data.condition}
    if train_pairs is not None and test_pairs is not None:
        metadata |= {"train_pairs": dataclasses.asdict(train_pairs), "test_pairs": dataclasses.asdict(test_pairs)}
    path = ws.ranker_path(name)
    ranker.save(path, metadata)
    seconds = time.perf_counter() - start
    log.info("fitted %s ranker for %s in %.1f s: %s", name, ws.fingerprint, seconds, path)
    return FittedRanker(name, path, seconds, train_pairs, test_pairs)


@dataclass(frozen=True)
class TrainedRun:
    """A fine-tuning run, the workspace of its featurizer and the learned rankers fitted on it."""

    training: TrainResult
    workspace: Workspace
    fitted: tuple[FittedRanker, ...]


def train_run(
    spec: WorkspaceSpec,
    run: str,
    on_step: Callable[[TrainProgress], None] | None = None,
    on_featurize: ProgressFn | None = None,
    resume: bool = True,
    rankers: Sequence[str] = ("svm",),
    on_phase: Callable[[str], None] | None = None,
) -> TrainedRun:
    """Fine-tune on the training split, featurize with the refined body, fit the learned ``rankers``.

    Args:
        spec: The workspace to train in (its ``config.train`` holds the hyper-parameters).
        run: Name of the run (a folder under the workdir's runs).
        on_step: Called after every optimisation step.
        on_featurize: Called as images are embedded with the new model.
        resume: Continue a matching interrupted run instead of starting over.
        rankers: Learned rankers to fit on the new embeddings.
        on_phase: Called with a short description when a new phase starts.
    """
    from core.train import fine_tune

    def phase(text: str) -> None:
        log.info("%s", text)
        if on_phase is not None:
            on_phase(text)

    run_spec = spec.with_run(run)  # validates the name
    prepared = prepared_data(spec.config.data, spec.layout)
    phase("fine-tuning")
    training = fine_tune(
        prepared.dataset.records, prepared.split, spec.config.train, spec.layout.run(run), on_step, resume
    )
    phase("featurizing with the fine-tuned model")
    ws = open_workspace(run_spec, on_featurize)
    fitted = []
    for name in rankers:
        phase(f"fitting the {name} ranker")
        fitted.append(fit_ranker(ws, name))
    phase("done")
    return TrainedRun(training, ws, tuple(fitted))


@dataclass(frozen=True)
class ExperimentSection:
    """One featurizer of an experiment: its rankers' results and the SVM's pair accuracy."""

    name: str
    fingerprint: str
    results: tuple[EvaluationResult, ...]
    svm: FittedRanker


@dataclass(frozen=True)
class ExperimentReport:
    """Pretrained vs fine-tuned, every ranker: what ``experiment`` prints and saves."""

    run: str
    sections: tuple[ExperimentSection, ...]
    path: Path


def experiment(
    spec: WorkspaceSpec,
    run: str,
    on_step: Callable[[TrainProgress], None] | None = None,
    on_featurize: ProgressFn | None = None,
    resume: bool = True,
) -> ExperimentReport:
    """Split, fine-tune, featurize, fit the SVM and evaluate every ranker, pretrained vs fine-tuned; one report."""
    prepared_data(spec.config.data, spec.layout, force=True)
    trained = train_run(spec, run, on_step, on_featurize, resume, rankers=())
    sections = []
    for name, ws in (
        ("pretrained", open_workspace(spec.with_run(PRETRAINED), on_featurize)),
        ("fine-tuned", trained.workspace),
    ):
        svm = fit_ranker(ws, "svm")
        names = [n for n in ws.rankers_on_offer() if n in ("random", "l1", "l2", "cosine", "svm")]
        results = ws.evaluate(names)
        save_report(ws, results)
        sections.append(ExperimentSection(name, ws.fingerprint, tuple(results), svm))
    path = spec.layout.experiment_report(run)
    atomic_write_json(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "config": dataclasses.asdict(spec.config),
            "versions": environment_versions(),
            "sections": {
                section.name: {
                    "featurizer": section.fingerprint,
                    "svm_pairs": {
                        "train": dataclasses.asdict(section.svm.train_pairs) if section.svm.train_pairs else None,
                        "test": dataclasses.asdict(section.svm.test_pairs) if section.svm.test_pairs else None,
                    },
                    "results": {result.ranker: result_summary(result) for result in section.results},
                }
                for section in sections
            },
        },
    )
    return ExperimentReport(run, tuple(sections), path)


def result_summary(result: EvaluationResult) -> dict[str, Any]:
    """An evaluation result without its per-query arrays (for JSON summaries)."""
    return {key: value for key, value in result.to_dict().items() if key not in ("ranks", "query_labels")}


def save_report(ws: Workspace, results: Sequence[EvaluationResult]) -> Path:
    """Write the evaluation report of a featurizer (all its rankers) atomically."""
    path = ws.layout.report(ws.fingerprint)
    atomic_write_json(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "featurizer": ws.fingerprint,
            "condition": ws.spec.config.data.condition,
            "versions": environment_versions(),
            "results": {result.ranker: result.to_dict() for result in results},
        },
    )
    return path


@dataclass(frozen=True)
class DedupOutcome:
    """What ``dedup`` found (and moved, with ``apply``)."""

    report: DedupReport
    exact_duplicates: tuple[str, ...]
    moved: tuple[Path, ...]
    reprepared: bool
    path: Path


def dedup(spec: WorkspaceSpec, threshold: int | None = None, apply: bool = False) -> DedupOutcome:
    """Near-duplicates of the dataset folder (dhash); ``apply`` moves them to ``<data>/_duplicates/``.

    A prepared split of this dataset and condition is prepared again after files were moved.

    Raises:
        WorkbenchError: Threshold outside 0..256, or an unusable dataset folder.
    """
    from core.data import scan_folder
    from core.dedup import DEFAULT_THRESHOLD, find_near_duplicates, move_duplicates

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0 <= threshold <= 256:
        raise WorkbenchError(f"--threshold must be between 0 and 256 bits, got {threshold}")
    root = spec.config.data.root
    scan = scan_folder(root)
    if scan.dhashes is None:
        raise WorkbenchError(f"{root}: no image hashes from the scan")
    report = find_near_duplicates(scan.dataset, scan.dhashes, threshold)
    exact = tuple(item.reason for item in scan.skipped if "exact duplicate of" in item.reason)
    path = spec.layout.dedup_report
    atomic_write_json(path, {**report.to_dict(), "exact_duplicates": list(exact), "applied": apply})
    moved: tuple[Path, ...] = ()
    reprepared = False
    if apply and report.removed:
        moved = tuple(target for _, target in move_duplicates(report, root))
        if spec.layout.prepared.exists():
            prepared_data(spec.config.data, spec.layout, force=True)
            reprepared = True
    return DedupOutcome(report, exact, moved, reprepared, path)


def export_featurizer(spec: WorkspaceSpec, out: Path | None = None) -> ExportResult:
    """Export the spec's featurizer to ONNX (validated against PyTorch); default target: the export cache."""
    from export.onnx_export import export_onnx
    from workbench.workspace import exported_model, torch_featurizer

    featurizer = torch_featurizer(spec)
    target = out or exported_model(dataclasses.replace(spec, onnx=None), featurizer.fingerprint)
    return export_onnx(featurizer.backbone, target, training_run="" if spec.run == PRETRAINED else spec.run)


# --- the saved vector index -------------------------------------------------------------------------


def index_config(kind: str, n_images: int, folder: Path, dtype: str = "float32", milvus_uri: str | None = None) -> Any:
    """The index back-end config for ``kind`` (``auto`` picks by gallery size)."""
    from core.index import default_config
    from core.index.exact import ExactConfig
    from core.index.faiss_backend import FaissConfig
    from core.index.milvus_backend import MilvusConfig

    if kind == "auto":
        chosen = default_config(n_images)
        return ExactConfig(dtype=dtype) if isinstance(chosen, ExactConfig) else chosen
    if kind == "exact":
        return ExactConfig(dtype=dtype)
    if kind == "milvus":
        return MilvusConfig(uri=milvus_uri or str(folder / "milvus.db"))
    return FaissConfig(kind=kind.removeprefix("faiss-"))


INDEX_KINDS = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus")


def _content_ids(ws: Workspace) -> np.ndarray:
    from core.index import content_ids

    return content_ids([record.sha256 for record in ws.dataset.records])


def index_build(ws: Workspace, folder: Path, config: Any, ranker: str = "cosine") -> VectorIndex:
    """Index every image of the workspace and save it to ``folder`` (replacing what was there)."""
    from core.index import create_index
    from core.index.exact import ExactConfig

    model = None if isinstance(config, ExactConfig) else ws.ranker(ranker)
    index = create_index(config, ws.fingerprint, ws.embeddings.shape[1], model)
    index.add(_content_ids(ws), ws.embeddings, fingerprint=ws.fingerprint)
    index.save(folder)
    return index


def index_add(ws: Workspace, folder: Path) -> tuple[int, VectorIndex]:
    """Add the workspace's images missing from the saved index; returns (added, index)."""
    from core.index import load_index

    index = load_index(folder, fingerprint=ws.fingerprint)
    ids = _content_ids(ws)
    new = ~np.isin(ids, index.ids())
    index.add(ids[new], ws.embeddings[new], fingerprint=ws.fingerprint)
    index.save(folder)
    return int(new.sum()), index


def index_remove(ws: Workspace, folder: Path, images: Sequence[Path]) -> tuple[int, VectorIndex]:
    """Remove images (matched by content hash) from the saved index; returns (removed, index)."""
    from core.images import content_hash
    from core.index import content_ids, load_index

    index = load_index(folder, fingerprint=ws.fingerprint)
    hashes = []
    for path in images:
        try:
            hashes.append(content_hash(Path(path).read_bytes()))
        except OSError as err:
            raise WorkbenchError(f"{path}: cannot read ({err.strerror or err})") from err
    removed = index.remove(content_ids(hashes))
    index.save(folder)
    return removed, index


@dataclass(frozen=True)
class IndexHit:
    """One result of an index search: the record when the id belongs to the workspace's dataset."""

    rank: int
    id: int
    score: float
    label: str | None
    path: str | None


def index_search(ws: Workspace, folder: Path, image_path: Path, k: int, ranker: str = "cosine") -> list[IndexHit]:
    """The ``k`` indexed images most similar to an image file."""
    from core.images import load_image
    from core.index import load_index

    if k < 1:
        raise WorkbenchError(f"-k must be at least 1, got {k}")
    index = load_index(folder, fingerprint=ws.fingerprint)
    hits: IndexHits = index.search(ws.embed([load_image(image_path)]), k, ws.ranker(ranker), fingerprint=ws.fingerprint)
    by_id = dict(zip(_content_ids(ws).tolist(), ws.dataset.records, strict=True))
    rows = []
    for rank, (hit_id, score) in enumerate(zip(hits.ids[0].tolist(), hits.scores[0].tolist(), strict=True), 1):
        record = by_id.get(hit_id)
        rows.append(
            IndexHit(
                rank, hit_id, score, record.label if record else None, ws.relative_path(record) if record else None
            )
        )
    return rows
