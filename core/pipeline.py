"""The data steps of a workspace: scan, split and draw comparative sets (``prepare``), save and load them,
and evaluate rankers on them.

Where the files live is :class:`core.workdir.WorkDir`'s business; opening a whole workspace (featurizer,
embeddings, rankers) is ``workbench.workspace``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.artifacts import SCHEMA_VERSION, atomic_write_json, environment_versions, read_json
from core.config import DataConfig
from core.data import (
    ATTRIBUTES_FILE,
    ComparativeSets,
    ImageDataset,
    ImageRecord,
    ScanReport,
    SkippedFile,
    Split,
    apply_condition,
    check_disjoint,
    content_split,
    make_comparative_sets,
    scan_folder,
)
from core.dedup import NO_LEAKS, LeakReport, leaks_from_json, leaks_to_json
from core.errors import ArtifactError
from core.evaluate import EvaluationResult, evaluate
from core.images import printable
from core.rankers import Ranker

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
    leaks: LeakReport = NO_LEAKS
    #: :func:`scan_signature` of the folder scan it was prepared from ("" when unknown).
    source: str = ""


def prepare(config: DataConfig, scan: ScanReport | None = None) -> PreparedData:
    """Split the images of ``config.root`` and draw comparative sets, all seeded by ``config.seed``.

    Each image's side of the split follows from its content (:func:`core.data.content_split`), so photos added
    later join a side without moving the others. Exact duplicates are dropped by the scan; near-duplicates
    (perceptual hash) that land on both sides of the split are logged as warnings naming both files (see
    :func:`near_duplicate_leaks`).

    Args:
        config: Data settings.
        scan: The folder as scanned already (e.g. :meth:`core.catalogue.Catalogue.scan_report`); default: scan
            ``config.root`` now.
    """
    report = scan if scan is not None else scan_folder(config.root)
    source = scan_signature(report, config)
    if config.condition:
        report = apply_condition(report, config.condition, Path(config.attributes) if config.attributes else None)
    dataset = report.dataset
    rng = np.random.default_rng(config.seed)
    labels = dataset.label_array
    split = content_split([record.sha256 for record in dataset.records], labels, config.train_fraction, config.seed)
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
        source,
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


def scan_signature(scan: ScanReport, config: DataConfig) -> str:
    """A hash of what :func:`prepare` reads from a folder scan: every kept image's path, label and content, and
    (under a condition) the attributes file's size and time. Equal signatures give the same prepared data."""
    digest = hashlib.sha256()
    root = scan.dataset.root or Path(".")
    for record in scan.dataset.records:
        digest.update(os.fsencode(str(record.path.relative_to(root))))
        digest.update(f"\0{record.label}\0{record.sha256}\n".encode("utf-8", "surrogateescape"))
    if config.condition:
        attributes = Path(config.attributes) if config.attributes else root / ATTRIBUTES_FILE
        try:
            stat = attributes.stat()
            digest.update(f"{attributes.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"no attributes file")
    return digest.hexdigest()[:16]


def near_duplicate_leaks(
    dataset: ImageDataset, split: Split, dhashes: np.ndarray | None, threshold: int | None = None
) -> LeakReport:
    """Near-duplicate pairs straddling ``split`` (count and closest few), summarised in one warning.

    Each test photo is compared with its nearest training photos only (:func:`core.dedup.find_leaks`), never with
    every training photo: the count grows with the test split, not with train x test.

    Args:
        dataset: The scanned records.
        split: Train/test indices into ``dataset``.
        dhashes: Packed difference hashes aligned with the records (``ScanReport.dhashes``); None skips the check.
        threshold: Hamming distance in bits (default: ``core.dedup.DEFAULT_THRESHOLD``).
    """
    from core.dedup import DEFAULT_THRESHOLD, find_leaks

    if dhashes is None:
        return NO_LEAKS
    limit = DEFAULT_THRESHOLD if threshold is None else threshold
    leaks = find_leaks(dataset, split, dhashes, limit)
    if leaks:
        closest = leaks.sample[0]
        log.warning(
            "possible train/test leakage: %d near-duplicate pair(s) straddle the split (dhash distance "
            '<= %d; closest: %s (test) ~ %s (train)); the closest are listed under "leaks" in prepared.json and on '
            "the app's Dataset page, all of them by `python -m workbench dedup --leaks`; `dedup` removes "
            "near-duplicates",
            leaks.count,
            limit,
            printable(str(closest.test_path)),
            printable(str(closest.train_path)),
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
        "source": prepared.source,
        "skipped": [[str(item.path), item.reason] for item in prepared.skipped],
        "leaks": leaks_to_json(prepared.leaks, root),
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
            leaks_from_json(payload.get("leaks"), root),
            str(payload.get("source", "")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed ({err!r})") from err


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


@dataclass(frozen=True)
class SearchHit:
    """One retrieved gallery image."""

    rank: int
    record: ImageRecord
    score: float
