"""URL-list import from a local HTTP server (127.0.0.1, never the internet): 200 lines, 20 % broken.

The good entries serve distinct demo photos (some through redirects, chunked encoding or a first
503); the broken ones are 404, 500, slow (longer than the timeout), HTML pages, oversize (declared
and chunked) and truncated images. Runs the import twice (the second run must skip everything:
resume) and prints a table; writes JSON (default ``benchmarks/results/ingest.json``).

    python benchmarks/ingest.py [--lines 200] [--broken 0.2] [--workers 8] [--timeout 2] [--retries 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from http_fixture import ServerState, serve

from core.ingest import IngestConfig, import_urls

BROKEN_ROUTES = ("404", "500", "slow", "html", "big-declared", "big-chunked", "truncated")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--broken", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--max-bytes", type=int, default=2 * 1024 * 1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.json")
    return parser


def build_list(
    base: str, photos: list[Path], n_lines: int, broken_share: float, rng: np.random.Generator
) -> tuple[list[str], Counter]:
    n_broken = round(n_lines * broken_share)
    kinds = [BROKEN_ROUTES[i % len(BROKEN_ROUTES)] for i in range(n_broken)]
    lines, planned = [], Counter()
    for n, photo in enumerate(photos[: n_lines - n_broken]):
        route = ("img", "img", "img", "redirect", "chunked", "flaky/1")[n % 6]
        lines.append(f"{photo.parent.name}\t{base}/{route}/{photo.parent.name}__{photo.name}")
        planned["good"] += 1
    for kind in kinds:
        suffix = f"/{photos[0].parent.name}__{photos[0].name}" if kind == "truncated" else ""
        lines.append(f"broken\t{base}/{kind}{suffix}?n={len(lines)}")
        planned[kind] += 1
    order = rng.permutation(len(lines))
    return ["# benchmark list: label<TAB>url"] + [lines[i] for i in order], planned


def main(args: argparse.Namespace) -> dict:
    photos = sorted(args.data.glob("*/*.jpg"))
    state = ServerState(
        {f"{p.parent.name}__{p.name}": p.read_bytes() for p in photos},
        slow_seconds=args.timeout + 1,
        big_bytes=args.max_bytes * 2,
    )
    config = IngestConfig(
        workers=args.workers, timeout=args.timeout, retries=args.retries, backoff=0.2, max_bytes=args.max_bytes
    )
    with serve(state) as base, tempfile.TemporaryDirectory() as tmp:
        lines, planned = build_list(base, photos, args.lines, args.broken, np.random.default_rng(args.seed))
        listing = Path(tmp) / "list.tsv"
        listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
        start = time.perf_counter()
        first = import_urls(listing, Path(tmp) / "out", config)
        first_seconds = time.perf_counter() - start
        start = time.perf_counter()
        second = import_urls(listing, Path(tmp) / "out", config)
        second_seconds = time.perf_counter() - start
        requests = sum(state.hits.values())
    reasons = Counter(item.reason.split(" (after")[0].split(": ")[0] for item in first.with_status("failed"))
    result = {
        "lines": args.lines,
        "planned": dict(planned),
        "config": vars(args) | {"data": str(args.data), "out": str(args.out)},
        "first_run": {"seconds": first_seconds, "counts": first.counts()},
        "resume_run": {"seconds": second_seconds, "counts": second.counts()},
        "http_requests": requests,
        "failure_reasons": dict(reasons),
        "failed_examples": [
            {"line": i.line, "url": i.url, "reason": i.reason, "attempts": i.attempts}
            for i in first.with_status("failed")[:8]
        ],
    }
    print(
        f"{args.lines} lines ({dict(planned)}), {args.workers} workers, timeout {args.timeout:g} s, {args.retries} retries"
    )
    print(
        f"{'run':<8} {'seconds':>8} {'downloaded':>10} {'present':>8} {'failed':>7} {'duplicate':>9} {'malformed':>9}"
    )
    for name, report, seconds in (("first", first, first_seconds), ("resume", second, second_seconds)):
        c = report.counts()
        print(
            f"{name:<8} {seconds:>8.2f} {c['downloaded']:>10} {c['present']:>8} {c['failed']:>7} {c['duplicate']:>9} {c['malformed']:>9}"
        )
    print(f"HTTP requests served: {requests}")
    print("failure reasons:")
    for reason, count in reasons.most_common():
        print(f"  {count:>3}  {reason}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
