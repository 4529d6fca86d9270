"""Following a dataset folder: what a refresh of the catalogue and opening the prepared data cost, by folder size.

For each real folder (default: the Fashion-MNIST PNG folders ``scripts/heldout_data.py`` writes) and for a
synthetic folder of empty files standing in for 10^6 photos (its catalogue is written directly: reading and
decoding a million real photos is a featurize-sized job, not what is measured here), each case runs in a fresh
subprocess and reports wall time and peak RSS:

- ``first``: the first refresh (every file read, hashed, decoded and dhashed) and prepare;
- ``unchanged-deep``: a refresh that stats every file and reads none, then loads the prepared data;
- ``unchanged-quick``: the same with folder times only (what opening a large folder does);
- ``changed``: 10 photos added and 10 removed, deep refresh and prepare again;
- for the synthetic folder, ``open + search``: random unit vectors written as its gallery rows (1280-d float32,
  5 GB at 10^6; the feature cache is not involved), then ``open_workspace`` (catalogue header, folder times,
  prepared arrays, memory-mapped rows, the cached ONNX featurizer) and three exact cosine searches of the whole
  gallery (median), each in a fresh process.

Prints a table with the machine's load average and writes JSON (default ``benchmarks/results/catalogue.json``).

    python benchmarks/catalogue.py [--folders DIR ...] [--synthetic 1000000] [--workdir /tmp/catalogue-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELDOUT = Path.home() / ".cache" / "workbench" / "heldout"
DEFAULT_FOLDERS = [HELDOUT / "fmnist_2k", HELDOUT / "fmnist_20k", HELDOUT / "fmnist_60k"]


def _case(folder: str, workdir: str, case: str) -> dict[str, float]:
    """One measured step in this (fresh) process."""
    from core.workdir import WorkDir
    from workbench.workspace import configure, refresh_data

    config = configure(data={"root": Path(folder)}).data
    layout = WorkDir(Path(workdir), Path(folder))
    start = time.perf_counter()
    state = refresh_data(config, layout, deep=case != "unchanged-quick")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images": len(state.prepared.dataset),
        "read": state.changes.read,
        "changes": state.changes.summary(),
    }


def _open_and_search(folder: str, workdir: str) -> dict[str, float]:
    """Open the synthetic folder's workspace and search it (the rows file must exist)."""
    import statistics

    from PIL import Image

    from workbench.workspace import WorkspaceSpec, configure, open_workspace

    spec = WorkspaceSpec(configure(data={"root": Path(folder)}), Path(workdir))
    start = time.perf_counter()
    ws = open_workspace(spec)
    opened = time.perf_counter() - start
    query = Image.new("RGB", (256, 256), (120, 80, 40))
    searches = []
    for _ in range(3):
        start = time.perf_counter()
        ws.search(query, "cosine", 10)
        searches.append(time.perf_counter() - start)
    return {
        "seconds": opened,
        "search_p50_s": statistics.median(searches),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images": len(ws.dataset),
        "read": ws.changes.read,
        "changes": ws.changes.summary(),
    }


def _write_synthetic_rows(folder: Path, workdir: Path, dim: int = 1280) -> None:
    """Random unit vectors as the gallery rows of the synthetic folder's workspace (written once)."""
    import numpy as np

    from workbench.workspace import (
        WorkspaceSpec,
        configure,
        gallery_rows_path,
        known_fingerprint,
        make_featurizer,
        refresh_data,
    )

    spec = WorkspaceSpec(configure(data={"root": folder}), workdir)
    prepared = refresh_data(spec.config.data, spec.layout).prepared
    fingerprint = known_fingerprint(spec) or make_featurizer(spec).fingerprint
    path = gallery_rows_path(spec, prepared, fingerprint)
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), "w+", np.float32, (len(prepared.dataset), dim))
    rng = np.random.default_rng(0)
    for start in range(0, len(rows), 50_000):
        block = rng.standard_normal((min(50_000, len(rows) - start), dim), dtype=np.float32)
        rows[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows.flush()
    del rows
    path.with_suffix(".tmp.npy").rename(path)


def _run_case(folder: Path, workdir: Path, case: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--case", case, "--one", str(folder), "--workdir", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _change_folder(folder: Path, round_: int) -> None:
    """Add 10 photos (copies of existing ones with a byte appended: new content) and remove 10 others."""
    photos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in {".png", ".jpg"})
    for index, path in enumerate(photos[:10]):
        path.with_name(f"bench_added_{round_}_{index}{path.suffix}").write_bytes(path.read_bytes() + bytes([round_]))
    for path in photos[-10:]:
        path.unlink()


def _synthetic_folder(count: int, base: Path) -> Path:
    """``count`` empty files in 10 label folders of 1,000-file sub-folders, and a catalogue written for them
    directly (random content hashes), as if every file had been read once."""
    import numpy as np

    from core.catalogue import _HASH_BYTES, Catalogue, _list_folder, save_catalogue
    from core.workdir import WorkDir

    folder = base / f"synthetic_{count}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        per_label = count // 10
        for label in range(10):
            for start in range(0, per_label, 1000):
                sub = folder / f"label{label}" / f"part{start // 1000:04d}"
                sub.mkdir(parents=True)
                for index in range(start, min(start + 1000, per_label)):
                    (sub / f"img{index:07d}.png").touch()
        marker.touch()
    listing = _list_folder(folder)
    rng = np.random.default_rng(0)
    hashes = tuple(bytes(row).hex() for row in rng.integers(0, 256, (len(listing.paths), 32), dtype=np.uint8))
    catalogue = Catalogue(
        folder,
        tuple(listing.paths),
        tuple(listing.labels),
        listing.size,
        listing.mtime_ns,
        listing.inode,
        hashes,
        rng.integers(0, 256, (len(listing.paths), _HASH_BYTES), dtype=np.uint8),
        ("",) * len(listing.paths),
        (),
        tuple(listing.directories),
        np.array(list(listing.directories.values()), np.int64),
        taken_ns=time.time_ns() + 3_000_000_000,  # as if listed a while after the files were made (none racy)
    )
    layout = WorkDir(base / "work", folder)
    layout.catalogue.parent.mkdir(parents=True, exist_ok=True)
    save_catalogue(catalogue, layout.catalogue)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", nargs="*", type=Path, default=DEFAULT_FOLDERS)
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="0: no synthetic folder")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/catalogue-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "catalogue.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case == "open":
        print(json.dumps(_open_and_search(args.one, str(args.workdir))))
        return
    if args.case:
        print(json.dumps(_case(args.one, str(args.workdir), args.case)))
        return

    rows = []
    for folder in args.folders:
        if not folder.is_dir():
            print(f"{folder}: missing (scripts/heldout_data.py writes it); skipped", file=sys.stderr)
            continue
        work_folder = args.workdir / "data" / folder.name
        shutil.rmtree(work_folder, ignore_errors=True)
        shutil.copytree(folder, work_folder)
        workdir = args.workdir / "work"
        shutil.rmtree(workdir, ignore_errors=True)
        for case in ("first", "unchanged-deep", "unchanged-quick", "changed"):
            if case == "changed":
                _change_folder(work_folder, 1)
            result = _run_case(work_folder, workdir, case)
            rows.append({"folder": folder.name, "case": case, **result, "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.synthetic:
        folder = _synthetic_folder(args.synthetic, args.workdir)
        for case in ("first", "unchanged-deep", "unchanged-quick"):
            # "first" here = the first prepare over a catalogue already written (files are empty: nothing to read)
            result = _run_case(folder, args.workdir / "work", case)
            rows.append({"folder": folder.name, "case": case, **result, "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), file=sys.stderr)
        _write_synthetic_rows(folder, args.workdir / "work")
        result = _run_case(folder, args.workdir / "work", "open")
        rows.append({"folder": folder.name, "case": "open + search", **result, "load": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"{'folder':<18} {'case':<16} {'images':>8} {'read':>8} {'seconds':>9} {'peak RSS MB':>12} {'load':>5}")
    for row in rows:
        search = f"  search p50 {row['search_p50_s']:.2f} s" if "search_p50_s" in row else ""
        print(
            f"{row['folder']:<18} {row['case']:<16} {row['images']:>8} {row['read']:>8} {row['seconds']:>9.2f} "
            f"{row['peak_rss_mb']:>12.0f} {row['load']:>5.2f}{search}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "uptime": os.getloadavg()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
