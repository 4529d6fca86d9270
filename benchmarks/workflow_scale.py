"""The CLI a user runs on their own folder, timed at several folder sizes: each step is a fresh
``python -m workbench`` process, measured for wall time and peak RSS (``os.wait4``), with the load average.

Steps per folder: ``prepare`` (first look: every photo read once into the catalogue), ``featurize`` (embeddings;
``--features-from`` copies an existing feature cache so that only the rest is measured), ``fit --missing`` (the
quick learned rankers), ``evaluate --ranker cosine``, ``search`` three times (median), and ``search`` again after
10 photos were added and 10 removed (the catalogue follows the folder).

Prints a table, the growth ratio between the first two sizes, and writes JSON
(default ``benchmarks/results/workflow_scale.json``).

    python benchmarks/workflow_scale.py [--folders DIR ...] [--features-from WORKDIR ...] [--base /tmp/wfscale]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HELDOUT = Path.home() / ".cache" / "workbench" / "heldout"
DEFAULT_FOLDERS = [HELDOUT / "fmnist_2k", HELDOUT / "fmnist_20k", HELDOUT / "fmnist_60k"]


def timed(command: list[str], log_path: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit code of one child process."""
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", nargs="*", type=Path, default=DEFAULT_FOLDERS)
    parser.add_argument(
        "--features-from", nargs="*", type=Path, default=[], help="workdirs whose feature caches to reuse"
    )
    parser.add_argument("--base", type=Path, default=Path("/tmp/wfscale"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "workflow_scale.json")
    args = parser.parse_args()

    from core.workdir import WorkDir

    rows: list[dict[str, object]] = []
    args.base.mkdir(parents=True, exist_ok=True)
    log_path = args.base / "commands.log"
    for folder in args.folders:
        if not folder.is_dir():
            print(f"{folder}: missing (scripts/heldout_data.py writes it); skipped", file=sys.stderr)
            continue
        data = args.base / "data" / folder.name
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(folder, data)
        workdir = args.base / "work" / folder.name
        shutil.rmtree(workdir, ignore_errors=True)
        features = WorkDir(workdir, data).features
        for source in args.features_from:
            for cache in source.glob(f"{folder.name}-*/features/*.npz"):
                if ".part-" not in cache.name:
                    features.mkdir(parents=True, exist_ok=True)
                    shutil.copy(cache, features / cache.name)
        common = ["--data", str(data), "--workdir", str(workdir)]
        query = str(sorted(data.glob("*/*.png"))[0])
        cli = [sys.executable, "-m", "workbench"]
        steps = [
            ("prepare", [*cli, "prepare", *common]),
            ("featurize", [*cli, "featurize", *common]),
            ("fit --missing", [*cli, "fit", "--missing", *common]),
            ("evaluate cosine", [*cli, "evaluate", "--ranker", "cosine", *common]),
        ]
        for name, command in steps:
            seconds, rss, code = timed(command, log_path)
            rows.append({"folder": folder.name, "step": name, "seconds": seconds, "peak_rss_mb": rss, "rc": code,
                         "load": os.getloadavg()[0]})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
        searches = [timed([*cli, "search", query, "-k", "10", *common], log_path) for _ in range(3)]
        rows.append({"folder": folder.name, "step": "search (median of 3)",
                     "seconds": statistics.median(s for s, _, _ in searches),
                     "peak_rss_mb": max(r for _, r, _ in searches), "rc": max(c for _, _, c in searches),
                     "load": os.getloadavg()[0]})  # fmt: skip
        photos = sorted(data.glob("*/*.png"))
        for index, path in enumerate(photos[:10]):
            path.with_name(f"added_{index}.png").write_bytes(path.read_bytes() + b"\0")
        for path in photos[-10:]:
            path.unlink()
        seconds, rss, code = timed([*cli, "search", query, "-k", "10", *common], log_path)
        rows.append({"folder": folder.name, "step": "search after +10/-10", "seconds": seconds, "peak_rss_mb": rss,
                     "rc": code, "load": os.getloadavg()[0]})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)

    folders = list(dict.fromkeys(str(row["folder"]) for row in rows))
    steps_seen = list(dict.fromkeys(str(row["step"]) for row in rows))
    print(f"{'step':<22}" + "".join(f"{name:>26}" for name in folders) + "   ratio 2nd/1st")
    for step in steps_seen:
        cells, seconds = [], []
        for name in folders:
            match = [row for row in rows if row["folder"] == name and row["step"] == step]
            if match:
                row = match[0]
                seconds.append(float(row["seconds"]))  # type: ignore[arg-type]
                failed = "" if row["rc"] == 0 else f" rc={row['rc']}"
                cells.append(f"{row['seconds']:.1f} s {row['peak_rss_mb']:.0f} MB{failed}")
            else:
                cells.append("-")
        ratio = f"{seconds[1] / seconds[0]:.1f}" if len(seconds) > 1 and seconds[0] > 0 else "-"
        print(f"{step:<22}" + "".join(f"{cell:>26}" for cell in cells) + f"   {ratio:>6}")
    print(f"load average now: {os.getloadavg()}; commands and their output: {log_path}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "loadavg_end": os.getloadavg()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
