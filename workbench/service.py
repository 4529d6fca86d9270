"""The one module the Streamlit pages call: cached workspaces, search, evaluation, training jobs.

Pages only draw widgets and render what these functions return; they never import ``core`` or
``export``. Models and embeddings are held in ``st.cache_resource`` slots; evaluation results (plain
data) in ``st.cache_data``. Settings come from the environment so tests and users can point the app
elsewhere: ``WORKBENCH_DATA`` (dataset folder, default: the bundled demo) and ``WORKBENCH_WORKDIR``
(artifacts, default: ``artifacts``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from core.config import DEFAULT_DATA, DataConfig, FeaturizerConfig, SVMConfig, TrainConfig
from core.data import ATTRIBUTES_FILE, ImageDataset, ImageRecord
from core.errors import ArtifactError, DatasetError, ImageLoadError, WorkbenchError  # noqa: F401  (re-exported for the pages)
from core.evaluate import EvaluationResult
from core.featurize import Featurizer
from core.images import decode_image, printable
from core.pipeline import (
    PreparedData,
    SearchHit,
    build_featurizer,
    evaluate_rankers,
    featurize,
    fit_svm,
    forget_export,
    load_prepared,
    load_rankers,
    onnx_path,
    prepare,
    run_path,
    save_prepared,
    siamese_path,
    svm_path,
)
from core.pipeline import search as search_image
from core.plots import (  # noqa: F401  (pure figure builders, re-exported for the pages)
    embedding_map,
    label_counts_bar,
    per_category_bars,
    rank_distributions,
    rank_histogram,
    top_n_curves,
    training_curves,
)
from core.train import EpochMetrics, TrainProgress, fine_tune, read_manifest

ProgressFn = Callable[[int, int], None]
PRETRAINED = "pretrained"
PLAIN_RANKERS = ("cosine", "l2", "l1", "random")


@dataclass(frozen=True)
class Workspace:
    """What the pages work with: the prepared dataset, one featurizer and its embeddings."""

    prepared: PreparedData
    featurizer: Featurizer
    embeddings: np.ndarray
    workdir: Path
    choice: str

    @property
    def backend(self) -> str:
        """``"onnx"`` when an exported model serves this featurizer, else ``"torch"``."""
        return "torch" if hasattr(self.featurizer, "backbone") else "onnx"

    @property
    def dataset(self) -> ImageDataset:
        return self.prepared.dataset


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query image and how long the query took."""

    hits: list[SearchHit]
    seconds: float


@st.cache_resource(show_spinner=False)
def _active_dataset() -> dict[str, Path]:
    return {}


def settings() -> tuple[Path, Path]:
    """(dataset folder, workdir): the folder chosen in the app, else ``WORKBENCH_DATA`` or the bundled demo.

    A chosen folder gets its own workdir under ``<workdir>/datasets/`` so runs, rankers and reports of
    different datasets never mix.
    """
    base_workdir = Path(os.environ.get("WORKBENCH_WORKDIR", "artifacts"))
    chosen = _active_dataset().get("root")
    if chosen is None:
        data_root, workdir = Path(os.environ.get("WORKBENCH_DATA", DEFAULT_DATA)), base_workdir
    else:
        key = hashlib.sha256(str(chosen).encode()).hexdigest()[:8]
        data_root, workdir = chosen, base_workdir / "datasets" / f"{chosen.name}-{key}"
    condition = active_condition()
    return data_root, workdir / "conditions" / condition if condition else workdir


def active_condition() -> str:
    """The attribute that currently defines similarity ("" = the label folders)."""
    return _active_dataset().get("condition", "")


def conditions() -> list[str]:
    """Attributes the active dataset offers as conditions (columns of its ``attributes.csv``)."""
    import csv

    data_root = _active_dataset().get("root") or Path(os.environ.get("WORKBENCH_DATA", DEFAULT_DATA))
    path = data_root / ATTRIBUTES_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return [column for column in header if column != "path"]


def use_condition(condition: str) -> None:
    """Define similarity by an attribute of the dataset ("" = the label folders), for every page."""
    if condition and condition not in conditions():
        raise DatasetError(f"no attribute {condition!r} in this dataset's {ATTRIBUTES_FILE}")
    _active_dataset()["condition"] = condition


def use_dataset(folder: str) -> Path:
    """Switch the app (every session of this server) to another folder-per-label dataset.

    Raises:
        DatasetError: The folder does not exist or has no label sub-folders.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if not any(child.is_dir() and not child.name.startswith((".", "_")) for child in root.iterdir()):
        raise DatasetError(f"{root}: no label folders (expected {root}/<label>/<image files>)")
    _active_dataset()["root"] = root
    _active_dataset()["condition"] = ""
    return root


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: object = None


@st.cache_resource(show_spinner=False)
def _slot(*key: str) -> _Slot:
    # The cache holds a slot rather than the value: building it draws a progress bar, and Streamlit
    # would replay that drawing on every cache hit if it happened inside a cached function.
    return _Slot()


def _cached(key: tuple[str, ...], build: Callable[[], object]) -> object:
    slot = _slot(*key)
    with slot.lock:
        if slot.value is None:
            slot.value = build()
        return slot.value


def prepared_data(
    data_root: Path | None = None, workdir: Path | None = None, condition: str | None = None
) -> PreparedData:
    """The dataset with its split and comparative sets, prepared on first use (then read from disk)."""
    if data_root is None or workdir is None:
        data_root, workdir = settings()
    condition = active_condition() if condition is None else condition

    def build() -> PreparedData:
        try:
            prepared = load_prepared(workdir)
            if prepared.config.root.resolve() == data_root.resolve() and prepared.config.condition == condition:
                return prepared
        except ArtifactError:  # missing or unreadable: prepare again
            pass
        prepared = prepare(DataConfig(root=data_root, condition=condition))
        save_prepared(prepared, workdir)
        return prepared

    return _cached(("prepared", str(data_root.resolve()), str(workdir.resolve()), condition), build)


def featurizer_choices() -> list[str]:
    """``"pretrained"`` plus every completed fine-tuning run in the workdir, newest first."""
    _, workdir = settings()
    runs = []
    for manifest_path in (workdir / "runs").glob("*/manifest.json"):
        try:
            if read_manifest(manifest_path.parent).get("status") == "complete":
                runs.append(manifest_path.parent)
        except ArtifactError:
            continue
    runs.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return [PRETRAINED, *(path.name for path in runs)]


def workspace(
    choice: str = PRETRAINED,
    progress: ProgressFn | None = None,
    data_root: Path | None = None,
    workdir: Path | None = None,
    condition: str | None = None,
) -> Workspace:
    """The workspace of a featurizer choice; built on first use, featurizing with ``progress``."""
    if data_root is None or workdir is None:
        data_root, workdir = settings()
    prepared = prepared_data(data_root, workdir, condition)

    def build() -> Workspace:
        exported = onnx_path(workdir, choice)
        if exported.is_file():  # same features as PyTorch (tested), several times faster per query
            from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

            featurizer: Featurizer = OnnxFeaturizer(exported, OrtConfig(allow_spinning=False))
        else:
            featurizer = build_featurizer(
                FeaturizerConfig(), None if choice == PRETRAINED else run_path(workdir, choice)
            )
        embeddings = featurize(prepared, featurizer, workdir, progress=progress)
        return Workspace(prepared, featurizer, embeddings, workdir, choice)

    return _cached(("workspace", str(data_root.resolve()), str(workdir.resolve()), choice), build)


def gallery_names(ws: Workspace) -> list[str]:
    """Display names of the gallery images (paths relative to the dataset, safe to print)."""
    return [printable(str(record.path.relative_to(ws.dataset.root))) for record in ws.dataset.records]


def ranker_choices(ws: Workspace) -> list[str]:
    """Rankers usable with this workspace: the plain metrics, plus ``svm`` once one is fitted."""
    learned = [
        name
        for name, path in (("svm", svm_path), ("siamese", siamese_path))
        if path(ws.workdir, ws.featurizer.fingerprint).exists()
    ]
    return [*PLAIN_RANKERS[:2], *learned, *PLAIN_RANKERS[2:]]


def search(ws: Workspace, image_bytes: bytes, name: str, ranker: str, k: int) -> SearchResult:
    """Top-``k`` gallery images for uploaded bytes, with the time the query took.

    Raises:
        ImageLoadError: The upload is not a usable image; the message names it.
    """
    start = time.perf_counter()
    image = decode_image(image_bytes, name=name)
    [model] = load_rankers([ranker], ws.workdir, ws.featurizer.fingerprint)
    hits = search_image(image, ws.featurizer, ws.dataset, ws.embeddings, model, k)
    return SearchResult(hits, time.perf_counter() - start)


@st.cache_data(show_spinner=False)
def _evaluation(
    fingerprint: str,
    choice: str,
    workdir: str,
    rankers: tuple[str, ...],
    split: str,
    ranker_versions: tuple[float, ...],
) -> list[EvaluationResult]:
    # workdir identifies dataset and condition; ranker_versions (file times) invalidate retrained rankers
    ws = workspace(choice)
    seed = ws.prepared.config.seed
    return evaluate_rankers(
        ws.prepared, ws.embeddings, load_rankers(list(rankers), ws.workdir, fingerprint, seed), seed, split
    )


def evaluation(ws: Workspace, rankers: tuple[str, ...], split: str = "test") -> list[EvaluationResult]:
    """Evaluation of the given rankers on the workspace's comparative sets (cached)."""
    saved = (path(ws.workdir, ws.featurizer.fingerprint) for path in (svm_path, siamese_path))
    versions = tuple(file.stat().st_mtime if file.exists() else 0.0 for file in saved)
    return _evaluation(ws.featurizer.fingerprint, ws.choice, str(ws.workdir.resolve()), tuple(rankers), split, versions)


def summary_rows(results: list[EvaluationResult]) -> list[dict[str, object]]:
    """One row per ranker for a table: mean/median rank and top-1/top-5 with 95 % CIs."""
    return [
        {
            "ranker": result.ranker,
            "queries": result.n_queries,
            "mean rank": str(result.mean_rank),
            "median rank": str(result.median_rank),
            "top-1": str(result.top1),
            "top-5": str(result.top5),
        }
        for result in results
    ]


def category_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """Per-label metrics of one ranker, as compact table rows."""
    return [
        {
            "label": c.label,
            "queries": c.n_queries,
            "mean rank": round(c.mean_rank, 2),
            "median": c.median_rank,
            "top-1": f"{c.top1:.0%}",
            "top-5": f"{c.top5:.0%}",
        }
        for c in result.per_category
    ]


@dataclass(frozen=True)
class QualitativeRow:
    """One query with the reference its ranker put first and its true positive."""

    query: ImageRecord
    best: ImageRecord
    positive: ImageRecord
    rank: int


def qualitative_rows(
    ws: Workspace, result: EvaluationResult, category: str | None = None, failures_only: bool = False, limit: int = 24
) -> list[QualitativeRow]:
    """Queries of an evaluation, optionally of one label and/or only those whose positive was not first."""
    records = ws.dataset.records
    rows = []
    for query, best, positive, rank, label in zip(
        result.queries, result.best_references, result.positives, result.ranks, result.query_labels, strict=False
    ):
        if (category and label != category) or (failures_only and rank == 1):
            continue
        rows.append(QualitativeRow(records[query], records[best], records[positive], int(rank)))
    return rows[:limit]


@dataclass(frozen=True)
class DatasetSummary:
    """What the dataset page shows."""

    root: Path
    counts: dict[str, tuple[int, int]]
    samples: dict[str, list[Path]]
    skipped: list[str]
    leaks: list[str]
    n_test_queries: int
    n_negatives: int


def dataset_summary(samples_per_label: int = 6) -> DatasetSummary:
    """Label counts by split, a few sample images per label, and what the scan skipped."""
    prepared = prepared_data()
    labels = prepared.dataset.label_array
    counts = {
        label: (int((labels[prepared.split.train] == label).sum()), int((labels[prepared.split.test] == label).sum()))
        for label in prepared.dataset.labels
    }
    samples = {
        label: [r.path for r in prepared.dataset.records if r.label == label][:samples_per_label] for label in counts
    }
    return DatasetSummary(
        prepared.dataset.root,
        counts,
        samples,
        [printable(item.reason) for item in prepared.skipped],
        [
            f"{printable(str(leak.test_path))} (test) ~ {printable(str(leak.train_path))} (train), distance {leak.distance}"
            for leak in prepared.leaks
        ],
        len(prepared.test_sets),
        prepared.test_sets.n_negatives,
    )


def run_history(run: str) -> list[EpochMetrics]:
    """Per-epoch metrics of a fine-tuning run (empty for the pretrained model)."""
    if run == PRETRAINED:
        return []
    manifest = read_manifest(run_path(settings()[1], run))
    return [EpochMetrics(**metrics) for metrics in manifest.get("history", [])]


@dataclass
class TrainingJob:
    """A fine-tune + featurize + SVM fit running in a background thread; pages poll its fields."""

    run: str
    config: TrainConfig
    svm_config: SVMConfig
    data_root: Path
    workdir: Path
    condition: str = ""
    phase: str = "starting"
    epoch: int = 0
    step: int = 0
    steps: int = 1
    history: list[EpochMetrics] = field(default_factory=list)
    pair_accuracy: tuple[float, float] | None = None
    error: str | None = None
    done: bool = False

    @property
    def fraction(self) -> float:
        """Share of the fine-tuning steps done."""
        if self.done:
            return 1.0
        total = max(1, self.config.epochs * self.steps)
        return min(1.0, ((max(self.epoch, 1) - 1) * self.steps + self.step) / total)

    def _on_progress(self, event: TrainProgress) -> None:
        self.epoch, self.step, self.steps = event.epoch, event.step, event.steps
        if event.metrics is not None:
            self.history.append(event.metrics)

    def _run(self) -> None:
        try:
            prepared = prepared_data(self.data_root, self.workdir, self.condition)
            self.phase = "fine-tuning"
            forget_export(self.workdir, self.run)
            fine_tune(
                prepared.dataset.records,
                prepared.split,
                self.config,
                run_path(self.workdir, self.run),
                self._on_progress,
            )
            self.phase = "featurizing with the fine-tuned model"
            ws = workspace(self.run, None, self.data_root, self.workdir, self.condition)
            self.phase = "fitting the SVM ranker"
            _, train_pairs, test_pairs = fit_svm(
                prepared, ws.embeddings, self.svm_config, ws.featurizer.fingerprint, self.workdir
            )
            self.pair_accuracy = (train_pairs.balanced_accuracy, test_pairs.balanced_accuracy)
            self.phase = "done"
        except Exception as err:  # shown on the page; the run folder keeps its last finished epoch
            self.error = f"{type(err).__name__}: {err}"
            self.phase = "failed"
        finally:
            self.done = True


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, TrainingJob]:
    return {}


def start_training(run: str, config: TrainConfig, svm_config: SVMConfig) -> TrainingJob:
    """Start (or return the running) job for ``run``.

    Raises:
        ArtifactError: ``run`` is not a plain folder name.
    """
    data_root, workdir = settings()
    run_path(workdir, run)  # validates the name
    jobs = _jobs()
    job = jobs.get(run)
    if job is None or job.done:
        job = TrainingJob(run, config, svm_config, data_root, workdir, active_condition())
        jobs[run] = job
        threading.Thread(target=job._run, name=f"train-{run}", daemon=True).start()
    return job


def training_jobs() -> list[TrainingJob]:
    """Jobs started in this server process, newest last."""
    return list(_jobs().values())


def fit_svm_for(ws: Workspace, svm_config: SVMConfig) -> tuple[float, float]:
    """Fit and save the SVM ranker for a workspace; returns balanced pair accuracy (train, test)."""
    _, train_pairs, test_pairs = fit_svm(ws.prepared, ws.embeddings, svm_config, ws.featurizer.fingerprint, ws.workdir)
    return train_pairs.balanced_accuracy, test_pairs.balanced_accuracy


@dataclass(frozen=True)
class Explanation:
    """Heatmaps of what drives the similarity of a query and one result."""

    similarity: float
    query_overlay: object
    result_overlay: object


def _torch_backbone(ws: Workspace):
    if hasattr(ws.featurizer, "backbone"):
        return ws.featurizer.backbone
    data_root, workdir = settings()

    def build():
        run_dir = None if ws.choice == PRETRAINED else run_path(workdir, ws.choice)
        return build_featurizer(FeaturizerConfig(), run_dir).backbone

    return _cached(("backbone", str(data_root.resolve()), str(workdir.resolve()), ws.choice), build)


def explain(ws: Workspace, image_bytes: bytes, name: str, record: ImageRecord) -> Explanation:
    """Where the query and a gallery image agree: exact per-region shares of their cosine similarity.

    Raises:
        ImageLoadError: The query is not a usable image.
    """
    from core.explain import overlay, similarity_maps
    from core.images import load_image

    maps = similarity_maps(_torch_backbone(ws), decode_image(image_bytes, name=name), load_image(record.path))
    return Explanation(
        maps.similarity, overlay(maps.query_pixels, maps.query_map), overlay(maps.result_pixels, maps.result_map)
    )


@dataclass(frozen=True)
class EmbeddingMap:
    """Gallery coordinates on a 2-D map, with the projection to place queries."""

    projection: object
    labels: list[str]
    names: list[str]


def embedding_projection(ws: Workspace, method: str = "pca") -> EmbeddingMap:
    """The gallery's 2-D map (cached per featurizer and method; seeded by the dataset seed)."""
    from core.projection import project_2d

    def build() -> EmbeddingMap:
        projection = project_2d(ws.embeddings, np.random.default_rng(ws.prepared.config.seed), method)
        return EmbeddingMap(projection, [r.label for r in ws.dataset.records], gallery_names(ws))

    return _cached(("map", ws.featurizer.fingerprint, str(ws.dataset.root), method), build)


def place_on_map(ws: Workspace, mapping: EmbeddingMap, image_bytes: bytes, name: str) -> np.ndarray:
    """Coordinates of an uploaded image on the gallery's map."""
    return mapping.projection.transform(ws.featurizer.embed([decode_image(image_bytes, name=name)]))[0]
