#!/usr/bin/env python3
"""Build held-out photo sets (never committed) from Debian packages that the demo does not use.

The demo (``data/demo``) comes from ``gcompris-qt-data`` and ``tuxpaint-stamps-default``. The sets built here come
from other Debian 12 packages, fetched with ``apt-get download`` (no install, no root needed beyond apt's cache) and
unpacked with ``dpkg-deb -x``:

``scenes`` (held-out labelled set, default ``~/.cache/workbench/heldout/scenes``)
    Real full-frame photos from ``scratch`` 1.4.0.6~dfsg1-6.1 (``/usr/share/scratch/Media/Backgrounds``; Media
    licence CC-BY-SA-3.0, (c) 2011 MIT), labelled by Scratch's own folder: indoors (10), nature (14 without the
    moon), outdoors (27 without the three murals), sports (6). The GIF drawings, the lunar surface and the murals are
    left out (not photos of the labelled scene). 57 photos in 4 labels: far smaller than the 500-2000 that were
    wanted, and scene categories rather than object categories. No registry package with a larger labelled photo
    set was found (PyPI data-set packages download at run time, which cannot work here; Debian's photo-rich
    packages are the two the demo already uses).

``out_of_style`` (default ``~/.cache/workbench/heldout/out_of_style``)
    Full-frame photos in another style than the demo's (cut-outs and centred subjects), labelled with the demo's
    labels where one fits: plants (10: ``mate-backgrounds`` 1.26.0-1 nature wallpapers, GPL-2+ per its
    copyright file, and ``scratch`` flower-bed, tree, garden-rock), landmarks (3: ``scratch`` castle, mansion,
    building-at-mit). 13 photos in all, for the out-of-gallery check only (search them against the demo gallery).

Images are converted to RGB and shrunk (never enlarged) to at most 320 px on the long side, then written as
JPEG quality 90 to ``<out>/<label>/<package>_<name>.jpg``, with ``MANIFEST.tsv`` (path, label, package, original
path). Deterministic.

Usage::

    .venv/bin/python scripts/heldout_data.py                 # both sets under ~/.cache/workbench/heldout
    .venv/bin/python scripts/heldout_data.py --root /tmp/heldout --debs /tmp/debs
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

LOG = logging.getLogger("heldout_data")
MAX_SIDE = 320
SCRATCH = "usr/share/scratch/Media/Backgrounds"
MATE = "usr/share/backgrounds/mate/nature"

#: label -> (package, path inside the package) for the held-out scene set.
SCENES: dict[str, list[tuple[str, str]]] = {
    "indoors": [
        ("scratch", f"{SCRATCH}/Indoors/{name}.jpg")
        for name in [
            "chalkboard",
            "clothing-store",
            "hall",
            "kitchen",
            "party-room",
            "room1",
            "room2",
            "room3",
            "spotlight-stage",
            "the-movies-inside",
        ]
    ],
    "nature": [
        ("scratch", f"{SCRATCH}/Nature/{name}.jpg")
        for name in [
            "beach-malibu",
            "canyon",
            "flower-bed",
            "forest",
            "garden-rock",
            "grand-canyon",
            "gravel-desert",
            "hill",
            "lake",
            "pathway",
            "tree",
            "water-and-rocks",
            "wave",
            "woods-and-bench",
        ]
    ],
    "outdoors": [
        ("scratch", f"{SCRATCH}/Outdoors/{name}.jpg")
        for name in [
            "atom-playground",
            "bench-with-view",
            "boardwalk",
            "brick-wall-and-stairs",
            "brick-wall1",
            "brick-wall2",
            "building-at-mit",
            "building-fireproof",
            "castle",
            "city-with-water",
            "city-with-water2",
            "driveway",
            "graffiti",
            "hallway_outdoors",
            "hay_field",
            "houses",
            "mansion",
            "parking-ramp",
            "pool",
            "route66",
            "school2",
            "silos",
            "the-movies",
            "train-tracks1",
            "train-tracks2",
            "village",
            "wooden-house",
        ]
    ],
    "sports": [
        ("scratch", f"{SCRATCH}/Sports/{name}.jpg")
        for name in [
            "baseball-field",
            "basketball-court1-a",
            "basketball-court1-b",
            "football-field",
            "playing-field",
            "tennis-backboard",
        ]
    ],
}

#: label (one of the demo's) -> (package, path) for the out-of-style set.
OUT_OF_STYLE: dict[str, list[tuple[str, str]]] = {
    "plants": [
        ("mate-backgrounds", f"{MATE}/{name}.jpg")
        for name in ["Blinds", "FreshFlower", "Garden", "LadyBird", "RainDrops", "TwoWings", "YellowFlower"]
    ]
    + [("scratch", f"{SCRATCH}/Nature/{name}.jpg") for name in ["flower-bed", "tree", "garden-rock"]],
    "landmarks": [("scratch", f"{SCRATCH}/Outdoors/{name}.jpg") for name in ["castle", "mansion", "building-at-mit"]],
}


def unpack(package: str, debs: Path) -> Path:
    """Download ``package``'s .deb into ``debs`` (if absent) and unpack it; returns the unpacked root."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        LOG.info("apt-get download %s", package)
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    root = debs / "x" / package
    if not root.exists():
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
    return root


def build(spec: dict[str, list[tuple[str, str]]], out: Path, debs: Path) -> int:
    """Write the images of ``spec`` under ``out/<label>/`` with a manifest; returns the image count."""
    rows = ["path\tlabel\tsource_package\toriginal_path"]
    for label, items in sorted(spec.items()):
        (out / label).mkdir(parents=True, exist_ok=True)
        for package, inner in items:
            source = unpack(package, debs) / inner
            with Image.open(source) as image:
                image = image.convert("RGB")
                image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
                name = f"{label}/{package.split('-')[0]}_{Path(inner).stem.lower()}.jpg"
                image.save(out / name, quality=90)
            rows.append(f"{name}\t{label}\t{package}\t/{inner}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in %d labels", out, len(rows) - 1, len(spec))
    return len(rows) - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache/workbench/heldout")
    parser.add_argument("--debs", type=Path, default=None, help="where .deb files are kept (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as temp:
        debs = args.debs or Path(temp)
        build(SCENES, args.root / "scenes", debs)
        build(OUT_OF_STYLE, args.root / "out_of_style", debs)


if __name__ == "__main__":
    main()
