"""The "no close match" signal measured: non-photos flagged, real photos not (issue 21, part 4).

For each gallery folder (default: the demo; also ``tests/fixtures/tiny`` and the Fashion-MNIST set of
``scripts/heldout_data.py`` when present) it opens the workspace (pretrained featurizer), calibrates the signal
(``core.out_of_gallery.calibrate``, as ``Workspace.match`` does) and judges three groups of queries:

* **non-photos not in the reference set**: other seeds of noise, other flat colours, other gradients, patterns
  and text than ``core.out_of_gallery.non_photos`` draws (a vertical colour ramp, a chart, a bar code, a page of
  large type, a dark terminal with other text): they should be flagged;
* **outside photos**: ``out_of_style`` of ``scripts/heldout_data.py`` (13 full-frame photos of plants and
  landmarks from Debian ``mate-backgrounds`` and ``scratch``, labelled with the demo's labels): on the demo they
  should not be flagged;
* **the gallery's own photos, each leaving itself out** (its best score is to another gallery image): none
  should be flagged.

It prints one line per query and a summary table, beside the old rule (best cosine below the 10 % quantile of
same-label nearest-neighbour scores), and writes JSON (default ``benchmarks/results/out_of_gallery.json``).

    python benchmarks/out_of_gallery.py [--data data/demo tests/fixtures/tiny] [--outside DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from PIL import Image, ImageDraw

from core.images import load_image
from core.out_of_gallery import MatchReference, calibrate
from workbench.workspace import WorkspaceSpec, configure, open_workspace

HELDOUT = Path.home() / ".cache/workbench/heldout"


def probe_non_photos(rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Non-photos drawn differently from the reference set (other seeds, colours, sizes, layouts)."""
    probes: list[tuple[str, Image.Image]] = []
    for index in range(3):
        probes.append((f"noise uniform {index}", Image.fromarray(rng.integers(0, 256, (300, 200, 3), np.uint8))))
    probes.append(
        ("noise gaussian", Image.fromarray(np.clip(rng.normal(90, 60, (224, 320, 3)), 0, 255).astype(np.uint8)))
    )
    probes.append(
        ("noise salt and pepper", Image.fromarray((rng.random((256, 256)) > 0.5).astype(np.uint8) * 255).convert("RGB"))
    )
    for name, colour in {"orange": (250, 140, 20), "purple": (110, 40, 150), "dark grey": (60, 60, 60)}.items():
        probes.append((f"flat {name}", Image.new("RGB", (320, 240), colour)))
    ramp = np.tile(np.linspace(0, 255, 256)[:, None], (1, 256))
    probes.append(
        ("gradient vertical colour", Image.fromarray(np.stack([ramp, 255 - ramp, ramp / 2], 2).astype(np.uint8)))
    )
    chart = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(chart)
    draw.line((40, 260, 380, 260), fill="black", width=2)
    draw.line((40, 20, 40, 260), fill="black", width=2)
    values = rng.random(20) * 200
    draw.line([(40 + 17 * i, 250 - v) for i, v in enumerate(values)], fill=(30, 90, 200), width=3)
    probes.append(("line chart", chart))
    widths = rng.integers(1, 6, 60)
    code = np.repeat((np.arange(60) % 2 * 255).astype(np.uint8), widths)
    probes.append(("bar code", Image.fromarray(np.tile(code, (120, 1))).convert("RGB").resize((320, 160))))
    page = Image.new("RGB", (300, 420), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    for row in range(12):
        draw.text(
            (20, 20 + 32 * row),
            "The quick brown fox jumps" if row % 2 else "over the lazy dog 0123",
            fill=(20, 20, 20),
            font_size=22,
        )
    probes.append(("page of text", page))
    terminal = Image.new("RGB", (500, 300), (0, 0, 40))
    draw = ImageDraw.Draw(terminal)
    for row in range(18):
        draw.text((6, 4 + 16 * row), f"[{row:02d}] INFO workbench: featurized {row * 37} images", fill=(255, 255, 255))
    probes.append(("terminal", terminal))
    return probes


def old_floor(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """The rule before: 10 % quantile of each image's best cosine to another image of its label."""
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    scores[labels[:, None] != labels[None, :]] = -np.inf
    best = scores.max(axis=1)
    return float(np.quantile(best[np.isfinite(best)], 0.1))


def judge(reference: MatchReference, gallery: np.ndarray, queries: np.ndarray, old: float) -> list[dict[str, Any]]:
    """Verdicts of the new and the old rule for query embeddings ``(n, D)``."""
    best = (queries @ gallery.T).max(axis=1)
    rows = []
    for query, score in zip(queries, best, strict=True):
        strength = reference.strength(query, float(score))
        rows.append(
            {
                "best": float(score),
                "non_photo": strength.non_photo,
                "non_photo_kind": strength.non_photo_kind,
                "flagged": not strength.close,
                "flagged_before": bool(score < old),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = [ROOT / "data/demo", ROOT / "tests/fixtures/tiny"]
    if (HELDOUT / "fmnist_2k").is_dir():
        defaults.append(HELDOUT / "fmnist_2k")
    parser.add_argument("--data", type=Path, nargs="+", default=defaults)
    parser.add_argument("--outside", type=Path, default=HELDOUT / "out_of_style")
    parser.add_argument(
        "--extra",
        type=Path,
        help="a folder of further images to judge, reported as their own group (e.g. the rendered wallpapers of "
        "Debian ukui-wallpapers and lomiri-wallpapers: illustrations, not photos)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/out_of_gallery-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/out_of_gallery.json")
    args = parser.parse_args()

    probes = probe_non_photos(np.random.default_rng(2024))
    outside = sorted(args.outside.glob("*/*.jpg")) if args.outside.is_dir() else []
    report: dict[str, Any] = {"load": os.getloadavg(), "galleries": {}}
    summary = []
    for folder in args.data:
        ws = open_workspace(WorkspaceSpec(configure(data={"root": folder}), args.workdir / folder.name))
        gallery = ws.embeddings
        start = time.perf_counter()
        reference = calibrate(gallery, ws.embed)
        seconds = time.perf_counter() - start
        old = old_floor(gallery, ws.dataset.label_array)
        groups: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
        groups["non-photos"] = (
            [name for name, _ in probes],
            judge(reference, gallery, ws.embed([im for _, im in probes]), old),
        )
        if outside:
            names = [f"{p.parent.name}/{p.stem}" for p in outside]
            groups["outside photos"] = (
                names,
                judge(reference, gallery, ws.embed([load_image(p) for p in outside]), old),
            )
        if args.extra is not None:
            extra = sorted(p for p in args.extra.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            groups["extra"] = (
                [p.stem for p in extra],
                judge(reference, gallery, ws.embed([load_image(p) for p in extra]), old),
            )
        own = []
        for index in range(len(gallery)):  # each gallery photo against the others
            others = np.delete(gallery, index, axis=0)
            own.extend(judge(reference, others, gallery[index : index + 1], old))
        groups["gallery, leave-one-out"] = ([str(r.path.relative_to(folder)) for r in ws.dataset.records], own)
        print(
            f"\n{folder} ({len(gallery)} images): floor {reference.floor:.3f} (old {old:.3f}), calibrated in {seconds:.2f} s"
        )
        for group, (names, rows) in groups.items():
            if group != "gallery, leave-one-out":
                for name, row in zip(names, rows, strict=True):
                    verdict = "FLAGGED" if row["flagged"] else "close"
                    print(
                        f"  {group:<15} {name:<36} best {row['best']:.3f}  non-photo {row['non_photo']:.3f} ({row['non_photo_kind']:<11}) {verdict:<8} before: {'flagged' if row['flagged_before'] else 'close'}"
                    )
            flagged = sum(row["flagged"] for row in rows)
            before = sum(row["flagged_before"] for row in rows)
            summary.append((folder.name, group, len(rows), flagged, before))
        report["galleries"][str(folder)] = {
            "images": len(gallery),
            "floor": reference.floor,
            "old_floor": old,
            "calibrate_seconds": seconds,
            "groups": {
                group: [dict(name=name, **row) for name, row in zip(names, rows, strict=True)]
                for group, (names, rows) in groups.items()
            },
        }
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    print("| gallery | queries | n | flagged now | flagged before |\n|---|---|---|---|---|")
    for name, group, n, flagged, before in summary:
        print(f"| {name} | {group} | {n} | {flagged} | {before} |")
    report["summary"] = [
        dict(zip(("gallery", "group", "n", "flagged", "flagged_before"), row, strict=True)) for row in summary
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
