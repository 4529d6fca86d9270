#!/usr/bin/env python3
"""Derive the demo's visible attributes (setting, colour) from its pixels and write ``<data>/attributes.csv``.

The rules live in :mod:`core.attributes` (``setting_of``, ``dominant_colour``); this script applies them to every
image of a folder-per-label dataset, in sorted path order, and prints the counts. Deterministic: the same photos
give the same file. ``docs/attributes.md`` describes the rules, the counts on the demo and where they disagree with
the eye.

Usage::

    .venv/bin/python scripts/demo_attributes.py                 # -> data/demo/attributes.csv
    .venv/bin/python scripts/demo_attributes.py --data DIR --check   # compare with the committed file, write nothing
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.attributes import ATTRIBUTES_FILE, DERIVED, derive_attributes, read_attributes, write_attributes  # noqa: E402
from core.data import scan_folder  # noqa: E402
from core.images import load_image  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo", help="folder-per-label dataset")
    parser.add_argument("--out", type=Path, help=f"attributes file to write (default: <data>/{ATTRIBUTES_FILE})")
    parser.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    return parser


def derive_rows(root: Path) -> list[tuple[str, list[str]]]:
    """``(path relative to root, [value per derived attribute])`` for every usable image, sorted by path."""
    records = scan_folder(root, perceptual_hashes=False).dataset.records
    rows = []
    for record in sorted(records, key=lambda r: r.path.relative_to(root).as_posix()):
        values = derive_attributes(load_image(record.path))
        rows.append((record.path.relative_to(root).as_posix(), [values[name] for name in DERIVED]))
    return rows


def main(args: argparse.Namespace) -> int:
    out = args.out or args.data / ATTRIBUTES_FILE
    rows = derive_rows(args.data)
    names = list(DERIVED)
    for column, name in enumerate(names):
        counts = Counter(values[column] for _, values in rows)
        print(f"{name}: " + ", ".join(f"{value} {count}" for value, count in counts.most_common()))
    if args.check:
        saved = read_attributes(out)
        derived = dict(rows)
        differ = [
            str(path)
            for index, path in enumerate(saved.paths)
            if derived.get(str(path)) != [saved.values[name][index] for name in names]
        ]
        if differ or len(saved.paths) != len(rows):
            print(f"{out}: {len(differ)} rows differ from the rules, e.g. {', '.join(differ[:5])}", file=sys.stderr)
            return 1
        print(f"{out}: matches the rules ({len(rows)} images)")
        return 0
    write_attributes(out, names, rows)
    print(f"wrote {out} ({len(rows)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
