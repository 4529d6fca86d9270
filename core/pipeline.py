"""The end-to-end steps over a workspace folder: prepare, featurize, evaluate, search.

Workspace layout (every file written atomically)::

    <workdir>/prepared.json          dataset records, split and comparative sets
    <workdir>/features/<id>.npz      feature cache, one file per featurizer
    <workdir>/reports/<id>.json      evaluation reports
    <workdir>/runs/<run>/            fine-tuning runs (checkpoint + manifest)
    <workdir>/rankers/<id>/svm.npz   SVM rankers, one per featurizer
    <workdir>/onnx/<choice>.onnx     exported featurizers ("pretrained" or a run name), used when present
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.artifacts import SCHEMA_VERSION, atomic_write_json, environment_versions, read_json
from core.config import DataConfig, FeaturizerConfig
from core.data import (
    ComparativeSets,
    ImageDataset,
    ImageRecord,
    SkippedFile,
    Split,
    apply_condition,
    check_disjoint,
    make_comparative_sets,
    scan_folder,
    stratified_split,
)
from core.dedup import Leak
from core.errors import ArtifactError
from core.evaluate import EvaluationResult, evaluate
from core.featurize import FeatureCache, Featurizer, ProgressFn, TorchFeaturizer
from core.images import printable
from core.rankers import Ranker, top_k
from core.svm import PairAccuracy, SVMConfig, SVMRanker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """A scanned dataset with its split and comparative sets (indices into ``dataset``)."""

    config: DataConfig
    dataset: ImageDataset
    split: Split
    train_sets: ComparativeSets
    test_sets: ComparativeSets
    skipped: tuple[SkippedFile, ...] = ()
    leaks: tuple[Leak, ...] = ()


def prepare(config: DataConfig) -> PreparedData:
    """Scan ``config.root``, split it and draw comparative sets, all seeded by ``config.seed``.

    Exact duplicates are dropped by the scan; near-duplicates (perceptual hash) that land on both
    sides of the split are logged as warnings naming both files (see :func:`near_duplicate_leaks`).
    """
    report = scan_folder(config.root)
    if config.condition:
        report = apply_condition(report, config.condition, Path(config.attributes) if config.attributes else None)
    dataset = report.dataset
    rng = np.random.default_rng(config.seed)
    labels = dataset.label_array
    split = stratified_split(labels, config.train_fraction, rng)
    check_disjoint(dataset, split)
    leaks = near_duplicate_leaks(dataset, split, report.dhashes, config.near_duplicate_threshold)

    def sets_for(indices: np.ndarray, per_label: int) -> ComparativeSets:
        local = make_comparative_sets(labels[indices], per_label, config.n_negatives, rng)
        return ComparativeSets(indices[local.queries], indices[local.references])

    prepared = PreparedData(
        config,
        dataset,
        split,
        sets_for(split.train, config.train_queries_per_label),
        sets_for(split.test, config.test_queries_per_label),
        report.skipped,
        leaks,
    )
    log.info(
        "%d images, %d labels; train %d, test %d; %d test queries x (1 + %d)",
        len(dataset),
        len(dataset.labels),
        len(split.train),
        len(split.test),
        len(prepared.test_sets),
        prepared.test_sets.n_negatives,
    )
    return prepared


def near_duplicate_leaks(
    dataset: ImageDataset, split: Split, dhashes: np.ndarray | None, threshold: int | None = None
) -> tuple[Leak, ...]:
    """Near-duplicate pairs straddling ``split``, each logged as a warning naming both files.

    Args:
        dataset: The scanned records.
        split: Train/test indices into ``dataset``.
        dhashes: Packed difference hashes aligned with the records (``ScanReport.dhashes``); None skips the check.
        threshold: Hamming distance in bits (default: ``core.dedup.DEFAULT_THRESHOLD``).
    """
    from core.dedup import DEFAULT_THRESHOLD, find_leaks

    if dhashes is None:
        return ()
    leaks = find_leaks(dataset, split, dhashes, DEFAULT_THRESHOLD if threshold is None else threshold)
    for leak in leaks:
        log.warning(
            "possible train/test leakage: %s (test) is a near-duplicate of %s (train), dhash distance %d; "
            "run `python -m workbench dedup` to remove near-duplicates",
            printable(str(leak.test_path)),
            printable(str(leak.train_path)),
            leak.distance,
        )
    return leaks


def save_prepared(prepared: PreparedData, workdir: Path) -> Path:
    """Write ``prepared.json`` atomically; image paths are stored relative to the dataset root."""
    root = prepared.dataset.root or Path(".")
    payload = {
        "schema_version": SCHEMA_VERSION,
        "config": {**dataclasses.asdict(prepared.config), "root": str(root.resolve())},
        "versions": environment_versions(),
        "records": [[str(r.path.relative_to(root)), r.label, r.sha256] for r in prepared.dataset.records],
        "split": {"train": prepared.split.train, "test": prepared.split.test},
        "train_sets": {"queries": prepared.train_sets.queries, "references": prepared.train_sets.references},
        "test_sets": {"queries": prepared.test_sets.queries, "references": prepared.test_sets.references},
        "skipped": [[str(item.path), item.reason] for item in prepared.skipped],
        "leaks": [
            [str(leak.train_path.relative_to(root)), str(leak.test_path.relative_to(root)), leak.distance]
            for leak in prepared.leaks
        ],
    }
    path = Path(workdir) / "prepared.json"
    atomic_write_json(path, payload)
    return path


def load_prepared(workdir: Path) -> PreparedData:
    """Read ``prepared.json`` back.

    Raises:
        ArtifactError: Missing (run ``prepare`` first), unknown schema or malformed.
    """
    path = Path(workdir) / "prepared.json"
    if not path.exists():
        raise ArtifactError(f"{path}: not found; run `python -m workbench prepare` first")
    payload = read_json(path)
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {payload.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    try:
        config = DataConfig(**{**payload["config"], "root": Path(payload["config"]["root"])})
        root = config.root
        records = tuple(ImageRecord(root / rel, label, sha) for rel, label, sha in payload["records"])

        def sets(key: str) -> ComparativeSets:
            return ComparativeSets(
                np.asarray(payload[key]["queries"], np.int64), np.asarray(payload[key]["references"], np.int64)
            )

        return PreparedData(
            config,
            ImageDataset(records, root),
            Split(np.asarray(payload["split"]["train"], np.int64), np.asarray(payload["split"]["test"], np.int64)),
            sets("train_sets"),
            sets("test_sets"),
            tuple(SkippedFile(Path(p), reason) for p, reason in payload.get("skipped", [])),
            tuple(Leak(root / train, root / test, int(distance)) for train, test, distance in payload.get("leaks", [])),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed ({err!r})") from err


def build_featurizer(config: FeaturizerConfig, run_dir: Path | None = None) -> TorchFeaturizer:
    """The PyTorch featurizer described by ``config``, or the fine-tuned body of ``run_dir``."""
    from core.backbones import build_backbone

    if run_dir is not None:
        from core.train import finetuned_backbone

        return TorchFeaturizer(finetuned_backbone(run_dir), device=config.device or None)
    weights = None if config.weights == "none" else config.weights
    return TorchFeaturizer(build_backbone(config.backbone, weights), device=config.device or None)


def run_path(workdir: Path, run: str) -> Path:
    """Folder of the fine-tuning run named ``run``."""
    if not run or Path(run).name != run or run.startswith("."):
        raise ArtifactError(f"{run!r}: a run name must be a plain folder name")
    return Path(workdir) / "runs" / run


def onnx_path(workdir: Path, choice: str) -> Path:
    """Default place of the exported featurizer for ``choice`` (``"pretrained"`` or a run name)."""
    return Path(workdir) / "onnx" / f"{choice}.onnx"


def forget_export(workdir: Path, choice: str) -> None:
    """Remove the exported model of ``choice``: called when its weights are about to change."""
    path = onnx_path(workdir, choice)
    if path.exists():
        log.info("removing %s: the run is being retrained", path)
        path.unlink()


def svm_path(workdir: Path, featurizer_id: str) -> Path:
    """Where the SVM ranker for a featurizer's embeddings is saved."""
    return Path(workdir) / "rankers" / featurizer_id / "svm.npz"


def fit_svm(
    prepared: PreparedData, embeddings: np.ndarray, config: SVMConfig, featurizer_id: str, workdir: Path
) -> tuple[SVMRanker, PairAccuracy, PairAccuracy]:
    """Fit the SVM ranker on the training comparative sets, save it, and measure train/test pair accuracy."""
    ranker = SVMRanker(config).fit(embeddings, prepared.dataset.label_array, prepared.train_sets)
    train_accuracy = ranker.pair_accuracy(embeddings, prepared.train_sets)
    test_accuracy = ranker.pair_accuracy(embeddings, prepared.test_sets)
    ranker.save(
        svm_path(workdir, featurizer_id),
        {
            "featurizer": featurizer_id,
            "train_pairs": dataclasses.asdict(train_accuracy),
            "test_pairs": dataclasses.asdict(test_accuracy),
        },
    )
    return ranker, train_accuracy, test_accuracy


def siamese_path(workdir: Path, featurizer_id: str) -> Path:
    """Where the Siamese pair ranker for a featurizer's embeddings is saved."""
    return Path(workdir) / "rankers" / featurizer_id / "siamese.npz"


def fit_siamese(prepared: PreparedData, embeddings: np.ndarray, featurizer_id: str, workdir: Path) -> Ranker:
    """Train the Siamese pair head on the training comparative sets and save it."""
    from core.siamese import SiameseRanker

    ranker = SiameseRanker().fit(embeddings, prepared.dataset.label_array, prepared.train_sets)
    ranker.save(siamese_path(workdir, featurizer_id), {"featurizer": featurizer_id})
    return ranker


def load_rankers(names: list[str], workdir: Path, featurizer_id: str, seed: int = 0) -> list[Ranker]:
    """Rankers by name; ``"svm"`` and ``"siamese"`` are loaded from the workspace for this featurizer."""
    from core.rankers import make_ranker
    from core.siamese import SiameseRanker

    rng = np.random.default_rng(seed)
    learned = {
        "svm": lambda: SVMRanker.load(svm_path(workdir, featurizer_id)),
        "siamese": lambda: SiameseRanker.load(siamese_path(workdir, featurizer_id)),
    }
    return [learned[name]() if name in learned else make_ranker(name, rng) for name in names]


def featurize(
    prepared: PreparedData,
    featurizer: Featurizer,
    workdir: Path,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Embeddings of every record of the dataset, through the workspace's feature cache."""
    cache = FeatureCache(Path(workdir) / "features")
    return cache.embed(featurizer, prepared.dataset.records, batch_size=batch_size, progress=progress)


def evaluate_rankers(
    prepared: PreparedData,
    embeddings: np.ndarray,
    rankers: list[Ranker],
    seed: int = 0,
    which: str = "test",
) -> list[EvaluationResult]:
    """Evaluate several rankers on the same comparative sets (``which`` = ``"test"`` or ``"train"``)."""
    sets = prepared.test_sets if which == "test" else prepared.train_sets
    labels = prepared.dataset.label_array
    return [evaluate(ranker, embeddings, labels, sets, np.random.default_rng(seed)) for ranker in rankers]


def save_report(results: list[EvaluationResult], featurizer_id: str, workdir: Path) -> Path:
    """Write an evaluation report (all rankers) as JSON, atomically."""
    path = Path(workdir) / "reports" / f"{featurizer_id}.json"
    atomic_write_json(
        path,
        {
            "schema_version": SCHEMA_VERSION,
            "featurizer": featurizer_id,
            "versions": environment_versions(),
            "results": {result.ranker: result.to_dict() for result in results},
        },
    )
    return path


@dataclass(frozen=True)
class SearchHit:
    """One retrieved gallery image."""

    rank: int
    record: ImageRecord
    score: float


def search(
    image: Image.Image,
    featurizer: Featurizer,
    gallery: ImageDataset,
    gallery_embeddings: np.ndarray,
    ranker: Ranker,
    k: int = 15,
) -> list[SearchHit]:
    """The ``k`` gallery images most similar to an RGB image, best first."""
    query = featurizer.embed([image])
    indices, scores = top_k(ranker, query, gallery_embeddings, k)
    return [
        SearchHit(rank, gallery.records[i], float(s))
        for rank, (i, s) in enumerate(zip(indices[0], scores[0], strict=True), start=1)
    ]
