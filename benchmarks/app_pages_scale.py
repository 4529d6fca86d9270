"""The app's per-gallery and per-rerun costs at scale, on synthetic data (no model, no browser).

For N random unit vectors (1280-d, 10 labels) it times what the Explore page builds once per gallery (the PCA map of
a stratified sample of at most ``workbench.analysis.MAP_POINTS`` photos, and the figure a browser receives) and what
the Search and Explore pages' bounded gallery picker costs: its index, built once, then one page of names and one name
lookup per rerun. Prints one line per N with peak RSS and the load average; writes JSON.

    python benchmarks/app_pages_scale.py [--sizes 200000 1000000] [--map-sizes 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000], help="gallery sizes (picker)")
    parser.add_argument("--map-sizes", type=int, nargs="+", default=[200_000], help="sizes that also time the map")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_pages_scale.json")
    return parser


def synthetic_workspace(n: int, dim: int, with_embeddings: bool) -> SimpleNamespace:
    from core.data import ImageDataset, RecordColumns

    labels = [f"label{row % 10}" for row in range(n)]
    paths = tuple(f"{label}/photo_{row:07d}.png" for row, label in enumerate(labels))
    root = Path("/photos")
    embeddings = None
    if with_embeddings:
        embeddings = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return SimpleNamespace(
        embeddings=embeddings,
        seed=0,
        dataset=ImageDataset(RecordColumns(root, paths, labels, ["0" * 64] * n), root),
        relative_path=lambda record: str(record.path.relative_to(root)),
    )


def main(args: argparse.Namespace) -> None:
    import sklearn.decomposition  # noqa: F401  (imported once per app process: not part of a map's cost)

    from core.plots import embedding_map as map_figure
    from workbench.analysis import embedding_map
    from workbench.views import GalleryIndex

    rows = []
    for n in args.sizes:
        ws = synthetic_workspace(n, args.dim, n in args.map_sizes)
        row: dict[str, object] = {"n": n, "load_average": round(os.getloadavg()[0], 2)}
        row["data_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # the synthetic set
        if ws.embeddings is not None:
            start = time.perf_counter()
            mapping = embedding_map(ws, "pca")
            row["map_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            query = mapping.projection.transform(ws.embeddings[:1])[0]
            figure = map_figure(mapping.projection.points, mapping.labels, mapping.names, query, mapping.rows)
            row["figure_mb"] = round(len(figure.to_json()) / 1e6, 2)
            row["figure_seconds"] = round(time.perf_counter() - start, 2)
            row["map_points"] = len(mapping.rows)
        start = time.perf_counter()
        index = GalleryIndex.of(ws)
        row["picker_index_seconds"] = round(time.perf_counter() - start, 2)
        name = ws.dataset.relative_paths[-1]
        start = time.perf_counter()
        for _ in range(100):
            index.page(index.labels[-1], 3)
            index.row(name)
        row["picker_rerun_ms"] = round((time.perf_counter() - start) * 10, 3)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)
        rows.append(row)
        del ws
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
