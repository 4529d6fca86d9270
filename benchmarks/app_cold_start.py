"""Cold start of the app: seconds from launching ``streamlit run`` to a complete search-results grid.

Runs the app on a dataset and workdir (default: the bundled demo and ``artifacts/``; run ``make run`` or
``python -m workbench featurize`` once first so features are cached), drives headless Debian Chromium with
Playwright and repeats the whole start several times. Prints a table, writes JSON.

    python benchmarks/app_cold_start.py [--repeats 3] [--workdir artifacts]
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
sys.path.insert(0, str(ROOT / "tests"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_cold_start.json")
    return parser


def main(args: argparse.Namespace) -> None:
    import browser
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as playwright:
        chromium = browser.launch_chromium(playwright)
        for attempt in range(args.repeats):
            started = time.perf_counter()
            server = browser.start_app(args.data, args.workdir, ROOT / "test-artifacts" / "cold-start-server.log")
            healthy = time.perf_counter() - started
            try:
                page = chromium.new_page()
                browser.goto_app(page, server)
                results = browser.wait_for_results(page)
                interactive = time.perf_counter() - started
                page.close()
            finally:
                server.stop()
            rows.append(
                {"attempt": attempt + 1, "health_s": healthy, "results_s": interactive, "hits": len(results.hits)}
            )
        chromium.close()
    print(f"app cold start on {args.data} (workdir {args.workdir}), {args.repeats} starts")
    print(f"{'start':>5} {'health s':>9} {'results s':>10}")
    for row in rows:
        print(f"{row['attempt']:>5} {row['health_s']:>9.2f} {row['results_s']:>10.2f}")
    median = statistics.median(row["results_s"] for row in rows)
    print(f"median seconds to a complete results grid: {median:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "median_results_s": median}, indent=2) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
