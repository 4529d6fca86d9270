"""Retrieval quality of cosine, L2, SVM, projection and Siamese on pretrained EfficientNet-Lite0 embeddings.

For the demo (``data/demo``) and a held-out set (``scripts/heldout_data.py``): comparative-set mean rank, top-1
and top-5 with 95 % CIs (:func:`core.evaluate.evaluate`), full-gallery recall@1 and MAP@R (test images query the
whole dataset, :func:`core.evaluate.evaluate_retrieval`), and the out-of-gallery check: top-5 label agreement of
each ranker's results with the query's label for (a) demo test photos searched against the demo's training
gallery and (b) out-of-style photos searched against the whole demo. Learned rankers are fitted on the training
split with their library defaults (no per-dataset tuning). Embeddings are cached under ``--workdir``.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --workdir /tmp/quality-work
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from core.backbones import build_backbone
from core.config import DataConfig
from core.data import scan_folder
from core.evaluate import evaluate, evaluate_retrieval
from core.featurize import TorchFeaturizer, embed_files
from core.metric_learning import ProjectionRanker
from core.pipeline import prepare
from core.rankers import CosineRanker, L2Ranker, Ranker, top_k
from core.siamese import SiameseRanker
from core.svm import SVMRanker

HELDOUT = Path.home() / ".cache/workbench/heldout"


def embeddings_for(paths: list[Path], workdir: Path, name: str, featurizer: TorchFeaturizer) -> np.ndarray:
    cache = workdir / f"{name}.npy"
    if cache.exists():
        return np.load(cache)
    embeddings = embed_files(featurizer, paths)
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    return embeddings


def agreement(ranker: Ranker, query: np.ndarray, query_labels, gallery: np.ndarray, gallery_labels) -> int:
    found, _ = top_k(ranker, query, gallery, 5)
    return int((np.asarray(gallery_labels)[found] == np.asarray(query_labels)[:, None]).sum())


def fit_rankers(embeddings, labels, prepared) -> dict[str, tuple[Ranker, float]]:
    out: dict[str, tuple[Ranker, float]] = {"cosine": (CosineRanker(), 0.0), "l2": (L2Ranker(), 0.0)}
    train = prepared.split.train
    local = {int(j): i for i, j in enumerate(train)}
    from core.data import ComparativeSets

    sets = prepared.train_sets
    local_sets = ComparativeSets(
        np.array([local[int(q)] for q in sets.queries]), np.vectorize(lambda j: local[int(j)])(sets.references)
    )
    for name, ranker in (("svm", SVMRanker()), ("projection", ProjectionRanker()), ("siamese", SiameseRanker())):
        start = time.perf_counter()
        ranker.fit(embeddings[train], labels[train], local_sets)
        out[name] = (ranker, time.perf_counter() - start)
    return out


def run(root: Path, workdir: Path, featurizer, out_of_style: tuple[np.ndarray, np.ndarray] | None) -> dict:
    prepared = prepare(DataConfig(root=root))
    paths = [record.path for record in prepared.dataset.records]
    embeddings = embeddings_for(paths, workdir, root.name, featurizer)
    labels = prepared.dataset.label_array.astype(str)
    rankers = fit_rankers(embeddings, labels, prepared)
    rows = {}
    train, test = prepared.split.train, prepared.split.test
    for name, (ranker, fit_s) in rankers.items():
        result = evaluate(ranker, embeddings, labels, prepared.test_sets, np.random.default_rng(0))
        retrieval = evaluate_retrieval(ranker, embeddings, labels, test)
        row = {
            "fit_s": fit_s,
            "mean_rank": str(result.mean_rank),
            "top1": str(result.top1),
            "top5": str(result.top5),
            "recall@1": retrieval.metrics["recall@1"],
            "map@r": retrieval.metrics["map@r"],
            "heldout_gallery_agreement": f"{agreement(ranker, embeddings[test], labels[test], embeddings[train], labels[train])}/{5 * len(test)}",
        }
        if out_of_style is not None:
            style_embeddings, style_labels = out_of_style
            row["out_of_style_agreement"] = (
                f"{agreement(ranker, style_embeddings, style_labels, embeddings, labels)}/{5 * len(style_labels)}"
            )
        rows[name] = row
    return {"root": str(root), "n_images": len(labels), "n_test": len(test), "rankers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/quality-work"))
    parser.add_argument("--heldout", type=Path, default=HELDOUT)
    args = parser.parse_args()
    featurizer = TorchFeaturizer(build_backbone("efficientnet_lite0"))
    style = scan_folder(args.heldout / "out_of_style").dataset
    style_embeddings = embeddings_for([r.path for r in style.records], args.workdir, "out_of_style", featurizer)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "demo": run(Path("data/demo"), args.workdir, featurizer, (style_embeddings, style.label_array.astype(str))),
        "heldout_scenes": run(args.heldout / "scenes", args.workdir, featurizer, None),
    }
    for name in ("demo", "heldout_scenes"):
        print(f"\n{name}: {report[name]['n_images']} images, {report[name]['n_test']} test")
        for ranker, row in report[name]["rankers"].items():
            print(
                f"  {ranker:<10} "
                + "  ".join(
                    f"{key}={value if isinstance(value, str) else round(value, 3)}" for key, value in row.items()
                )
            )
    out = Path("benchmarks/results/quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
