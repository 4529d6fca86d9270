#!/usr/bin/env python3
"""Rebuild the bundled demo dataset ``data/demo`` from installed Debian packages.

The demo dataset is a folder-per-label collection of *real photographs* used
by the image-similarity workbench.  Every image comes from one of two Debian
packages:

``gcompris-qt-data``
    Photos shipped inside GCompris' Qt resource bundles
    (``/usr/share/gcompris-qt/rcc/*.rcc``).  Each image folder in a bundle has a
    ``README`` giving author, upstream source and licence per file; only files
    whose licence is CC0-1.0, Public Domain or GPLv2+ are used.

``tuxpaint-stamps-default``
    Photographic cut-outs (PNG with transparency) from
    ``/usr/share/tuxpaint/stamps``; the package is GPL-2.0-or-later.  The
    stamps mix photos with drawings, so only a hand-reviewed allow-list of
    photographic stamps (see :data:`TUXPAINT_STAMPS`) is used.

Processing (fully deterministic, no randomness):

1. Candidates are enumerated per label in sorted order.
2. Transparent cut-outs are cropped to their opaque area and composited,
   centred, onto a square light-grey (#F0F0F0) canvas with a 6 % margin.
   Cut-outs whose opaque area is smaller than 128 px on the long side or
   64 px on the short side are dropped.
3. Images are converted to RGB and shrunk (never enlarged) so that the
   longest side is at most 320 px (Lanczos).  Images whose short side is then
   below 128 px are dropped.
4. Near-duplicates (64-bit difference hash, Hamming distance <= 5) of an
   already accepted image are dropped.
5. Labels with more than ``--max-per-label`` images are thinned by taking
   evenly spaced items from the sorted candidate list.
6. Images are written as baseline JPEG (quality 88) to
   ``<out>/<label>/<tag>_<name>.jpg`` and listed in ``<out>/MANIFEST.tsv``.

Requirements (Debian 12)::

    apt-get install gcompris-qt-data tuxpaint-stamps-default
    python3 -m venv /tmp/dsvenv
    /tmp/dsvenv/bin/pip install PySide6-Essentials Pillow

Usage::

    /tmp/dsvenv/bin/python scripts/build_demo_data.py            # -> data/demo
    /tmp/dsvenv/bin/python scripts/build_demo_data.py --out /tmp/demo -v

The committed set was built with gcompris-qt-data 3.1-2,
tuxpaint-stamps-default 2022.06.04-1, PySide6 6.12.0 and Pillow 13.0.0; other
Pillow/libjpeg versions can give byte-different (but visually identical) JPEGs.
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

LOG = logging.getLogger("build_demo_data")

GCOMPRIS_PACKAGE = "gcompris-qt-data"
TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
EXPECTED_VERSIONS: dict[str, str] = {
    GCOMPRIS_PACKAGE: "3.1-2",
    TUXPAINT_PACKAGE: "2022.06.04-1",
}
GCOMPRIS_RCC_DIR = Path("/usr/share/gcompris-qt/rcc")
TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_LICENSE = "GPL-2.0-or-later"
TUXPAINT_AUTHOR = "Tux Paint stamps contributors (Bill Kendrick et al.)"
TUXPAINT_UPSTREAM = "https://tuxpaint.org/ (tuxpaint-stamps 2022.06.04)"

MAX_SIDE = 320
MIN_SIDE = 128
CUTOUT_MIN_LONG = 128
CUTOUT_MIN_SHORT = 64
CUTOUT_MARGIN = 0.06
BACKGROUND = (240, 240, 240)
JPEG_QUALITY = 88
DHASH_MAX_DISTANCE = 5
DEFAULT_MAX_PER_LABEL = 55

#: GCompris per-file licences accepted (compared case-insensitively).
ALLOWED_GCOMPRIS_LICENSES: dict[str, str] = {
    "cc0-1.0": "CC0-1.0",
    "public domain": "Public-Domain",
    "gplv2+": "GPL-2.0-or-later",
}

IMAGE_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")

#: Misspelled ``Files:`` entries in upstream credits READMEs -> real file.
CREDITS_TYPOS: dict[str, str] = {"screDriver.webp": "screwDriver.webp"}


@dataclass(frozen=True)
class GcomprisSource:
    """A folder of photos inside a GCompris ``.rcc`` bundle.

    Attributes:
        label: Dataset label the photos go to.
        tag: Short prefix for output file names (keeps names unique).
        rcc: File name of the bundle in :data:`GCOMPRIS_RCC_DIR`.
        folder: Folder inside the bundle holding the images.
        readme: Path (inside the bundle) of the credits README whose
            ``Files:`` entries are relative to its own folder.
        include: If given, only images whose stem is listed are used.
        exclude: Image stems to skip.

    """

    label: str
    tag: str
    rcc: str
    folder: str
    readme: str
    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()


_CAT = "gcompris/src/activities/categorization/resource/images"
_MON = "gcompris/src/activities/explore_monuments/resource"
_WLD = "gcompris/src/activities/explore_world_animals/resource/animals"
_FRM = "gcompris/src/activities/explore_farm_animals/resource/animals"

GCOMPRIS_SOURCES: tuple[GcomprisSource, ...] = (
    GcomprisSource("fish", "gc", "categorization.rcc", f"{_CAT}/fishes", f"{_CAT}/fishes/README"),
    GcomprisSource("tools", "gc", "categorization.rcc", f"{_CAT}/tools", f"{_CAT}/tools/README"),
    GcomprisSource(
        "renewable_energy",
        "gc",
        "categorization.rcc",
        f"{_CAT}/renewable",
        f"{_CAT}/renewable/README",
    ),
    GcomprisSource("landmarks", "gc", "categorization.rcc", f"{_CAT}/monuments", f"{_CAT}/monuments/README"),
    *(
        GcomprisSource(
            "landmarks",
            "gcm",
            "explore_monuments.rcc",
            f"{_MON}/{region}",
            f"{_MON}/README",
            # Natural landscapes rather than built landmarks.
            exclude=frozenset({"canyondeChelly", "navajo"}),
        )
        for region in ("egypt", "france", "germany", "india", "usa", "wonders")
    ),
    GcomprisSource(
        "mammals",
        "gcw",
        "explore_world_animals.rcc",
        _WLD,
        f"{_WLD}/README",
        include=frozenset(
            {
                "bison",
                "giraffe",
                "hedgehog",
                "jaguar",
                "kangaroo",
                "koala",
                "lemur",
                "moose",
                "narwhal",
                "panda",
                "polar_bear",
            }
        ),
    ),
    GcomprisSource(
        "birds",
        "gcw",
        "explore_world_animals.rcc",
        _WLD,
        f"{_WLD}/README",
        include=frozenset({"scarlet_macaw"}),
    ),
    GcomprisSource(
        "mammals",
        "gcf",
        "explore_farm_animals.rcc",
        _FRM,
        f"{_FRM}/README",
        include=frozenset({"cat", "cow", "dog", "horse", "pig", "sheep"}),
    ),
    GcomprisSource(
        "birds",
        "gcf",
        "explore_farm_animals.rcc",
        _FRM,
        f"{_FRM}/README",
        include=frozenset({"chicken", "duck", "owl"}),
    ),
)

#: Hand-reviewed photographic Tux Paint stamps, relative to
#: :data:`TUXPAINT_STAMPS_DIR`.  Deliberately left out: everything under a
#: ``cartoon/`` folder, drawn/rendered stamps (``mammals/dogs/dog.png`` is a
#: painted illustration, ``mammals/hedgehog.png`` a cartoon,
#: ``household/dishes/glass.png`` a vector rendering), heavily tinted or
#: doubtful ones (``aquatic/whale.png``, ``fish/dolphinfish.png``,
#: ``fish/stripedfish.png``, ``trees/birch.png``), toys and off-label objects
#: (``bears/toys/edward_bear.png``, ``fish/lobster.png``, mushrooms, a plastic
#: flower) and ``*_mirror.png`` flipped copies.
TUXPAINT_STAMPS: dict[str, tuple[str, ...]] = {
    "mammals": (
        "animals/mammals/apes/chimp.png",
        "animals/mammals/apes/gorilla.png",
        "animals/mammals/apes/tamarin_emperor.png",
        "animals/mammals/aquatic/dolphin.png",
        "animals/mammals/aquatic/orca.png",
        "animals/mammals/aquatic/otter.png",
        "animals/mammals/aquatic/sea_lion.png",
        "animals/mammals/badger.png",
        "animals/mammals/bears/bear.png",
        "animals/mammals/bears/european-bear.png",
        "animals/mammals/bovines/bison.png",
        "animals/mammals/bovines/bull.png",
        "animals/mammals/bovines/cow.png",
        "animals/mammals/bovines/cow_white.png",
        "animals/mammals/bovines/gnu-baby-stand.png",
        "animals/mammals/bovines/gnu-baby.png",
        "animals/mammals/bovines/gnu-sitting.png",
        "animals/mammals/bovines/gnu-stand.png",
        "animals/mammals/bovines/goat.png",
        "animals/mammals/bovines/indian_blackbuck.png",
        "animals/mammals/bovines/mountaingoat.png",
        "animals/mammals/bovines/ram.png",
        "animals/mammals/bovines/sheep.png",
        "animals/mammals/bovines/sheep_lamb.png",
        "animals/mammals/bovines/yak.png",
        "animals/mammals/bovines/zebu.png",
        "animals/mammals/camel/camel.png",
        "animals/mammals/camel/dromedary.png",
        "animals/mammals/cats/lion-2.png",
        "animals/mammals/cats/lion.png",
        "animals/mammals/cats/tiger.png",
        "animals/mammals/cats/tiger_sumatran.png",
        "animals/mammals/deer/caribou.png",
        "animals/mammals/deer/deer.png",
        "animals/mammals/deer/doe.png",
        "animals/mammals/deer/wapiti.png",
        "animals/mammals/dogs/fox.png",
        "animals/mammals/elephant.png",
        "animals/mammals/equines/donkey.png",
        "animals/mammals/equines/donkey_eating.png",
        "animals/mammals/equines/horse.png",
        "animals/mammals/equines/zebra.png",
        "animals/mammals/ferret.png",
        "animals/mammals/giraffe.png",
        "animals/mammals/hippopotamus.png",
        "animals/mammals/pig.png",
        "animals/mammals/pig_golden.png",
        "animals/mammals/pig_golden2.png",
        "animals/mammals/rabbit_little.png",
        "animals/mammals/rhino_black.png",
        "animals/mammals/rodents/beaver.png",
        "animals/mammals/rodents/capybara.png",
        "animals/mammals/rodents/marmot.png",
        "animals/mammals/rodents/mouse.png",
        "animals/mammals/rodents/rabbit-2.png",
        "animals/mammals/rodents/rabbit.png",
        "animals/mammals/rodents/rat.png",
        "animals/mammals/rodents/squirrel.png",
        "animals/mammals/wildboar.png",
        "animals/marsupials/koala.png",
        "animals/marsupials/wombat.png",
    ),
    "birds": (
        "animals/birds/albino_peahen.png",
        "animals/birds/blackbird.png",
        "animals/birds/chicken_profile.png",
        "animals/birds/crow.png",
        "animals/birds/crowned_crane.png",
        "animals/birds/cuckoo.png",
        "animals/birds/drake.png",
        "animals/birds/duck.png",
        "animals/birds/gander.png",
        "animals/birds/guineafowl.png",
        "animals/birds/helmeted_guineafowl.png",
        "animals/birds/hen.png",
        "animals/birds/heron_greatblue.png",
        "animals/birds/heron_greatblue_flying.png",
        "animals/birds/lark.png",
        "animals/birds/little-penguin.png",
        "animals/birds/magellanic_penguin.png",
        "animals/birds/nandou.png",
        "animals/birds/ostrich.png",
        "animals/birds/owl.png",
        "animals/birds/peacock.png",
        "animals/birds/pelican.png",
        "animals/birds/penguin.png",
        "animals/birds/pigeon.png",
        "animals/birds/pink_flamingo.png",
        "animals/birds/quetzal.png",
        "animals/birds/rainbow-lorikeet.png",
        "animals/birds/rooster.png",
        "animals/birds/seagull.png",
        "animals/birds/tucan.png",
        "animals/birds/turkey.png",
        "animals/birds/vulture.png",
    ),
    "fish": (
        "animals/fish/bluegroper.png",
        "animals/fish/butterflyfish.png",
        "animals/fish/coraltrout.png",
        "animals/fish/lionfish.png",
        "animals/fish/seahorse.png",
    ),
    "plants": (
        "plants/eggplant.png",
        "plants/flowers/adeenia.png",
        "plants/flowers/anemone_red.png",
        "plants/flowers/anthoorium.png",
        "plants/flowers/daffodil.png",
        "plants/flowers/flower1.png",
        "plants/flowers/flower10.png",
        "plants/flowers/flower2.png",
        "plants/flowers/flower3.png",
        "plants/flowers/flower4.png",
        "plants/flowers/flower5.png",
        "plants/flowers/flower6.png",
        "plants/flowers/flower7.png",
        "plants/flowers/flower8.png",
        "plants/flowers/iris.png",
        "plants/flowers/marigold.png",
        "plants/flowers/red-gazania.png",
        "plants/flowers/rose.png",
        "plants/flowers/whitestar-petunia.png",
        "plants/lavender.png",
        "plants/lettuce_bolted.png",
        "plants/thyme.png",
        "plants/trees/holm_oak.png",
        "plants/trees/liberia-palm.png",
        "plants/trees/rambutan.png",
        "plants/trees/tree336.png",
    ),
    "tools": (
        "household/tools/hammer.png",
        "household/tools/mallet_metal.png",
        "household/tools/saw.png",
        "household/tools/spade.png",
        "household/tools/toolbox.png",
        "household/tools/wrench_plumbers.png",
    ),
}


@dataclass(frozen=True)
class Candidate:
    """One source image before processing."""

    label: str
    name: str  # output file name without extension
    package: str
    original_path: str
    license: str
    author: str
    upstream: str
    is_cutout: bool
    data: bytes


@dataclass(frozen=True)
class Output:
    """One processed image ready to be written."""

    candidate: Candidate
    image: Image.Image
    dhash: int


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def slugify(text: str) -> str:
    """Turn ``"eiffelTower"`` / ``"gnu-baby stand"`` into ``"eiffel_tower"``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    text = re.sub(r"[^a-z0-9]+", "_", text.lower())
    return text.strip("_")


def package_version(package: str) -> str | None:
    """Return the installed version of a Debian package, or ``None``."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def parse_credits(text: str) -> dict[str, dict[str, str]]:
    """Parse a GCompris credits README.

    The file consists of blank-line separated blocks of ``Key: value`` lines
    (``Copyright``, ``Source``, ``License``/``Licence``, ``Files``); file names
    follow ``Files:`` on the same line or on the following lines.

    Returns:
        Mapping of file path (relative to the README's folder) to the block's
        fields (lower-cased keys).

    """
    credits: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for raw in block.splitlines():
            line = raw.strip()
            if not line:
                continue
            match = re.match(r"^([A-Za-z]+):\s*(.*)$", line)
            if match and not line.lower().startswith(("http:", "https:")):
                key, value = match.group(1).lower(), match.group(2).strip()
                if key == "licence":
                    key = "license"
                in_files = key == "files"
                if in_files:
                    files.extend(value.split())
                else:
                    fields[key] = value
            elif in_files:
                files.extend(line.split())
        for name in files:
            credits[CREDITS_TYPOS.get(name, name)] = fields
    return credits


class RccReader:
    """Read files from GCompris ``.rcc`` bundles through PySide6's QResource."""

    def __init__(self, rcc_dir: Path) -> None:
        self._rcc_dir = rcc_dir
        self._mounted: dict[str, str] = {}

    def _root(self, rcc: str) -> str:
        if rcc not in self._mounted:
            from PySide6.QtCore import QResource  # imported lazily: heavy

            root = "/demo_" + slugify(rcc.removesuffix(".rcc"))
            path = self._rcc_dir / rcc
            if not QResource.registerResource(str(path), root):
                raise RuntimeError(f"cannot register Qt resource file {path}")
            self._mounted[rcc] = root
        return self._mounted[rcc]

    def list_files(self, rcc: str, folder: str) -> list[str]:
        """Return sorted file names (no sub-folders) in ``folder`` of ``rcc``."""
        from PySide6.QtCore import QDir

        directory = QDir(f":{self._root(rcc)}/{folder}")
        if not directory.exists():
            raise FileNotFoundError(f"{rcc}:/{folder}")
        return sorted(directory.entryList(QDir.Filter.Files))

    def read(self, rcc: str, path: str) -> bytes:
        """Return the bytes of ``path`` inside ``rcc``."""
        from PySide6.QtCore import QFile, QIODevice

        qfile = QFile(f":{self._root(rcc)}/{path}")
        if not qfile.open(QIODevice.OpenModeFlag.ReadOnly):
            raise FileNotFoundError(f"{rcc}:/{path}")
        try:
            return bytes(qfile.readAll().data())
        finally:
            qfile.close()


# --------------------------------------------------------------------------
# Candidate enumeration
# --------------------------------------------------------------------------


def gcompris_candidates(reader: RccReader) -> Iterator[Candidate]:
    """Yield licence-filtered photos from :data:`GCOMPRIS_SOURCES`."""
    credits_cache: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for source in GCOMPRIS_SOURCES:
        key = (source.rcc, source.readme)
        if key not in credits_cache:
            text = reader.read(source.rcc, source.readme).decode("utf-8", "replace")
            credits_cache[key] = parse_credits(text)
        credits = credits_cache[key]
        readme_dir = str(PurePosixPath(source.readme).parent)
        rel_folder = str(PurePosixPath(source.folder).relative_to(readme_dir))
        for file_name in reader.list_files(source.rcc, source.folder):
            stem, suffix = PurePosixPath(file_name).stem, PurePosixPath(file_name).suffix
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if source.include is not None and stem not in source.include:
                continue
            if stem in source.exclude:
                LOG.debug("excluded by rule: %s/%s", source.folder, file_name)
                continue
            rel = file_name if rel_folder == "." else f"{rel_folder}/{file_name}"
            fields = credits.get(rel)
            inner_path = f"{source.folder}/{file_name}"
            if fields is None:
                LOG.warning("no credits entry, skipped: %s:/%s", source.rcc, inner_path)
                continue
            license_name = ALLOWED_GCOMPRIS_LICENSES.get(fields.get("license", "").lower())
            if license_name is None:
                LOG.info("licence %r not allowed, skipped: %s", fields.get("license"), inner_path)
                continue
            yield Candidate(
                label=source.label,
                name=f"{source.tag}_{slugify(stem)}",
                package=GCOMPRIS_PACKAGE,
                original_path=f"{GCOMPRIS_RCC_DIR / source.rcc}:/{inner_path}",
                license=license_name,
                author=fields.get("copyright", ""),
                upstream=fields.get("source", ""),
                is_cutout=False,
                data=reader.read(source.rcc, inner_path),
            )


def tuxpaint_candidates(stamps_dir: Path) -> Iterator[Candidate]:
    """Yield the allow-listed photographic stamps from :data:`TUXPAINT_STAMPS`."""
    for label, paths in TUXPAINT_STAMPS.items():
        for rel in paths:
            path = stamps_dir / rel
            yield Candidate(
                label=label,
                name=f"tp_{slugify(path.stem)}",
                package=TUXPAINT_PACKAGE,
                original_path=str(path),
                license=TUXPAINT_LICENSE,
                author=TUXPAINT_AUTHOR,
                upstream=TUXPAINT_UPSTREAM,
                is_cutout=True,
                data=path.read_bytes(),
            )


# --------------------------------------------------------------------------
# Image processing
# --------------------------------------------------------------------------


def composite_cutout(image: Image.Image) -> Image.Image | None:
    """Crop a transparent cut-out and centre it on a square plain canvas.

    Returns ``None`` when the opaque area is too small to be useful.
    """
    rgba = image.convert("RGBA")
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        return None
    rgba = rgba.crop(bbox)
    width, height = rgba.size
    if max(width, height) < CUTOUT_MIN_LONG or min(width, height) < CUTOUT_MIN_SHORT:
        return None
    side = max(width, height) + 2 * round(CUTOUT_MARGIN * max(width, height))
    canvas = Image.new("RGBA", (side, side), (*BACKGROUND, 255))
    canvas.alpha_composite(rgba, ((side - width) // 2, (side - height) // 2))
    return canvas.convert("RGB")


def flatten(image: Image.Image) -> Image.Image:
    """Convert to RGB, compositing any transparency onto :data:`BACKGROUND`."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def shrink(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Scale down (never up) so that the longest side is at most ``max_side``."""
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def dhash(image: Image.Image) -> int:
    """64-bit difference hash used to detect near-duplicates."""
    small = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels = small.tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            left, right = pixels[row * 9 + col], pixels[row * 9 + col + 1]
            bits = (bits << 1) | int(left > right)
    return bits


def process(candidate: Candidate) -> Image.Image | None:
    """Decode and normalise one candidate; ``None`` if it must be dropped."""
    with Image.open(io.BytesIO(candidate.data)) as opened:
        opened.load()
        image = composite_cutout(opened) if candidate.is_cutout else flatten(opened)
    if image is None:
        LOG.info("cut-out too small, dropped: %s", candidate.original_path)
        return None
    image = shrink(image)
    if min(image.size) < MIN_SIDE:
        LOG.info("short side %d px < %d, dropped: %s", min(image.size), MIN_SIDE, candidate.original_path)
        return None
    return image


def evenly_spaced(items: list[Output], limit: int) -> list[Output]:
    """Deterministically keep ``limit`` items spread evenly over ``items``."""
    if len(items) <= limit:
        return items
    count = len(items)
    return [items[(i * count) // limit] for i in range(limit)]


def select(candidates: Iterable[Candidate], max_per_label: int) -> dict[str, list[Output]]:
    """Process, de-duplicate and cap candidates; returns label -> outputs."""
    by_label: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_label.setdefault(candidate.label, []).append(candidate)

    accepted_hashes: list[tuple[int, str]] = []
    selected: dict[str, list[Output]] = {}
    for label in sorted(by_label):
        outputs: list[Output] = []
        names: set[str] = set()
        for candidate in sorted(by_label[label], key=lambda c: (c.package, c.original_path)):
            if candidate.name in names:
                raise ValueError(f"duplicate output name {label}/{candidate.name}")
            image = process(candidate)
            if image is None:
                continue
            digest = dhash(image)
            twin = next(
                (path for h, path in accepted_hashes if (h ^ digest).bit_count() <= DHASH_MAX_DISTANCE),
                None,
            )
            if twin is not None:
                LOG.warning("near-duplicate of %s, dropped: %s", twin, candidate.original_path)
                continue
            accepted_hashes.append((digest, candidate.original_path))
            names.add(candidate.name)
            outputs.append(Output(candidate, image, digest))
        kept = evenly_spaced(outputs, max_per_label)
        if len(kept) < len(outputs):
            LOG.info("%s: capped %d -> %d images", label, len(outputs), len(kept))
        selected[label] = kept
    return selected


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

MANIFEST_NAME = "MANIFEST.tsv"
MANIFEST_COLUMNS = (
    "path",
    "label",
    "source_package",
    "original_path",
    "license",
    "author",
    "upstream_source",
    "width",
    "height",
)


def clean_output(out_dir: Path) -> None:
    """Remove a previous build (label folders of JPEGs and the manifest)."""
    if not out_dir.exists():
        return
    for child in sorted(out_dir.iterdir()):
        if child.is_dir() and all(p.suffix == ".jpg" for p in child.iterdir()):
            shutil.rmtree(child)
        elif child.name == MANIFEST_NAME:
            child.unlink()
        else:
            LOG.warning("leaving unexpected entry in place: %s", child)


def tsv_field(value: str) -> str:
    """Make a value safe for a tab-separated file."""
    return re.sub(r"[\t\r\n]+", " ", value).strip()


def write_dataset(selected: dict[str, list[Output]], out_dir: Path) -> int:
    """Write JPEGs and the manifest; returns the number of images written."""
    clean_output(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[str] = ["\t".join(MANIFEST_COLUMNS)]
    total = 0
    for label in sorted(selected):
        label_dir = out_dir / label
        label_dir.mkdir(parents=True, exist_ok=True)
        for output in sorted(selected[label], key=lambda o: o.candidate.name):
            cand = output.candidate
            target = label_dir / f"{cand.name}.jpg"
            output.image.save(target, "JPEG", quality=JPEG_QUALITY, optimize=True)
            width, height = output.image.size
            rows.append(
                "\t".join(
                    tsv_field(v)
                    for v in (
                        f"{label}/{target.name}",
                        label,
                        cand.package,
                        cand.original_path,
                        cand.license,
                        cand.author,
                        cand.upstream,
                        str(width),
                        str(height),
                    )
                )
            )
            total += 1
        LOG.info("%-18s %3d images", label, len(selected[label]))
    (out_dir / MANIFEST_NAME).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=repo_root / "data" / "demo", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--max-per-label", type=int, default=DEFAULT_MAX_PER_LABEL, help="cap per label (default: %(default)s)"
    )
    parser.add_argument(
        "--rcc-dir", type=Path, default=GCOMPRIS_RCC_DIR, help="GCompris .rcc folder (default: %(default)s)"
    )
    parser.add_argument(
        "--stamps-dir", type=Path, default=TUXPAINT_STAMPS_DIR, help="Tux Paint stamps folder (default: %(default)s)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    for package, expected in EXPECTED_VERSIONS.items():
        found = package_version(package)
        if found is None:
            LOG.error("Debian package %s is not installed", package)
            return 1
        if found != expected:
            LOG.warning("%s %s installed; committed set was built from %s", package, found, expected)

    candidates = [*gcompris_candidates(RccReader(args.rcc_dir)), *tuxpaint_candidates(args.stamps_dir)]
    selected = select(candidates, args.max_per_label)
    total = write_dataset(selected, args.out)
    LOG.info("wrote %d images to %s", total, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
