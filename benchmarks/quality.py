"""Retrieval quality of cosine, L2, SVM and projection on pretrained EfficientNet-Lite0 embeddings.

For the demo (``data/demo``) and the held-out sets of ``scripts/heldout_data.py`` (``heldout_scenes``: 57 scene
photos in 4 labels; ``heldout_fashion_mnist``: 1,000 Fashion-MNIST product photos, 28x28 greyscale, in 10
labels): comparative-set mean rank, top-1 and top-5 with 95 % CIs (:func:`core.evaluate.evaluate`), full-gallery
recall@1 and MAP@R (test images query the whole dataset, :func:`core.evaluate.evaluate_retrieval`), the look metric
(:mod:`core.looks`: a seeded edited copy of each test image searches the whole dataset; copy recall@1 and the mean
rank of its original; the ``projection (w=0)`` row is the projection without its look weight, for before/after), and
the
out-of-gallery check: top-5 label agreement of each ranker's results with the query's label for (a) test photos
searched against their set's training gallery and (b, demo only) out-of-style photos searched against the whole
demo. Learned rankers are fitted on the training split with their library defaults (no per-dataset tuning: the
held-out sets are check sets). Embeddings are cached under ``--workdir``, keyed by the set's file list.

``--sets`` picks the sections to run; the others keep their last results in ``benchmarks/results/quality.json``.
``--rankers`` picks rankers; rows of rankers not rerun are kept from the last run of that set. ``--shrinkage``
refits the projection with another LDA shrinkage (the sweep in the README). Each row records ``git describe --dirty``.

Usage::

    .venv/bin/python scripts/heldout_data.py          # builds the held-out sets first
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --workdir /tmp/quality-work
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --sets heldout_fashion_mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from core.backbones import build_backbone
from core.config import DataConfig
from core.data import ComparativeSets, scan_folder
from core.evaluate import evaluate, evaluate_retrieval
from core.featurize import Featurizer, TorchFeaturizer, embed_files
from core.images import load_image
from core.looks import COPY_EDITS_VERSION, copy_retrieval, copy_rng, make_copy
from core.metric_learning import ProjectionConfig, ProjectionRanker
from core.pipeline import PreparedData, prepare
from core.rankers import CosineRanker, L2Ranker, Ranker, top_k
from core.svm import SVMRanker

HELDOUT = Path.home() / ".cache/workbench/heldout"
RESULTS = Path("benchmarks/results/quality.json")
#: section name -> dataset folder (relative to --heldout for held-out sets).
SECTIONS = {
    "demo": "data/demo",
    "heldout_scenes": "scenes",
    "heldout_fashion_mnist": "fashion_mnist",
    "heldout_digits": "digits",
    "heldout_stamps": "stamps",
}
RANKERS = ("cosine", "l2", "svm", "projection")
DEFAULT_BACKBONE = "efficientnet_lite0"
COLUMNS = (
    "fit_s",
    "mean_rank",
    "top1",
    "top5",
    "recall@1",
    "map@r",
    "copy_recall@1",
    "original_rank",
    "heldout_gallery_agreement",
)


def embeddings_for(paths: list[Path], workdir: Path, name: str, featurizer: Featurizer) -> np.ndarray:
    """Embeddings of ``paths``, cached in ``workdir`` under a name that changes with the file list."""
    key = "\n".join(map(str, paths))
    if not featurizer.fingerprint.startswith(f"{DEFAULT_BACKBONE}-"):
        key += f"\n{featurizer.fingerprint}"  # other backbones get their own caches (Lite0's keep their old names)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    cache = workdir / f"{name}-{digest}.npy"
    if cache.exists():
        return np.load(cache)
    start = time.perf_counter()
    embeddings = embed_files(featurizer, paths)
    print(f"featurized {len(paths)} images of {name} in {time.perf_counter() - start:.1f} s")
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    return embeddings


def copies_for(paths: list[Path], rows: np.ndarray, workdir: Path, name: str, featurizer: Featurizer) -> np.ndarray:
    """Embeddings of the look metric's copies of ``paths[rows]`` (seed 0), cached in ``workdir`` like the gallery."""
    key = "\n".join(str(paths[row]) for row in rows) + f"\ncopies v{COPY_EDITS_VERSION}\n{featurizer.fingerprint}"
    cache = workdir / f"{name}-copies-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
    if cache.exists():
        return np.load(cache)
    images = [make_copy(load_image(paths[row], draft_size=512), copy_rng(0, int(row))) for row in rows]
    copies = featurizer.embed(images)
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(cache, copies)
    return copies


def agreement(
    ranker: Ranker, query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> int:
    """How many of the queries' top-5 results share the query's label."""
    found, _ = top_k(ranker, query, gallery, 5)
    return int((gallery_labels[found] == query_labels[:, None]).sum())


def fit_rankers(
    embeddings: np.ndarray,
    labels: np.ndarray,
    prepared: PreparedData,
    names: Sequence[str] = RANKERS,
    projection: ProjectionConfig | None = None,
) -> dict[str, tuple[Ranker, float]]:
    """Cosine, L2 and the learned rankers (library defaults unless ``projection``) fitted on the training split,
    with fit seconds."""
    plain: dict[str, tuple[Ranker, float]] = {"cosine": (CosineRanker(), 0.0), "l2": (L2Ranker(), 0.0)}
    out = {name: plain[name] for name in names if name in plain}
    train = prepared.split.train
    local = np.full(len(labels), -1)
    local[train] = np.arange(len(train))
    sets = prepared.train_sets
    local_sets = ComparativeSets(local[sets.queries], local[sets.references])
    train_embeddings, train_labels = embeddings[train], labels[train]
    fits: dict[str, Callable[[], Ranker]] = {
        "svm": lambda: SVMRanker().fit(train_embeddings, train_labels, local_sets),
        "projection": lambda: ProjectionRanker(projection).fit(train_embeddings, train_labels, local_sets),
    }
    for name, fit in fits.items():
        if name not in names:
            continue
        start = time.perf_counter()
        out[name] = (fit(), time.perf_counter() - start)
        print(f"  fitted {name} in {out[name][1]:.1f} s")
    return out


def run(
    root: Path,
    workdir: Path,
    featurizer: Featurizer,
    out_of_style: tuple[np.ndarray, np.ndarray] | None,
    rankers: Sequence[str] = RANKERS,
    projection: ProjectionConfig | None = None,
) -> dict[str, Any]:
    """Every metric for every ranker on the dataset at ``root``."""
    prepared = prepare(DataConfig(root=root))
    paths = [record.path for record in prepared.dataset.records]
    embeddings = embeddings_for(paths, workdir, root.name, featurizer)
    labels = prepared.dataset.label_array.astype(str)
    fitted = fit_rankers(embeddings, labels, prepared, rankers, projection)
    if "projection" in fitted:  # the same fit without its look weight: label agreement alone, as before
        model, fit_s = fitted["projection"]
        fitted["projection (w=0)"] = (cast(ProjectionRanker, model).with_look_weight(0.0), fit_s)
    rows = {}
    train, test = prepared.split.train, prepared.split.test
    copies = copies_for(paths, test, workdir, root.name, featurizer)
    sha256s = np.asarray(prepared.dataset.sha256s)
    for name, (ranker, fit_s) in fitted.items():
        result = evaluate(ranker, embeddings, labels, prepared.test_sets, np.random.default_rng(0))
        retrieval = evaluate_retrieval(ranker, embeddings, labels, test)
        look = copy_retrieval(ranker, copies, embeddings, test, np.random.default_rng(0), sha256s)
        agreeing = agreement(ranker, embeddings[test], labels[test], embeddings[train], labels[train])
        row: dict[str, Any] = {
            "fit_s": fit_s,
            "mean_rank": str(result.mean_rank),
            "top1": str(result.top1),
            "top5": str(result.top5),
            "recall@1": retrieval.metrics["recall@1"],
            "map@r": retrieval.metrics["map@r"],
            "copy_recall@1": look.recall_at_1.value,
            "original_rank": look.mean_rank.value,
            "heldout_gallery_agreement": f"{agreeing}/{5 * len(test)}",
            "git": git_state(),
        }
        if out_of_style is not None:
            style_embeddings, style_labels = out_of_style
            style_agreeing = agreement(ranker, style_embeddings, style_labels, embeddings, labels)
            row["out_of_style_agreement"] = f"{style_agreeing}/{5 * len(style_labels)}"
        rows[name] = row
    return {
        "root": str(root),
        "n_images": len(labels),
        "n_labels": len(prepared.dataset.labels),
        "n_test": len(test),
        "n_test_queries": len(prepared.test_sets.queries),
        "n_negatives": prepared.test_sets.n_negatives,
        "rankers": rows,
    }


def git_state() -> str:
    """The commit the library was at, with ``-dirty`` when the working tree had uncommitted changes."""
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the ranker rows of ``old`` that it did not rerun, when both describe the same images."""
    if old is None or (old.get("root"), old.get("n_images")) != (new["root"], new["n_images"]):
        return new
    return {**new, "rankers": {**old.get("rankers", {}), **new["rankers"]}}


def table(name: str, section: dict[str, Any], fresh: Sequence[str] = RANKERS) -> str:
    """One section as a fixed-width text table; rows not in ``fresh`` are marked as kept from an earlier run."""
    rows = section["rankers"]
    extra = ["out_of_style_agreement"] if any("out_of_style_agreement" in row for row in rows.values()) else []
    columns = [*COLUMNS, *extra]
    header = (
        f"{name}: {section['n_images']} images in {section.get('n_labels', '?')} labels, {section['n_test']} test; "
        f"{section.get('n_test_queries', '?')} test queries x (1 + {section.get('n_negatives', '?')})"
    )
    cells = [["ranker", *columns]]
    for ranker, row in rows.items():
        mark = "" if ranker.split(" ")[0] in fresh else f" (kept, {row.get('git', '?')})"
        values = [row.get(column, "-") for column in columns]  # rows kept from older runs lack newer columns
        cells.append([ranker + mark, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)])
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join([header, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/quality-work"))
    parser.add_argument("--heldout", type=Path, default=HELDOUT, help="scripts/heldout_data.py's --root")
    parser.add_argument("--sets", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--rankers", nargs="+", choices=RANKERS, default=list(RANKERS))
    parser.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help="pretrained backbone; sections of others are named set@backbone"
    )
    parser.add_argument(
        "--shrinkage",
        type=float,
        default=ProjectionConfig.shrinkage,
        help="the projection's LDA shrinkage; sections of other values are named set@shrinkage-X",
    )
    args = parser.parse_args(argv)
    featurizer = TorchFeaturizer(build_backbone(args.backbone))
    projection = ProjectionConfig(shrinkage=args.shrinkage)
    suffix = "" if args.backbone == DEFAULT_BACKBONE else f"@{args.backbone}"
    suffix += "" if args.shrinkage == ProjectionConfig.shrinkage else f"@shrinkage-{args.shrinkage:g}"
    report: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    for name in args.sets:
        if name == "demo":
            style = scan_folder(args.heldout / "out_of_style").dataset
            style_paths = [record.path for record in style.records]
            style_embeddings = embeddings_for(style_paths, args.workdir, "out_of_style", featurizer)
            out_of_style = (style_embeddings, style.label_array.astype(str))
            section = run(Path(SECTIONS[name]), args.workdir, featurizer, out_of_style, args.rankers, projection)
        else:
            section = run(args.heldout / SECTIONS[name], args.workdir, featurizer, None, args.rankers, projection)
        report[name + suffix] = merge(report.get(name + suffix), section)
        print("\n" + table(name + suffix, report[name + suffix], args.rankers) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temp = RESULTS.with_suffix(".json.tmp")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temp, RESULTS)


if __name__ == "__main__":
    main()
