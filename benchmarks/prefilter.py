"""Siamese ranker with and without the classifier pre-filter: accuracy and speed on one workspace.

Uses the workspace's prepared sets, cached features and saved Siamese ranker (run ``python -m workbench fit --ranker siamese`` first).
The pre-filter is a logistic regression on the training embeddings. Prints a table and writes JSON.

    python benchmarks/prefilter.py [--data DIR] [--workdir artifacts] [--run RUN] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset folder (default: the bundled demo)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--run", default="pretrained", help="fine-tuned run (default: pretrained)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prefilter.json")
    return parser


def main(args: argparse.Namespace) -> None:
    import numpy as np

    from core.evaluate import evaluate
    from core.rankers import top_k
    from core.siamese import PrefilteredRanker
    from workbench.workspace import WorkspaceSpec, configure, open_workspace

    ws = open_workspace(WorkspaceSpec(configure(data={"root": args.data}), args.workdir, args.run))
    prepared, featurizer, embeddings = ws.prepared, ws.featurizer, ws.embeddings
    siamese = ws.ranker("siamese")
    labels = prepared.dataset.label_array
    train = prepared.split.train
    prefiltered = PrefilteredRanker(siamese, None).fit(embeddings[train], labels[train])
    queries = embeddings[prepared.test_sets.queries]
    rows = []
    for ranker in (siamese, prefiltered):
        result = evaluate(ranker, embeddings, labels, prepared.test_sets, np.random.default_rng(0))
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            top_k(ranker, queries, embeddings, 10)
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "ranker": ranker.name,
                "mean_rank": result.mean_rank.value,
                "top1": result.top1.value,
                "top5": result.top5.value,
                "ms_per_query": 1000 * statistics.median(seconds) / len(queries),
            }
        )
    print(f"{featurizer.fingerprint}: {len(queries)} test queries against the whole {len(embeddings)}-image gallery")
    print(f"{'ranker':<20} {'mean rank':>9} {'top-1':>7} {'top-5':>7} {'ms/query':>9}")
    for row in rows:
        print(
            f"{row['ranker']:<20} {row['mean_rank']:>9.2f} {row['top1']:>7.1%} {row['top5']:>7.1%} {row['ms_per_query']:>9.2f}"
        )
    print(f"pre-filter speed-up {rows[0]['ms_per_query'] / rows[1]['ms_per_query']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"featurizer": featurizer.fingerprint, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
