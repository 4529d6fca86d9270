"""Workflows over a workspace, shared by the CLI and the app: fit learned rankers (and keep the cheap ones ready),
train a run end to end, full-gallery retrieval, likely label errors, the experiment report, near-duplicate
removal, ONNX export and the saved vector index.

Each takes a :class:`~workbench.workspace.WorkspaceSpec` or an opened
:class:`~workbench.workspace.Workspace`, does its work through ``core`` and ``export``, and returns a result
dataclass; rendering (tables, progress bars, Streamlit widgets) stays in the front ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.artifacts import atomic_save_npy, atomic_write_json, environment_versions
from core.data import ComparativeSets
from core.errors import ArtifactError, WorkbenchError
from core.evaluate import MAX_K, MAX_QUERIES, EvaluationResult, RetrievalResult, evaluate_retrieval, sample_queries
from core.featurize import ProgressFn
from core.knn import KnnGraph, cached_knn_graph
from core.label_errors import LabelSuspect, likely_label_errors
from core.looks import MAX_COPIES
from core.pipeline import PreparedData
from core.rankers import LearnedRanker, Ranker, list_rankers, ranker_spec
from core.workdir import PRETRAINED
from workbench.workspace import Workspace, WorkspaceSpec, fitted_ranker_path, open_workspace, prepared_data

if TYPE_CHECKING:
    from core.data import ImageRecord
    from core.dedup import DedupConfig, DedupReport, LeakReport
    from core.index import IndexHits, VectorIndex
    from core.looks import CopyResult
    from core.svm import PairAccuracy
    from core.train import TrainProgress, TrainResult
    from export.onnx_export import ExportResult

log = logging.getLogger(__name__)

#: Version of the evaluation report and the ``experiment`` report (the run manifest has its own, ``SCHEMA_VERSION``).
#: 2: every interval names its ``method`` (``wilson`` for proportions, ``wilson-mover`` for a balanced accuracy,
#: ``bootstrap`` for other means), and ``svm_pairs`` holds ``accuracy`` and ``balanced_accuracy`` as
#: ``{value, low, high, method}`` with ``n_pairs`` and ``n_same``.
REPORT_SCHEMA_VERSION = 2


class RankerFitError(WorkbenchError):
    """A learned ranker could not be fitted on this data (too few or degenerate training images)."""


@dataclass(frozen=True)
class FittedRanker:
    """A learned ranker fitted and saved for one featurizer."""

    name: str
    path: Path
    seconds: float
    train_pairs: PairAccuracy | None = None
    test_pairs: PairAccuracy | None = None


def training_view(prepared: PreparedData, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, ComparativeSets]:
    """The training split only: its embeddings, labels, and the training comparative sets re-indexed into them.

    A learned ranker never sees a test image, whatever it does with the rows it is given (the projection learns
    from every row, the SVM from the sets' pairs).
    """
    train = np.sort(prepared.split.train)
    sets = prepared.train_sets
    local = ComparativeSets(np.searchsorted(train, sets.queries), np.searchsorted(train, sets.references))
    if not (
        np.array_equal(train[local.queries], sets.queries) and np.array_equal(train[local.references], sets.references)
    ):
        raise WorkbenchError("training comparative sets reach outside the training split")  # never, by construction
    return embeddings[train], prepared.dataset.label_array[train], local


def fit_ranker(ws: Workspace, name: str, fitted: LearnedRanker | None = None) -> FittedRanker:
    """Fit the learned ranker ``name`` on the workspace's training split and save it for its featurizer.

    Its settings come from the config section of the same name when there is one (``[svm]``). A ranker ``fitted``
    elsewhere on part of the training split (``tune`` keeps the one it validated) is saved as it is.

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
    ranker = fitted or (spec.build(section) if section is not None else spec.build())
    if not isinstance(ranker, LearnedRanker):
        raise WorkbenchError(f"ranker {name!r} cannot be fitted and saved")
    prepared = ws.prepared
    try:
        if fitted is None:
            ranker.fit(*training_view(prepared, ws.embeddings))
    except ValueError as err:  # numpy's LinAlgError included: too few or degenerate training images
        raise RankerFitError(
            f"{name} ranker cannot be fitted on {ws.layout.root} ({len(prepared.split.train)} training images): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    train_pairs = test_pairs = None
    pair_accuracy = getattr(ranker, "pair_accuracy", None)
    if pair_accuracy is not None:
        train_pairs, test_pairs = (
            pair_accuracy(ws.embeddings, prepared.train_sets),
            pair_accuracy(ws.embeddings, prepared.test_sets),
        )
    metadata: dict[str, Any] = {
        "featurizer": ws.fingerprint,
        "condition": ws.spec.config.data.condition,
        "data": data_signature(prepared),
    }
    if train_pairs is not None and test_pairs is not None:
        metadata |= {"train_pairs": dataclasses.asdict(train_pairs), "test_pairs": dataclasses.asdict(test_pairs)}
    path = ws.ranker_path(name)
    ranker.save(path, metadata)
    atomic_save_npy(fitted_on_path(path), content_hashes(prepared))
    seconds = time.perf_counter() - start
    log.debug("fitted %s ranker for %s in %.1f s: %s", name, ws.fingerprint, seconds, path)  # the doors report it
    return FittedRanker(name, path, seconds, train_pairs, test_pairs)


def content_hashes(prepared: PreparedData) -> np.ndarray:
    """The content hashes of a prepared dataset's images, sorted (``S64``): what a learned ranker saw."""
    return np.sort(np.array(prepared.dataset.sha256s, dtype="S64"))


def fitted_on_path(ranker_path: Path) -> Path:
    """Where the content hashes of the images a learned ranker was fitted on are kept, beside it."""
    return ranker_path.with_name(ranker_path.stem + ".fitted-on.npy")


#: Learned rankers fitted whenever they are missing: the registry's quick ones (on the 275-image demo, 2 busy CPU
#: cores: svm 9 s, projection 34-49 s).
READY_RANKERS: tuple[str, ...] = tuple(list_rankers(learned=True, quick_fit=True))

#: ``progress(done, total, name)``: ``name`` is the ranker about to be fitted ("" once all are done).
FitProgressFn = Callable[[int, int, str], None]


def data_signature(prepared: PreparedData) -> str:
    """A hash of what a learned ranker learns from: every image's content and label (the prepared data's
    ``source``: the folder's catalogue and, under a condition, the attributes file), the split and the training
    split's comparative sets. It changes when images are added, removed, relabelled or split differently."""
    digest = hashlib.sha256()
    if prepared.source:
        digest.update(f"source:{prepared.source}".encode())
    else:
        dataset = prepared.dataset
        pairs = zip(dataset.sha256s, dataset.label_array.tolist(), strict=True)
        digest.update(json.dumps([[sha256, label] for sha256, label in pairs]).encode())
    for array in (prepared.split.train, prepared.train_sets.queries, prepared.train_sets.references):
        contiguous = np.ascontiguousarray(array, dtype=np.int64)
        digest.update(str(contiguous.shape).encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()[:16]


def saved_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata a learned ranker was saved with (``header.metadata`` of its ``.npz``); None when unreadable."""
    from core.artifacts import read_npz_header

    try:  # the one list of damaged-npz errors (a truncated file raises BadZipFile)
        metadata = read_npz_header(path, "learned ranker", "refit it").get("metadata")
    except ArtifactError:
        return None
    return metadata if isinstance(metadata, dict) else None


def stale_rankers(ws: Workspace, names: Sequence[str] = READY_RANKERS) -> list[str]:
    """The learned rankers among ``names`` that need a fit for this workspace: never fitted for its featurizer,
    unreadable (an older schema too), or fitted on other data (another image set, labels or split)."""
    signature = data_signature(ws.prepared)
    stale = []
    for name in names:
        path = ws.ranker_path(name)
        metadata = saved_metadata(path)
        if metadata is None or metadata.get("featurizer") != ws.fingerprint or metadata.get("data") != signature:
            stale.append(name)
            continue
        load = ranker_spec(name).load
        try:
            if load is not None:
                load(path)
        except WorkbenchError:
            stale.append(name)
    return stale


@dataclass(frozen=True)
class SinceFit:
    """How the dataset differs from what the learned rankers of a featurizer were last fitted on.

    Attributes:
        new: Images (by content) in the dataset now that the last fit did not see.
        removed: Images the last fit saw that are gone.
        stale: Learned rankers that need a fit (:func:`stale_rankers`).
        fitted: Whether any learned ranker was ever fitted for this featurizer.
    """

    new: int
    removed: int
    stale: tuple[str, ...]
    fitted: bool

    def line(self) -> str | None:
        """The one line every front end shows, e.g. ``3 new, 1 removed since the last fit: svm, projection are
        stale; run `python -m workbench fit --missing` (the app refits them on its pages)``; None when current."""
        if not self.fitted or not (self.new or self.removed or self.stale):
            return None
        changed = f"{self.new} new, {self.removed} removed since the last fit"
        if not self.stale:
            return changed
        return (
            f"{changed}: {', '.join(self.stale)} {'is' if len(self.stale) == 1 else 'are'} stale; run "
            "`python -m workbench fit --missing` (the app refits them on its pages)"
        )


def since_fit(ws: Workspace, names: Sequence[str] = READY_RANKERS) -> SinceFit:
    """What changed in the dataset since the newest fit of the learned rankers ``names`` for this featurizer."""
    fitted = any(ws.ranker_path(name).is_file() for name in names)
    stale = tuple(stale_rankers(ws, names)) if fitted else ()
    if not stale:  # every one was fitted on these very data: nothing changed since
        return SinceFit(0, 0, (), fitted)
    existing = [path for path in (fitted_on_path(ws.ranker_path(name)) for name in names) if path.is_file()]
    if not existing:
        return SinceFit(0, 0, stale, fitted)
    newest = max(existing, key=lambda path: path.stat().st_mtime_ns)
    try:
        seen = np.load(newest, allow_pickle=False)
        if seen.ndim != 1 or seen.dtype != np.dtype("S64"):
            raise ValueError(f"{seen.dtype} array of shape {seen.shape}")
    except (OSError, ValueError, EOFError) as err:
        log.warning("%s: unreadable (%s); counting every image as new", newest, err)
        seen = np.zeros(0, "S64")
    now = content_hashes(ws.prepared)
    new = int((~np.isin(now, seen, assume_unique=True)).sum())
    removed = int((~np.isin(seen, now, assume_unique=True)).sum())
    return SinceFit(new, removed, stale, True)


@dataclass(frozen=True)
class LearnedReady:
    """What :func:`ensure_learned` did.

    Attributes:
        fitted: Rankers fitted now.
        current: Rankers already fitted for this featurizer and data, left alone.
        failed: ``(name, reason)`` of rankers this data cannot fit (the others are still fitted).
    """

    fitted: tuple[FittedRanker, ...]
    current: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = ()


def ensure_learned(
    ws: Workspace, names: Sequence[str] = READY_RANKERS, progress: FitProgressFn | None = None
) -> LearnedReady:
    """Fit the learned rankers ``names`` that are missing or stale for the workspace (see :func:`stale_rankers`).

    Learned rankers are saved per featurizer fingerprint under the workdir of the dataset and condition, and
    tagged with :func:`data_signature`, so a new featurizer or changed data gets a refit here while a current
    ranker is left alone. A ranker this data cannot fit (:class:`RankerFitError`) is logged and listed in
    ``failed``; the others are fitted all the same, so the plain rankers and the rest stay usable.

    Raises:
        WorkbenchError: A name that is not a learned ranker of the registry.
    """
    for name in names:
        try:
            learned = ranker_spec(name).learned
        except ValueError as err:
            raise WorkbenchError(str(err)) from None
        if not learned:
            raise WorkbenchError(
                f"ranker {name!r} has nothing to learn; learned rankers: {', '.join(list_rankers(True))}"
            )
    todo = stale_rankers(ws, names)
    fitted, failed = [], []
    for done, name in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), name)
        try:
            fitted.append(fit_ranker(ws, name))
        except RankerFitError as err:
            log.warning("%s", err)
            failed.append((name, str(err)))
    if progress is not None:
        progress(len(todo), len(todo), "")
    return LearnedReady(tuple(fitted), tuple(name for name in names if name not in todo), tuple(failed))


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
    if spec.config.train.epochs == 0:
        raise WorkbenchError(
            "0 epochs would keep the pretrained weights: that model is the 'pretrained' featurizer already"
        )
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
    """One featurizer of an experiment: its rankers' results (comparative sets and full gallery) and the SVM's
    pair accuracy."""

    name: str
    fingerprint: str
    results: tuple[EvaluationResult, ...]
    svm: FittedRanker
    retrieval: tuple[RetrievalResult, ...] = ()


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
        retrieved = retrieval(ws, names)
        save_report(ws, results, retrieved)
        sections.append(ExperimentSection(name, ws.fingerprint, tuple(results), svm, tuple(retrieved)))
    path = spec.layout.experiment_report(run)
    atomic_write_json(
        path,
        {
            "schema_version": REPORT_SCHEMA_VERSION,
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
                    "retrieval": {result.ranker: result.to_dict() for result in section.retrieval},
                }
                for section in sections
            },
        },
    )
    return ExperimentReport(run, tuple(sections), path)


def in_sample_rankers(names: Sequence[str], split: str) -> list[str]:
    """The learned rankers among ``names`` whose figures on ``split`` are in-sample: they were fitted on the train
    split, so evaluating them there ranks images (and labels) they learned from."""
    return [name for name in names if split == "train" and ranker_spec(name).learned]


def in_sample_warning(names: Sequence[str], split: str) -> str | None:
    """The one warning every door shows beside train-split figures of learned rankers; None when there are none.

    Raises:
        ValueError: An unknown ranker name.
    """
    rankers = in_sample_rankers(names, split)
    if not rankers:
        return None
    one = len(rankers) == 1
    subject = f"{', '.join(rankers)} {'was' if one else 'were'}"
    return (
        f"In-sample: {subject} fitted on the train split, so {'its' if one else 'their'} train-split figures rank "
        "images and labels already learned and overstate how new photos are ranked; judge learned rankers on the "
        "test split."
    )


def result_summary(result: EvaluationResult) -> dict[str, Any]:
    """An evaluation result without its per-query arrays (for JSON summaries)."""
    return {key: value for key, value in result.to_dict().items() if key not in ("ranks", "query_labels")}


def _split_queries(ws: Workspace, split: str) -> np.ndarray:
    if split not in ("test", "train"):
        raise WorkbenchError(f"split must be 'test' or 'train', got {split!r}")
    return ws.prepared.split.test if split == "test" else ws.prepared.split.train


def retrieval(
    ws: Workspace,
    names: Sequence[str | Ranker],
    split: str = "test",
    ks: Sequence[int] = (1, 5, 10),
    max_queries: int | None = MAX_QUERIES,
    max_k: int | None = MAX_K,
) -> list[RetrievalResult]:
    """Full-gallery retrieval per ranker: images of ``split`` query the whole gallery, itself excluded.

    Recall@k, precision@k, R-precision, MAP@R and MRR, overall, class-averaged and per label
    (:func:`core.evaluate.evaluate_retrieval`); queries whose label has no other image are dropped and counted.
    A split of more than ``max_queries`` images is sampled (stratified by label, seeded with the workspace's
    seed, the same sample for every ranker); at most ``max_k`` results are retrieved per query, and a query with
    more same-label images has lower-bound MAP@R and R-precision. Each result's ``note`` says so. None lifts
    either limit. Every metric comes with a 95 % interval over the queries (``intervals``: Wilson score for recall@k,
    bootstrap for the others, :func:`core.evaluate.metric_interval`). A ranker is
    named (the registry's, loaded for the workspace) or given as a model (the fusion of attribute rankers).

    Raises:
        WorkbenchError: Unknown or unfitted ranker, a bad split, or a gallery too small for the cut-offs.
    """
    queries = _split_queries(ws, split)
    labels = ws.dataset.label_array
    pool = 0
    if max_queries is not None and len(queries) > max_queries:
        pool = len(queries)
        queries = sample_queries(queries, labels, max_queries, np.random.default_rng(ws.seed))
        log.info("full-gallery retrieval: %d of %d %s queries sampled", len(queries), pool, split)
    usable = tuple(k for k in ks if k < len(labels))  # a small gallery cannot serve every cut-off
    if len(usable) < len(ks):
        log.info("gallery of %d images: recall@k and precision@k for k in %s only", len(labels), usable)
    ks = usable or (len(labels) - 1,)
    results = []
    for name in names:
        model = ws.ranker(name) if isinstance(name, str) else name
        try:
            result = evaluate_retrieval(
                model, ws.embeddings, labels, queries, ks, max_k=max_k, rng=np.random.default_rng(ws.seed)
            )
        except ValueError as err:
            raise WorkbenchError(f"full-gallery retrieval of {ws.layout.root}: {err}") from err
        results.append(dataclasses.replace(result, query_pool=pool))
    return results


#: Copies embedded per batch by :func:`looks` (bounds the memory of decoded images).
COPY_BATCH = 32
#: Originals are decoded at about this side at least (JPEG draft): a copy keeps ~0.6 of it, above any input size.
COPY_DRAFT = 512


def copy_embeddings(
    ws: Workspace, split: str = "test", max_copies: int | None = MAX_COPIES, progress: ProgressFn | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embeddings of seeded edited copies (:mod:`core.looks`) of ``split``'s photos, at most ``max_copies``.

    The photos are a stratified sample seeded with the workspace's seed when the split holds more; each copy is
    drawn from ``(seed, record index)``, so a photo always gets the same copy. Computed once per workspace, split
    and sample size in a process.

    Returns:
        ``(copies float32[Q, D], originals int64[Q] record indices, query_pool)`` with ``query_pool`` the size of
        the split when it was sampled, else 0.

    Raises:
        WorkbenchError: A bad split, or an original that can no longer be read.
    """
    key = (split, max_copies)
    if key in ws.copies:
        return ws.copies[key]
    originals = _split_queries(ws, split)
    pool = 0
    if max_copies is not None and len(originals) > max_copies:
        pool = len(originals)
        originals = sample_queries(originals, ws.dataset.label_array, max_copies, np.random.default_rng(ws.seed))
    started = time.perf_counter()
    copies = embed_copies(ws, originals, progress)
    log.info("look metric: %d %s copies embedded in %.1f s", len(copies), split, time.perf_counter() - started)
    ws.copies[key] = (copies, originals, pool)
    return ws.copies[key]


def embed_copies(ws: Workspace, originals: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
    """Embeddings ``float32[Q, D]`` of the seeded edited copy (:mod:`core.looks`) of each of ``originals`` (record
    indices), drawn from ``(seed, record index)``: a photo gets the same copy wherever it is evaluated (``tune``
    copies validation photos with it).

    Raises:
        WorkbenchError: An original that can no longer be read.
    """
    from core.errors import ImageLoadError
    from core.images import load_image
    from core.looks import copy_rng, make_copy

    parts = []
    for start in range(0, len(originals), COPY_BATCH):
        images = []
        for row in originals[start : start + COPY_BATCH]:
            path = ws.dataset.record(int(row)).path
            try:
                image = load_image(path, draft_size=COPY_DRAFT)
            except ImageLoadError as err:
                raise WorkbenchError(f"{path}: cannot make its copy for the look metric ({err})") from err
            images.append(make_copy(image, copy_rng(ws.seed, int(row))))
        parts.append(ws.embed(images))
        if progress is not None:
            progress(min(start + COPY_BATCH, len(originals)), len(originals))
    return np.concatenate(parts) if parts else np.zeros((0, ws.embeddings.shape[1]), np.float32)


def looks(
    ws: Workspace, names: Sequence[str], split: str = "test", max_copies: int | None = MAX_COPIES
) -> list[CopyResult]:
    """The look metric per ranker: each copy of a ``split`` photo searches the whole gallery for its original.

    Recall@1 (Wilson score interval) and mean rank of the original (bootstrap interval), 95 %
    (:func:`core.looks.copy_retrieval`); byte-identical twins of an original never count against it. The copies are
    shared by every ranker.

    Raises:
        WorkbenchError: Unknown or unfitted ranker, a bad split, or an unreadable original.
    """
    from core.looks import copy_retrieval

    copies, originals, pool = copy_embeddings(ws, split, max_copies)
    if not len(copies):
        raise WorkbenchError(f"the {split} split of {ws.dataset.root} has no photos to copy")
    content = np.asarray(ws.dataset.sha256s)
    return [
        copy_retrieval(ws.ranker(name), copies, ws.embeddings, originals, np.random.default_rng(ws.seed), content, pool)
        for name in names
    ]


def near_duplicate_pairs(
    ws: Workspace, split: str = "test", max_pairs: int | None = MAX_COPIES
) -> tuple[np.ndarray, np.ndarray, int]:
    """Photos of ``split`` that have a near-duplicate elsewhere in the gallery, each with its closest one.

    Near-duplicates as ``dedup`` finds them by default (difference hashes within
    :attr:`core.dedup.DedupConfig.hash_threshold` bits, read from the folder's catalogue; byte-identical files are
    one photo already). At most ``max_pairs`` (a seeded sample).

    Returns:
        ``(queries, partners, pool)``: record indices of each query photo and its near-duplicate, and the number of
        pairs sampled from (0 when none was left out). Empty without a catalogue.
    """
    from core.catalogue import load_catalogue
    from core.dedup import DedupConfig, hash_neighbours

    empty = np.zeros(0, np.int64)
    catalogue = load_catalogue(ws.layout.catalogue)
    if catalogue is None:
        return empty, empty, 0
    known = np.asarray(catalogue.sha256, dtype=str)
    order = np.argsort(known)
    mine = np.asarray(ws.dataset.sha256s, dtype=str)
    at = np.minimum(np.searchsorted(known[order], mine), len(known) - 1)
    found = known[order][at] == mine  # every photo of the dataset, unless the catalogue is of another look
    hashes = np.asarray(catalogue.dhash)[order[at]]
    rows = _split_queries(ws, split)
    rows = rows[found[rows]]
    (query, reference, _), _ = hash_neighbours(hashes[rows], hashes, DedupConfig().hash_threshold, k=2)
    partner = reference
    keep = found[partner] & (partner != rows[query])  # the photo itself is its own nearest hash
    query, partner = query[keep], partner[keep]
    if not len(query):
        return empty, empty, 0
    first = np.r_[True, query[1:] != query[:-1]]  # the closest other photo per query (sorted by closeness)
    queries, partners = rows[query[first]], partner[first]
    pool = 0
    if max_pairs is not None and len(queries) > max_pairs:
        pool = len(queries)
        keep = np.sort(np.random.default_rng(ws.seed).choice(len(queries), max_pairs, replace=False))
        queries, partners = queries[keep], partners[keep]
    return queries.astype(np.int64), partners.astype(np.int64), pool


def near_duplicate_looks(ws: Workspace, names: Sequence[str], split: str = "test") -> list[CopyResult]:
    """The look metric on the data's own near-duplicates: each photo of ``split`` with one
    (:func:`near_duplicate_pairs`) searches the gallery, itself left out; does its near-duplicate come first?
    Empty when the data have no near-duplicate pairs.

    Raises:
        WorkbenchError: Unknown or unfitted ranker.
    """
    from core.looks import copy_retrieval

    queries, partners, pool = near_duplicate_pairs(ws, split)
    if not len(queries):
        return []
    content = np.asarray(ws.dataset.sha256s)
    copies = np.asarray(ws.embeddings[queries], np.float32)
    return [
        copy_retrieval(
            ws.ranker(name), copies, ws.embeddings, partners, np.random.default_rng(ws.seed), content, pool, queries
        )
        for name in names
    ]


def knn(ws: Workspace, k: int, ranker: str = "cosine") -> KnnGraph:
    """The workspace's k-NN graph by ``ranker`` (each image's ``k`` nearest other images, best first).

    Built once per featurizer, ranker (and its fitted state) and set of images, and cached under the dataset's
    folder (``<dataset>/knn/``, shared by its conditions); a cached graph of more neighbours serves a smaller
    ``k``. Exact up to :data:`core.knn.EXACT_MAX_ROWS` images, clustered (approximate) above.

    Raises:
        WorkbenchError: Unknown or unfitted ranker.
        ValueError: Fewer than two images or ``k < 1``.
    """
    return cached_knn_graph(ws.embeddings, k, ws.layout.dataset_dir / "knn", ws.fingerprint, ws.ranker(ranker))


@dataclass(frozen=True)
class LikelyLabelError:
    """An image whose nearest neighbours mostly carry another label.

    Attributes:
        index: Record index of the image.
        record: The image (its ``label`` is the one in doubt).
        neighbour_label: The most common label among its neighbours.
        share: Share of its neighbours carrying ``neighbour_label``.
        own_share: Share of its neighbours carrying its own label.
        neighbours: Its nearest neighbours, best first.
    """

    index: int
    record: ImageRecord
    neighbour_label: str
    share: float
    own_share: float
    neighbours: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class LabelErrorReport:
    """Likely label errors of a workspace: which ranker and neighbourhood voted, and the suspects, worst first.

    ``neighbours`` says how the k-NN graph was built: ``"exact"``, or ``"clustered"`` (approximate, above
    :data:`core.knn.EXACT_MAX_ROWS` images).
    """

    ranker: str
    k: int
    min_share: float
    n_images: int
    errors: tuple[LikelyLabelError, ...]
    neighbours: str = "exact"


def label_errors(ws: Workspace, ranker: str = "cosine", k: int = 10, min_share: float = 0.5) -> LabelErrorReport:
    """Images of the whole dataset whose ``k`` nearest other images mostly carry another label, worst first.

    ``k`` is capped at the size of the smallest label minus one, so that a small label's correctly labelled
    images are not outvoted merely because the neighbourhood is larger than the label (labels of a single image
    do not count: they would cap every neighbourhood at one image).

    Raises:
        WorkbenchError: Unknown or unfitted ranker, ``k`` below 1, ``min_share`` outside (0, 1], or fewer than
            two images.
    """
    if k < 1 or not 0.0 < min_share <= 1.0:
        raise WorkbenchError(f"k must be at least 1 and min_share in (0, 1], got {k} and {min_share}")
    labels = ws.dataset.label_array
    _, counts = np.unique(labels, return_counts=True)
    counts = counts[counts >= 2]  # a label of one image has no neighbour of its own to cap anything
    k = max(1, min(k, int(counts.min()) - 1)) if len(counts) else k
    try:
        graph = knn(ws, min(k, len(labels) - 1), ranker) if len(labels) >= 2 else None
        suspects: list[LabelSuspect] = likely_label_errors(
            ws.ranker(ranker), ws.embeddings, labels, k, min_share, graph=graph
        )
    except ValueError as err:
        raise WorkbenchError(f"label errors of {ws.layout.root}: {err}") from err
    records = ws.dataset.records
    errors = tuple(
        LikelyLabelError(
            index=suspect.index,
            record=records[suspect.index],
            neighbour_label=suspect.neighbour_label,
            share=suspect.share,
            own_share=suspect.own_share,
            neighbours=tuple(records[i] for i in suspect.neighbours),
        )
        for suspect in suspects
    )
    return LabelErrorReport(ranker, k, min_share, len(records), errors, graph.method if graph else "exact")


def label_errors_summary(ws: Workspace, report: LabelErrorReport) -> dict[str, Any]:
    """A label-error report for JSON: paths relative to the dataset folder."""
    return {
        "ranker": report.ranker,
        "k": report.k,
        "min_share": report.min_share,
        "n_images": report.n_images,
        "neighbours": report.neighbours,
        "errors": [
            {
                "path": ws.relative_path(error.record),
                "label": error.record.label,
                "neighbour_label": error.neighbour_label,
                "share": error.share,
                "own_share": error.own_share,
                "neighbours": [ws.relative_path(record) for record in error.neighbours],
            }
            for error in report.errors
        ],
    }


def save_report(
    ws: Workspace,
    results: Sequence[EvaluationResult],
    retrieval_results: Sequence[RetrievalResult] | None = None,
    label_error_report: LabelErrorReport | None = None,
    split: str = "test",
    look_results: Sequence[CopyResult] | None = None,
    near_duplicate_results: Sequence[CopyResult] | None = None,
) -> Path:
    """Write the evaluation report of a featurizer (all its rankers) atomically.

    Beside the comparative-set ``results`` it holds a ``retrieval`` section per ranker (full-gallery metrics on
    ``split``), ``looks`` and ``near_duplicate_looks`` sections per ranker (:func:`looks`, :func:`near_duplicate_looks`)
    and the ``label_errors`` list; each
    is computed here when not given.
    """
    if retrieval_results is None:
        retrieval_results = retrieval(ws, [result.ranker for result in results], split)
    if look_results is None:
        look_results = looks(ws, [result.ranker for result in results], split)
    natural = near_duplicate_results
    if natural is None:
        natural = near_duplicate_looks(ws, [result.ranker for result in results], split)
    if label_error_report is None:
        label_error_report = label_errors(ws)
    path = ws.layout.report(ws.fingerprint)
    atomic_write_json(
        path,
        {
            "schema_version": REPORT_SCHEMA_VERSION,
            "featurizer": ws.fingerprint,
            "condition": ws.spec.config.data.condition,
            "versions": environment_versions(),
            "split": split,
            "in_sample": in_sample_rankers([result.ranker for result in results], split),
            "in_sample_warning": in_sample_warning([result.ranker for result in results], split),
            "results": {result.ranker: result.to_dict() for result in results},
            "retrieval": {result.ranker: result.to_dict() for result in retrieval_results},
            "looks": {result.ranker: result.to_dict() for result in look_results},
            "near_duplicate_looks": {result.ranker: result.to_dict() for result in natural},
            "label_errors": label_errors_summary(ws, label_error_report),
        },
    )
    return path


class DedupRefused(WorkbenchError):
    """``dedup --apply`` would move too many photos, or photos across labels: nothing was moved."""


@dataclass(frozen=True)
class DedupOutcome:
    """What ``dedup`` found (and moved, with ``apply``).

    Attributes:
        report: The groups and removals.
        exact_duplicates: What the scan left out as exact copies (one line each).
        moved: Where the removed files went (with ``apply``).
        reprepared: Whether ``prepared.json`` was rebuilt without them.
        path: The report file (JSON, every removal).
        leaks: The train/test leak check, when asked for.
        leaks_path: The file listing every leak pair, when asked for.
    """

    report: DedupReport
    exact_duplicates: tuple[str, ...]
    moved: tuple[Path, ...]
    reprepared: bool
    path: Path
    leaks: LeakReport | None = None
    leaks_path: Path | None = None


def _aligned_hashes(
    records: Sequence[ImageRecord], scan_records: Sequence[ImageRecord], hashes: np.ndarray
) -> np.ndarray:
    """The scan's hashes in the order of ``records`` (matched by path)."""
    row_of = {record.path: row for row, record in enumerate(scan_records)}
    missing = [record.path for record in records if record.path not in row_of]
    if missing:
        raise WorkbenchError(f"{missing[0]}: in the prepared data but not in the folder; run `prepare` again")
    return hashes[[row_of[record.path] for record in records]]


def dedup(
    spec: WorkspaceSpec,
    config: DedupConfig | None = None,
    apply: bool = False,
    max_share: float | None = None,
    allow_cross_label: bool = False,
    leaks: bool = False,
    progress: ProgressFn | None = None,
) -> DedupOutcome:
    """Near-duplicates of the dataset folder; ``apply`` moves them to ``<data>/_duplicates/``.

    The hash method needs only the folder (its catalogue: hashes of unchanged files are not computed again). The
    embedding (and both) methods open the workspace: the prepared data and every photo's embedding (featurized on
    first use). The report (every removal) is written before anything
    moves. A prepared split of this dataset and condition is prepared again after files were moved.

    Args:
        spec: The workspace (dataset folder, workdir, featurizer).
        config: What counts as a near-duplicate (default: :class:`core.dedup.DedupConfig`).
        apply: Move the removed photos aside.
        max_share: Refuse to move more than this share of the photos (default
            :data:`core.dedup.DEFAULT_MAX_SHARE`).
        allow_cross_label: Move a photo even when the photo kept for it carries another label.
        leaks: Also write every near-duplicate pair across the train/test split to ``reports/leaks.json``.
        progress: Called as ``progress(done, total)`` while photos are featurized.

    Raises:
        DedupRefused: ``apply`` would move more than ``max_share`` or across labels (the report is written).
        WorkbenchError: A setting out of range, or an unusable dataset folder.
    """
    from core.catalogue import refresh_saved_catalogue
    from core.dedup import (
        DEFAULT_MAX_SHARE,
        DedupConfig,
        apply_refusal,
        find_leaks,
        find_near_duplicates,
        move_duplicates,
    )
    from core.images import printable

    config = config or DedupConfig()
    max_share = DEFAULT_MAX_SHARE if max_share is None else max_share
    if not 0.0 <= max_share <= 1.0:
        raise WorkbenchError(f"--max-share must be between 0 and 1, got {max_share}")
    root = spec.config.data.root
    spec.layout.catalogue.parent.mkdir(parents=True, exist_ok=True)
    # the folder's catalogue: only new or rewritten files are read (their hashes are kept from the last look)
    scan = refresh_saved_catalogue(root, spec.layout.catalogue)[0].scan_report()
    if scan.dhashes is None:
        raise WorkbenchError(f"{root}: no image hashes from the scan")
    embeddings = None
    dataset = scan.dataset
    hashes = scan.dhashes
    prepared = None
    graph = None
    if config.uses_embedding:
        ws = open_workspace(spec, progress)
        prepared, dataset, embeddings = ws.prepared, ws.dataset, ws.embeddings
        hashes = _aligned_hashes(dataset.records, scan.dataset.records, scan.dhashes)
        graph = knn(ws, config.neighbours)  # the workspace's cached graph, shared with label errors
    report = find_near_duplicates(dataset, hashes, config, embeddings, graph)
    exact = tuple(item.reason for item in scan.skipped if "exact duplicate of" in item.reason)
    refusal = apply_refusal(report, max_share, allow_cross_label) if apply else ""
    path = spec.layout.dedup_report
    atomic_write_json(
        path,
        {**report.to_dict(), "exact_duplicates": list(exact), "applied": apply and not refusal, "refused": refusal},
    )
    leak_report, leaks_path = None, None
    if leaks:
        prepared = prepared or prepared_data(spec.config.data, spec.layout)
        leak_hashes = _aligned_hashes(prepared.dataset.records, scan.dataset.records, scan.dhashes)
        leak_report = find_leaks(
            prepared.dataset, prepared.split, leak_hashes, config.hash_threshold, config.neighbours, sample_size=None
        )
        leaks_path = path.with_name("leaks.json")
        root_of = prepared.dataset.root or Path(".")
        atomic_write_json(
            leaks_path,
            {
                "threshold": leak_report.threshold,
                "neighbours": config.neighbours,
                "count": leak_report.count,
                "pairs": [
                    {
                        "test": printable(str(leak.test_path.relative_to(root_of))),
                        "train": printable(str(leak.train_path.relative_to(root_of))),
                        "distance": leak.distance,
                    }
                    for leak in leak_report.sample
                ],
            },
        )
    if refusal:
        raise DedupRefused(f"not moved: {refusal}; report: {path}")
    moved: tuple[Path, ...] = ()
    reprepared = False
    if apply and report.removed:
        moved = tuple(target for _, target in move_duplicates(report, root))
        if spec.layout.prepared.exists():
            prepared_data(spec.config.data, spec.layout, force=True)
            reprepared = True
    return DedupOutcome(report, exact, moved, reprepared, path, leak_report, leaks_path)


def export_featurizer(spec: WorkspaceSpec, out: Path | None = None) -> ExportResult:
    """Export the spec's featurizer to ONNX (validated against PyTorch); default target: the export cache."""
    from export.onnx_export import export_onnx
    from workbench.workspace import exported_model, torch_featurizer

    featurizer = torch_featurizer(spec)
    target = out or exported_model(dataclasses.replace(spec, onnx=None), featurizer.fingerprint)
    return export_onnx(featurizer.backbone, target, training_run="" if spec.run == PRETRAINED else spec.run)


def bake_projection_into(spec: WorkspaceSpec, exported: ExportResult, out: Path) -> Path:
    """Write a copy of ``exported`` with the featurizer's fitted projection ranker (matrix and neighbour vote)
    baked in: its ``embedding`` output is then that ranker's ``transform``, ranked by dot product.

    Raises:
        RankerUnavailableError: No projection ranker is fitted for this featurizer.
        ArtifactError: The ranker file or the model is unreadable.
    """
    from core.metric_learning import ProjectionRanker
    from export.onnx_projection import bake_projection

    if out.resolve() == exported.path.resolve():
        raise WorkbenchError(
            f"{out}: that is the plain featurizer's file; write the model with the projection elsewhere"
        )
    path = fitted_ranker_path(spec.layout, "projection", exported.metadata.fingerprint)
    return bake_projection(exported.path, ProjectionRanker.load(path), out)


# --- the saved vector index -------------------------------------------------------------------------


def index_config(kind: str, n_images: int, folder: Path, dtype: str = "float32", milvus_uri: str | None = None) -> Any:
    """The index back-end config for ``kind`` (``auto`` picks by gallery size), storing vectors as ``dtype``.

    Raises:
        WorkbenchError: ``dtype`` is one the chosen back end cannot store (exact: float32 or float16; faiss: also
            int8; Milvus: float32).
    """
    from core.index import default_config
    from core.index.exact import ExactConfig
    from core.index.faiss_backend import FAISS_DTYPES, FaissConfig
    from core.index.milvus_backend import MilvusConfig

    chosen = default_config(n_images) if kind == "auto" else None
    stored: tuple[str, ...]
    if kind == "exact" or isinstance(chosen, ExactConfig):
        backend, stored = "the exact index", ("float32", "float16")
    elif kind == "milvus":
        backend, stored = "Milvus", ("float32",)
    else:
        backend, stored = "a faiss index", FAISS_DTYPES
    if dtype not in stored:
        raise WorkbenchError(f"--dtype {dtype}: {backend} stores {' or '.join(stored)}")
    if backend == "the exact index":
        return ExactConfig(dtype=dtype)
    if backend == "Milvus":
        return MilvusConfig(uri=milvus_uri or str(folder / "milvus.db"))
    return FaissConfig(
        kind=chosen.kind if isinstance(chosen, FaissConfig) else kind.removeprefix("faiss-"), dtype=dtype
    )


INDEX_KINDS = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus")


def index_build(ws: Workspace, folder: Path, config: Any, ranker: str = "cosine") -> VectorIndex:
    """Index every image of the workspace for ``ranker`` and save it to ``folder`` (replacing what was there).

    An approximate index stores the ranker's vector space; the exact one serves every ranker and records this one
    as what its searches use by default. Either way the ranker must be usable here (fitted, a valid file).

    Raises:
        WorkbenchError: The ranker is unknown, not fitted, damaged, or one the back end cannot serve.
    """
    from core.index import create_index

    index = create_index(config, ws.fingerprint, ws.embeddings.shape[1], ws.ranker(ranker))
    index.add(ws.index_ids(), ws.embeddings, fingerprint=ws.fingerprint)
    index.save(folder)
    return index


def index_add(ws: Workspace, folder: Path) -> tuple[int, VectorIndex]:
    """Add the workspace's images missing from the saved index; returns (added, index)."""
    from core.index import load_index

    index = load_index(folder, fingerprint=ws.fingerprint)
    ids = ws.index_ids()
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


def index_search(ws: Workspace, folder: Path, image_path: Path, k: int, ranker: str | None = None) -> list[IndexHit]:
    """The ``k`` indexed images most similar to an image file, by ``ranker`` (default: the one the index was built
    for; cosine for an exact index saved before indexes recorded it).

    Raises:
        WorkbenchError: Bad ``k``, an unusable image, an index that is damaged or holds another width of vectors,
            or a ranker that cannot be used.
    """
    from core.images import load_image
    from core.index import REBUILD_HINT, load_index

    if k < 1:
        raise WorkbenchError(f"-k must be at least 1, got {k}")
    index = load_index(folder, fingerprint=ws.fingerprint)
    if index.dim != ws.embeddings.shape[1]:
        raise ArtifactError(
            f"{folder}: index holds {index.dim}-d vectors, featurizer {ws.fingerprint} gives "
            f"{ws.embeddings.shape[1]}-d; {REBUILD_HINT}"
        )
    ranker = ranker or index.ranker_name
    hits: IndexHits = index.search(ws.embed([load_image(image_path)]), k, ws.ranker(ranker), fingerprint=ws.fingerprint)
    found = ws.rows_of(hits.ids[0]).tolist()  # -1: a photo the index holds and the folder no longer has
    rows = []
    for rank, (hit_id, score, row) in enumerate(
        zip(hits.ids[0].tolist(), hits.scores[0].tolist(), found, strict=True), 1
    ):
        record = ws.dataset.record(row) if row >= 0 else None
        rows.append(
            IndexHit(
                rank, hit_id, score, record.label if record else None, ws.relative_path(record) if record else None
            )
        )
    return rows
