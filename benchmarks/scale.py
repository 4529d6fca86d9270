"""Scale benchmark: time and peak RSS of full-gallery evaluation, label errors with the k-NN graph, and the quick
learned-ranker fits, at 2k / 20k / 60k real photos and 10^6 synthetic unit vectors.

    nice -n 10 .venv/bin/python -m benchmarks.scale                          # every size and case
    nice -n 10 .venv/bin/python -m benchmarks.scale --sizes 2k 20k --cases eval knn
    nice -n 10 .venv/bin/python -m benchmarks.scale --sizes 60k --cases quality   # sampled vs full projection fit

Real sets: the Fashion-MNIST folders of ``scripts/heldout_data.py`` (``~/.cache/workbench/heldout/fmnist_<size>``),
embedded once with the workbench's own featurizer (``python -m workbench featurize --data <folder> --workdir
/tmp/scale-wd-<size>``); the embeddings are read straight from that workdir's feature cache and matched to their
labels by content hash. ``1m``: synthetic unit vectors, 1280-d (EfficientNet-Lite0's width), 10 labels of 5 looks
each (a label centre plus a look offset plus Gaussian noise) and a fifth of the rows drawn from looks shared by
every label, so neighbours and metrics are meaningful (recall@1 0.87 on a 20k draw).

Each (size, case) runs in its own process, so its peak RSS (``ru_maxrss``) is its own; ``rss_before_mb`` is the
process after loading the data and before the timed step. ``seconds`` is wall time, ``cpu_s`` the process's CPU
time (user + system, all threads) for the step: on a shared, overloaded machine the second is the steadier figure. Rows are split 70/30 per label (seed 0) as a workspace
would; evaluation queries are a stratified sample of 2,000 test rows against the whole gallery, k capped at 1,000.
Cases:

* ``eval``: :func:`core.evaluate.evaluate_retrieval` (cosine) on the sample.
* ``knn``: :func:`core.knn.knn_graph` (k = 10, cosine, ``auto``) plus :func:`core.label_errors.likely_label_errors`
  on it; the graph's recall@10 against the exact one is measured on 500 rows (not timed).
* ``fit_svm`` / ``fit_projection``: the learned rankers' ``fit`` on the training rows (the SVM on 100 comparative
  sets per label, as ``prepare`` draws them).
* ``quality``: the projection fitted with the default caps, with twice their rows and steps, and without any
  (every training row, 40 full epochs), each scored on 2,000 test queries against the test rows (no k cap: exact MAP@R).

Writes a table to stdout and JSON to ``benchmarks/results/scale.json`` with the load average beside every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.artifacts import atomic_write_json, environment_versions

log = logging.getLogger("benchmarks.scale")

SIZES = ("2k", "20k", "60k", "1m")
CASES = ("eval", "knn", "fit_svm", "fit_projection")
HELDOUT = Path.home() / ".cache/workbench/heldout"
SYNTHETIC_DIM = 1280
SYNTHETIC_LABELS = 10
SYNTHETIC_LOOKS = 5
SYNTHETIC_NOISE = 3.5
SYNTHETIC_SHARED = 0.2


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--cases", nargs="+", choices=(*CASES, "quality"), default=list(CASES))
    parser.add_argument("--heldout", type=Path, default=HELDOUT, help="folder of the fmnist_<size> sets")
    parser.add_argument("--workdirs", default="/tmp/scale-wd-{size}", help="featurized workdir per size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    parser.add_argument(
        "--quality-fits",
        nargs="+",
        choices=("cosine", "projection_capped", "projection_capped_2x", "projection_full"),
        default=["cosine", "projection_capped", "projection_full"],
        help="what the quality case fits and scores",
    )
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "CASE", "OUT"), help=argparse.SUPPRESS)
    return parser


# --- data ----------------------------------------------------------------------------------------------------


def real_data(size: str, heldout: Path, workdirs: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of ``fmnist_<size>`` from the workdir's feature cache, matched by content hash."""
    folder = heldout / f"fmnist_{size}"
    label_of = {
        hashlib.sha256(path.read_bytes()).hexdigest(): path.parent.name for path in sorted(folder.glob("*/*.png"))
    }
    caches = sorted(Path(workdirs.format(size=size)).glob("*/features/*.npz"))
    caches = [path for path in caches if ".part-" not in path.name]
    if not caches:
        raise SystemExit(f"{workdirs.format(size=size)}: no feature cache; run `python -m workbench featurize` first")
    with np.load(caches[0], allow_pickle=False) as archive:
        hashes, embeddings = archive["sha256"], archive["embeddings"]
    keep = np.array([str(digest) in label_of for digest in hashes])
    labels = np.array([label_of[str(digest)] for digest in hashes[keep]])
    if len(labels) != len(label_of):
        raise SystemExit(f"{caches[0]}: {len(labels)} of {len(label_of)} photos of {folder} embedded")
    return np.ascontiguousarray(embeddings[keep], np.float32), labels


def synthetic_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows: a label centre, plus one of the label's look offsets (0.8x), plus Gaussian noise.

    A fifth of the rows (:data:`SYNTHETIC_SHARED`) take their look from a pool shared by every label instead, with
    a weaker label centre (0.3x): photos that look alike across labels, so recall@1 is below 1.
    """
    centres = rng.standard_normal((SYNTHETIC_LABELS, SYNTHETIC_DIM), dtype=np.float32)
    looks = 0.8 * rng.standard_normal((SYNTHETIC_LABELS + 1, SYNTHETIC_LOOKS, SYNTHETIC_DIM), dtype=np.float32)
    label_ids = rng.integers(0, SYNTHETIC_LABELS, n)
    shared = rng.random(n) < SYNTHETIC_SHARED
    look_owner = np.where(shared, SYNTHETIC_LABELS, label_ids)  # row SYNTHETIC_LABELS of ``looks``: the shared pool
    look_ids = rng.integers(0, SYNTHETIC_LOOKS, n)
    centre_weight = np.where(shared, 0.3, 1.0).astype(np.float32)[:, None]
    rows = np.empty((n, SYNTHETIC_DIM), np.float32)
    for start in range(0, n, 50_000):
        block = slice(start, min(start + 50_000, n))
        part = rng.standard_normal((block.stop - block.start, SYNTHETIC_DIM), dtype=np.float32)
        part *= SYNTHETIC_NOISE
        part += centre_weight[block] * centres[label_ids[block]]
        part += looks[look_owner[block], look_ids[block]]
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        rows[block] = part
    return rows, np.array([f"label_{i:02d}" for i in range(SYNTHETIC_LABELS)])[label_ids]


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 70/30 split per label (seed 0), as a workspace prepares one."""
    from core.data import stratified_split

    parts = stratified_split(labels, 0.7, np.random.default_rng(0))
    return np.sort(parts.train), np.sort(parts.test)


def rss_mb() -> float:
    """The current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (every thread): a figure the machine's load hardly moves."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- one case, in a child process ----------------------------------------------------------------------------


def run_case(size: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load the data, run ``case`` once, return its figures."""
    from core.evaluate import evaluate_retrieval, sample_queries
    from core.rankers import CosineRanker

    if size == "1m":
        embeddings, labels = synthetic_data(1_000_000, np.random.default_rng(0))
    else:
        embeddings, labels = real_data(size, args.heldout, args.workdirs)
    train, test = split(labels)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"rows": len(embeddings), "dim": int(embeddings.shape[1])}
    before = rss_mb()
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    if case == "eval":
        queries = sample_queries(test, labels, 2_000, rng)
        result = evaluate_retrieval(CosineRanker(), embeddings, labels, queries, (1, 5, 10))
        out |= {
            "queries": result.n_queries,
            "k_searched": result.k_searched,
            "n_truncated": result.n_truncated,
            "recall@1": result.metrics["recall@1"],
            "map@r": result.metrics["map@r"],
        }
    elif case == "knn":
        from core.knn import knn_graph
        from core.label_errors import likely_label_errors
        from core.rankers import top_k

        graph = knn_graph(embeddings, 10, CosineRanker())
        suspects = likely_label_errors(CosineRanker(), embeddings, labels, 10, graph=graph)
        out |= {"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu_before}
        out |= {"method": graph.method, "suspects": len(suspects)}
        rows = np.sort(rng.choice(len(embeddings), 500, replace=False))
        found, found_scores = top_k(CosineRanker(), embeddings[rows], embeddings, 11)
        exact = [[j for j in row if j != i][:10] for i, row in zip(rows, found.tolist(), strict=True)]
        # where many rows are about equally near (isotropic noise), recall is a lottery: compare the scores too
        out["mean_score@10_exact"] = float(found_scores[:, 1:].mean())
        out["mean_score@10_graph"] = float(graph.scores[rows].mean())
        out["recall@10_vs_exact"] = float(
            np.mean([len(set(graph.indices[i].tolist()) & set(row)) / 10 for i, row in zip(rows, exact, strict=True)])
        )
    elif case == "fit_svm":
        from core.data import make_comparative_sets
        from core.svm import SVMRanker

        sets = make_comparative_sets(labels[train].astype(object), 100, 99, rng)
        SVMRanker().fit(embeddings[train], labels[train], sets)
        out |= {"train_rows": len(train), "sets": len(sets)}
    elif case == "fit_projection":
        from core.metric_learning import ProjectionRanker

        ranker = ProjectionRanker().fit(embeddings[train], labels[train])
        out |= {"train_rows": len(train), "label_space": ranker.label_space}
    elif case == "quality":
        out |= quality(embeddings, labels, train, test, rng, args.quality_fits)
    else:
        raise SystemExit(f"unknown case {case!r}")
    out.setdefault("seconds", time.perf_counter() - start)
    out.setdefault("cpu_s", cpu_seconds() - cpu_before)
    out |= {
        "rss_before_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    return out


def quality(
    embeddings: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    rng: np.random.Generator,
    fits: list[str],
) -> dict[str, Any]:
    """MAP@R and recall@1 of 2,000 test queries among the test rows: cosine, the capped fit, the uncapped fit."""
    from core.evaluate import evaluate_retrieval, sample_queries
    from core.metric_learning import ProjectionConfig, ProjectionRanker
    from core.rankers import CosineRanker

    gallery, gallery_labels = embeddings[test], labels[test]
    queries = sample_queries(np.arange(len(test)), gallery_labels, 2_000, rng)
    figures: dict[str, Any] = {}
    for name, ranker_of in [
        ("cosine", lambda: CosineRanker()),
        ("projection_capped", lambda: ProjectionRanker().fit(embeddings[train], labels[train])),
        (
            "projection_capped_2x",
            lambda: ProjectionRanker(ProjectionConfig(max_train_rows=20_000, max_steps=600)).fit(
                embeddings[train], labels[train]
            ),
        ),
        (
            "projection_full",
            lambda: ProjectionRanker(ProjectionConfig(max_train_rows=None, max_steps=None)).fit(
                embeddings[train], labels[train]
            ),
        ),
    ]:
        if name not in fits:
            continue
        start = time.perf_counter()
        ranker = ranker_of()
        fit_seconds = time.perf_counter() - start
        result = evaluate_retrieval(ranker, gallery, gallery_labels, queries, (1,), max_k=None)
        map_ci = result.interval("map@r", np.random.default_rng(0))  # bootstrap
        recall_ci = result.interval("recall@1", np.random.default_rng(0))  # Wilson score
        figures[name] = {
            "fit_seconds": fit_seconds,
            "map@r": result.metrics["map@r"],
            "recall@1": result.metrics["recall@1"],
            "map@r_ci": [map_ci.value, map_ci.low, map_ci.high],
            "recall@1_ci": [recall_ci.value, recall_ci.low, recall_ci.high],
        }
        log.info("quality %s: %s", name, figures[name])
    return figures


# --- the parent: every case in its own process ---------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.child:
        size, case, out = args.child
        Path(out).write_text(json.dumps(run_case(size, case, args)))
        return 0
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for case in args.cases:
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                command = [sys.executable, "-m", "benchmarks.scale", "--child", size, case, handle.name]
                command += ["--heldout", str(args.heldout), "--workdirs", args.workdirs]
                command += ["--quality-fits", *args.quality_fits]
                started = time.perf_counter()
                try:
                    done = subprocess.run(command, timeout=args.timeout, check=False)
                    text = Path(handle.name).read_text()
                    row = json.loads(text) if done.returncode == 0 and text else {"error": f"exit {done.returncode}"}
                except subprocess.TimeoutExpired:
                    row = {"error": f"killed after {args.timeout:.0f} s"}
            row = {"size": size, "case": case, "wall_s": time.perf_counter() - started, **row}
            rows.append(row)
            print(format_row(row), flush=True)
    print()
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    merged = {(row["size"], row["case"]): row for row in previous.get("rows", [])}
    merged |= {(row["size"], row["case"]): row for row in rows}
    atomic_write_json(
        args.out,
        {"versions": environment_versions(), "cpus": os.cpu_count(), "rows": list(merged.values())},
    )
    log.info("wrote %s", args.out)
    return 0


def format_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['size']:>4} {row['case']:<15} {row['error']}"
    extra = {
        key: value
        for key, value in row.items()
        if key
        not in (
            "size",
            "case",
            "seconds",
            "cpu_s",
            "peak_rss_mb",
            "rss_before_mb",
            "load_before",
            "load_after",
            "wall_s",
        )
    }
    return (
        f"{row['size']:>4} {row['case']:<15} {row['seconds']:>9.1f} s (cpu {row.get('cpu_s', float('nan')):.0f} s)  peak {row['peak_rss_mb'] / 1024:>6.2f} GB "
        f"(data {row['rss_before_mb'] / 1024:.2f} GB)  load {row['load_before']:.1f}->{row['load_after']:.1f}  "
        f"{json.dumps(extra, default=float)}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """Wall seconds (CPU seconds) per size and case, with the 20k / 2k ratios of both."""
    sizes = list(dict.fromkeys(row["size"] for row in rows))
    cases = list(dict.fromkeys(row["case"] for row in rows))
    by_key = {(row["size"], row["case"]): row for row in rows if "seconds" in row}
    header = f"{'case':<15}" + "".join(f"{size:>16}" for size in sizes) + f"{'20k/2k wall':>13}{'cpu':>6}"
    lines = [header, "-" * len(header)]
    for case in cases:
        cells = "".join(
            f"{by_key[(size, case)]['seconds']:>8.1f} ({by_key[(size, case)].get('cpu_s', float('nan')):>4.0f})"
            if (size, case) in by_key
            else f"{'-':>16}"
            for size in sizes
        )
        small, large = by_key.get(("2k", case)), by_key.get(("20k", case))
        if small and large:
            wall = large["seconds"] / small["seconds"]
            cpu = large.get("cpu_s", float("nan")) / max(small.get("cpu_s", float("nan")), 1e-9)
            ratios = f"{wall:>13.1f}{cpu:>6.1f}"
        else:
            ratios = f"{'-':>13}{'-':>6}"
        lines.append(f"{case:<15}{cells}{ratios}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
