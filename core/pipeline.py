"""The data steps of a workspace: scan, split and draw comparative sets (``prepare``), save and load them,
and evaluate rankers on them.

Where the files live is :class:`core.workdir.WorkDir`'s business; opening a whole workspace (featurizer,
embeddings, rankers) is ``workbench.workspace``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import (
    UNREADABLE_NPZ,
    atomic_save_npz,
    atomic_write_json,
    environment_versions,
    pack_texts,
    read_json,
    unpack_texts,
)
from core.config import DataConfig
from core.data import (
    ATTRIBUTES_FILE,
    ComparativeSets,
    ImageDataset,
    ImageRecord,
    RecordColumns,
    ScanReport,
    SkippedFile,
    Split,
    apply_condition,
    check_disjoint,
    content_comparative_sets,
    content_split,
    scan_folder,
)
from core.dedup import NO_LEAKS, LeakReport, leaks_from_json, leaks_to_json
from core.errors import ArtifactError
from core.evaluate import EvaluationResult, evaluate
from core.images import printable
from core.rankers import Ranker

log = logging.getLogger(__name__)

#: ``prepared.json`` + ``prepared.npz`` (2: records, split and sets moved into the arrays file; 3: comparative sets
#: drawn by content, :func:`core.data.content_comparative_sets`); another is prepared again.
PREPARED_SCHEMA = 3


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


def prepare(config: DataConfig, scan: ScanReport | None = None, source: str | None = None) -> PreparedData:
    """Split the images of ``config.root`` and draw comparative sets, all seeded by ``config.seed``.

    Each image's side of the split and each comparative set follow from the photos' content
    (:func:`core.data.content_split`, :func:`core.data.content_comparative_sets`), so photos added later join a side
    without moving the others and change only the few sets they meet. Exact duplicates are dropped by the scan;
    near-duplicates (perceptual hash) that land on both sides of the split are logged as warnings naming both files
    (see :func:`near_duplicate_leaks`).

    Args:
        config: Data settings.
        scan: The folder as scanned already (e.g. :meth:`core.catalogue.Catalogue.scan_report`); default: scan
            ``config.root`` now.
        source: What identifies the scan (:func:`source_signature` of its catalogue); default:
            :func:`scan_signature`.
    """
    report = scan if scan is not None else scan_folder(config.root)
    source = source or scan_signature(report, config)
    if config.condition:
        report = apply_condition(report, config.condition, Path(config.attributes) if config.attributes else None)
    dataset = report.dataset
    labels = dataset.label_array
    sha256s = np.asarray(dataset.sha256s, dtype=object)
    split = content_split(dataset.sha256s, labels, config.train_fraction, config.seed)
    check_disjoint(dataset, split)
    leaks = near_duplicate_leaks(dataset, split, report.dhashes, config.near_duplicate_threshold)

    def sets_for(indices: np.ndarray, per_label: int) -> ComparativeSets:
        local = content_comparative_sets(
            labels[indices], sha256s[indices].tolist(), per_label, config.n_negatives, config.seed
        )
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


def source_signature(catalogue_signature: str, config: DataConfig) -> str:
    """What :func:`prepare` reads, from a folder catalogue's signature: the catalogue, and (under a condition) the
    attributes file's size and time. Equal signatures give the same prepared data."""
    digest = hashlib.sha256(f"catalogue:{catalogue_signature}".encode())
    _attributes_state(digest, config, Path(config.root))
    return digest.hexdigest()[:16]


def _attributes_state(digest: Any, config: DataConfig, root: Path) -> None:
    if config.condition:
        attributes = Path(config.attributes) if config.attributes else root / ATTRIBUTES_FILE
        try:
            stat = attributes.stat()
            digest.update(f"{attributes.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"no attributes file")


def scan_signature(scan: ScanReport, config: DataConfig) -> str:
    """A hash of what :func:`prepare` reads from a folder scan: every kept image's path, label and content, and
    (under a condition) the attributes file's size and time. Equal signatures give the same prepared data."""
    digest = hashlib.sha256()
    dataset = scan.dataset
    root = dataset.root or Path(".")
    rows = zip(dataset.relative_paths, dataset.label_array.tolist(), dataset.sha256s, strict=True)
    digest.update("\n".join(f"{path}\0{label}\0{sha}" for path, label, sha in rows).encode("utf-8", "surrogateescape"))
    _attributes_state(digest, config, root)
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
    """Write ``prepared.json`` (settings, versions, counts, skipped files, leaks) and ``prepared.npz`` (records as
    columns, split and comparative sets: a million photos load in a fraction of a second), both atomically, the
    arrays first; image paths are stored relative to the dataset root. The two carry the same ``arrays_id``."""
    root = prepared.dataset.root or Path(".")
    dataset = prepared.dataset
    labels = dataset.label_array.astype(str)
    names, codes = np.unique(labels, return_inverse=True)
    arrays_id = uuid.uuid4().hex
    workdir = Path(workdir)
    atomic_save_npz(
        workdir / "prepared.npz",
        arrays_id=np.array(arrays_id),
        paths=pack_texts(dataset.relative_paths),
        label_names=pack_texts(names.tolist()),
        label_codes=codes.astype(np.int64),
        sha256=np.array(dataset.sha256s, dtype="S64"),
        train=prepared.split.train.astype(np.int64),
        test=prepared.split.test.astype(np.int64),
        train_queries=prepared.train_sets.queries.astype(np.int64),
        train_references=prepared.train_sets.references.astype(np.int64),
        test_queries=prepared.test_sets.queries.astype(np.int64),
        test_references=prepared.test_sets.references.astype(np.int64),
    )
    payload = {
        "schema_version": PREPARED_SCHEMA,
        "config": {**dataclasses.asdict(prepared.config), "root": str(root.resolve())},
        "versions": environment_versions(),
        "arrays": {"file": "prepared.npz", "arrays_id": arrays_id},
        "counts": {
            "images": len(dataset),
            "labels": len(names),
            "train": len(prepared.split.train),
            "test": len(prepared.split.test),
        },
        "source": prepared.source,
        "skipped": [[str(item.path), item.reason] for item in prepared.skipped],
        "leaks": leaks_to_json(prepared.leaks, root),
    }
    path = workdir / "prepared.json"
    atomic_write_json(path, payload)
    return path


def load_prepared(workdir: Path) -> PreparedData:
    """Read ``prepared.json`` and its ``prepared.npz`` back, checked against each other.

    Raises:
        ArtifactError: Missing (run ``prepare`` first), unknown schema, malformed, or arrays of another write.
    """
    path = Path(workdir) / "prepared.json"
    if not path.exists():
        raise ArtifactError(f"{path}: not found; run `python -m workbench prepare` first")
    payload = read_json(path)
    if not isinstance(payload, dict) or payload.get("schema_version") != PREPARED_SCHEMA:
        found = payload.get("schema_version") if isinstance(payload, dict) else None
        raise ArtifactError(f"{path}: schema version {found!r}, expected {PREPARED_SCHEMA}")
    arrays_path = path.with_name("prepared.npz")
    try:
        config = DataConfig(**{**payload["config"], "root": Path(payload["config"]["root"])})
        root = config.root
        with np.load(arrays_path, allow_pickle=False) as archive:
            if str(archive["arrays_id"]) != payload["arrays"]["arrays_id"]:
                raise ValueError(f"{arrays_path.name} belongs to another prepare")
            sha256 = archive["sha256"]
            count = len(sha256)
            codes = archive["label_codes"]
            if sha256.dtype != np.dtype("S64") or codes.shape != (count,) or payload["counts"]["images"] != count:
                raise ValueError(f"{count} content hashes, {codes.shape} label codes")
            names = unpack_texts(archive["label_names"], -1)
            if count and (codes.min() < 0 or codes.max() >= len(names)):
                raise ValueError("a label code out of range")
            hashes = sha256.tobytes().decode("ascii")
            records = RecordColumns(
                root,
                unpack_texts(archive["paths"], count),
                [names[code] for code in codes.tolist()],
                [hashes[start : start + 64] for start in range(0, 64 * count, 64)],
            )
            split = Split(archive["train"], archive["test"])
            sets = [
                ComparativeSets(archive[f"{side}_queries"], archive[f"{side}_references"]) for side in ("train", "test")
            ]
        for name, indices in (
            ("split", np.concatenate([split.train, split.test])),
            *(("comparative sets", np.concatenate([s.queries, s.references.ravel()])) for s in sets),
        ):
            if indices.dtype != np.int64 or (indices.size and (indices.min() < 0 or indices.max() >= count)):
                raise ValueError(f"{name} indices outside the {count} records")
        return PreparedData(
            config,
            ImageDataset(records, root),
            split,
            sets[0],
            sets[1],
            tuple(SkippedFile(Path(p), reason) for p, reason in payload.get("skipped", [])),
            leaks_from_json(payload.get("leaks"), root),
            str(payload.get("source", "")),
        )
    except FileNotFoundError as err:
        raise ArtifactError(f"{arrays_path}: not found; run `python -m workbench prepare`") from err
    except (*UNREADABLE_NPZ, TypeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: malformed ({err!r}); run `python -m workbench prepare`") from err


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
    """One retrieved gallery image; ``parts`` is ``(label agreement, look)`` under a ranker that blends the two
    (:meth:`core.metric_learning.ProjectionRanker.parts`), ``probability`` the calibrated probability that the two
    photos share a label under a ranker that has one (the SVM's Platt sigmoid); None otherwise."""

    rank: int
    record: ImageRecord
    score: float
    parts: tuple[float, float] | None = None
    probability: float | None = None
