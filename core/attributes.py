"""Image attributes: the ``attributes.csv`` file of a dataset folder, and two attributes a person can see, derived
from the pixels.

The file is the one home of the format that conditional similarity (:func:`core.data.apply_condition`) and the
fusion of attribute rankers read: a header with a ``path`` column (relative to the dataset folder, ``/``-separated)
and one column per attribute, one row per image, an empty cell for an image without a value::

    path,setting,colour
    birds/gcf_chicken.jpg,scene,brown

The derived attributes (``scripts/demo_attributes.py`` writes them for the bundled demo; ``docs/attributes.md``
has the rules and the counts):

- **setting** (:func:`setting_of`): ``plain`` when the photo's border is nearly one colour, or smooth without any
  texture (a studio gradient): an object on a plain background, cut-outs included; otherwise ``scene``.
- **colour** (:func:`dominant_colour`): the hue holding most of the saturated pixels of the subject (the pixels
  unlike the background for a plain setting, the whole photo for a scene); ``neutral`` when few pixels are
  saturated (grey, black, white, dull).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageFilter

from core.artifacts import atomic_write
from core.errors import DatasetError
from core.images import printable

#: The attributes file of a dataset folder.
ATTRIBUTES_FILE = "attributes.csv"
#: The column naming each image.
PATH_COLUMN = "path"


@dataclass(frozen=True)
class AttributeTable:
    """The rows of an attributes file.

    Attributes:
        path: The file they were read from (named in every error).
        attributes: Attribute columns in file order (``path`` excluded).
        paths: Each row's image path, relative to the dataset folder.
        values: Per attribute, each row's value (``""``: none).
    """

    path: Path
    attributes: tuple[str, ...]
    paths: tuple[PurePosixPath, ...]
    values: Mapping[str, tuple[str, ...]]

    def values_of(self, attribute: str) -> dict[PurePosixPath, str]:
        """The value of ``attribute`` per image path, images without a value left out.

        Raises:
            DatasetError: No such column (the message lists the ones there are).
        """
        if attribute not in self.values:
            raise DatasetError(
                f"{printable(str(self.path))}: no attribute {attribute!r}; choose one of {', '.join(self.attributes)}"
            )
        return {path: value for path, value in zip(self.paths, self.values[attribute], strict=True) if value}

    def rows(self) -> dict[PurePosixPath, dict[str, str]]:
        """Each image's values by attribute (empty cells left out), keyed by its path."""
        return {
            path: {name: self.values[name][row] for name in self.attributes if self.values[name][row]}
            for row, path in enumerate(self.paths)
        }


def read_attributes(path: Path) -> AttributeTable:
    """Read an attributes file, checking every row.

    Raises:
        DatasetError: One line naming the file (and the line, for a bad row): missing or unreadable file, no
            ``path`` column, a repeated column, a row with another number of fields, an empty or absolute path, a
            path listed twice.
    """
    shown = printable(str(path))
    if not path.is_file():
        raise DatasetError(f"{shown}: attributes file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{shown}: unreadable attributes file ({err})") from err
    header = [column.strip() for column in rows[0]] if rows else []
    if PATH_COLUMN not in header:
        raise DatasetError(f"{shown}: needs a 'path' column, found {', '.join(header) or 'no rows'}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise DatasetError(f"{shown}: column {repeated[0]!r} appears twice in the header")
    path_at = header.index(PATH_COLUMN)
    attributes = tuple(column for column in header if column != PATH_COLUMN)
    columns: dict[str, list[str]] = {name: [] for name in attributes}
    paths: list[PurePosixPath] = []
    first_line: dict[PurePosixPath, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise DatasetError(f"{shown}:{line}: {len(row)} fields where the header has {len(header)}")
        name = row[path_at].strip()
        if not name:
            raise DatasetError(f"{shown}:{line}: empty path")
        image = PurePosixPath(name.replace("\\", "/"))
        if image.is_absolute() or ".." in image.parts:
            raise DatasetError(f"{shown}:{line}: {printable(name)}: paths must be relative to the dataset folder")
        if image in first_line:
            raise DatasetError(f"{shown}:{line}: {printable(name)} is listed again (first on line {first_line[image]})")
        first_line[image] = line
        paths.append(image)
        for column, value in zip(header, row, strict=True):
            if column != PATH_COLUMN:
                columns[column].append(value.strip())
    return AttributeTable(path, attributes, tuple(paths), {name: tuple(values) for name, values in columns.items()})


def attribute_names(path: Path) -> list[str]:
    """The attribute columns of an attributes file from its header alone; ``[]`` when there is no usable file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    header = [column.strip() for column in header]
    return [column for column in header if column != PATH_COLUMN] if PATH_COLUMN in header else []


def write_attributes(path: Path, attributes: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Write an attributes file atomically: the header, then ``(relative path, values)`` rows in the given order.

    Raises:
        ValueError: A row with another number of values than ``attributes``.
        ArtifactError: The file could not be written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([PATH_COLUMN, *attributes])
    for relative, values in rows:
        if len(values) != len(attributes):
            raise ValueError(f"{relative}: {len(values)} values for {len(attributes)} attributes")
        writer.writerow([relative, *values])
    data = buffer.getvalue().encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


# --- attributes derived from the pixels ---------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeRules:
    """The thresholds of :func:`setting_of` and :func:`dominant_colour` (0-255 for colours, shares in [0, 1]).

    Attributes:
        size: Side of the box-filtered square thumbnail both rules look at (texture and JPEG noise average out).
        border: Width in thumbnail pixels of the border ring (3 of 64: about 5 % of each side).
        tolerance: A pixel is "the background colour" when no channel differs from the border's median by more.
        plain_share: Share of the border that must be the background colour for a ``plain`` setting.
        detail_size: Side of the grey thumbnail whose fine detail is measured.
        detail_border: Border ring width at ``detail_size``.
        smooth_detail: A border whose mean absolute difference from its 3 x 3 blur is below this is smooth (a
            gradient): ``plain`` even when it spans several colours.
        saturation: A pixel is saturated from this saturation (0-1)...
        brightness: ...and this brightness (0-1) on.
        colourful_share: Below this share of saturated subject pixels the colour is ``neutral``.
    """

    size: int = 64
    border: int = 3
    tolerance: float = 24.0
    plain_share: float = 0.92
    detail_size: int = 128
    detail_border: int = 6
    smooth_detail: float = 0.5
    saturation: float = 0.3
    brightness: float = 0.2
    colourful_share: float = 0.2


RULES = AttributeRules()
SETTINGS: tuple[str, ...] = ("plain", "scene")
#: Hue ranges in degrees, each up to (not including) its end; red wraps around 0.
HUE_NAMES: tuple[tuple[float, str], ...] = (
    (15.0, "red"),
    (40.0, "brown"),  # orange hues: at the saturation and brightness of photos, mostly brown (fur, wood, sandstone)
    (62.0, "yellow"),
    (165.0, "green"),
    (255.0, "blue"),
    (345.0, "purple"),
    (360.0, "red"),
)
COLOURS: tuple[str, ...] = ("neutral", "red", "brown", "yellow", "green", "blue", "purple")


def border_ring(pixels: np.ndarray, width: int) -> np.ndarray:
    """The pixels of the ``width``-wide ring along the edges of an ``(H, W, ...)`` array, each once: ``(N, ...)``."""
    height, breadth = pixels.shape[:2]
    if 2 * width >= min(height, breadth):
        return pixels.reshape(-1, *pixels.shape[2:])
    inner = pixels[width:-width]
    parts = (pixels[:width], pixels[-width:], inner[:, :width], inner[:, -width:])
    return np.concatenate([part.reshape(-1, *pixels.shape[2:]) for part in parts])


def _thumbnail(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BOX), np.float32)


def _background(image: Image.Image, rules: AttributeRules) -> tuple[np.ndarray, np.ndarray, bool]:
    """The thumbnail, the border's median colour, and whether the setting is plain."""
    pixels = _thumbnail(image, rules.size)
    ring = border_ring(pixels, rules.border)
    median = np.median(ring, axis=0)
    share = float((np.abs(ring - median).max(axis=1) <= rules.tolerance).mean())
    if share >= rules.plain_share:
        return pixels, median, True
    grey = image.convert("L").resize((rules.detail_size, rules.detail_size), Image.Resampling.BOX)
    detail = np.abs(np.asarray(grey, np.float32) - np.asarray(grey.filter(ImageFilter.BoxBlur(1)), np.float32))
    smooth = float(border_ring(detail, rules.detail_border).mean()) < rules.smooth_detail
    return pixels, median, smooth


def setting_of(image: Image.Image, rules: AttributeRules = RULES) -> str:
    """``plain`` (an object on a plain background) or ``scene``, from the photo's border (see
    :class:`AttributeRules`)."""
    return "plain" if _background(image, rules)[2] else "scene"


def dominant_colour(image: Image.Image, rules: AttributeRules = RULES) -> str:
    """The subject's dominant colour, one of :data:`COLOURS` (see the module docstring)."""
    pixels, background, plain = _background(image, rules)
    hsv = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("HSV"), np.float32)
    hue, saturation, value = hsv[..., 0] * (360.0 / 256.0), hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    subject = (np.abs(pixels - background).max(axis=2) > rules.tolerance) if plain else np.ones(hue.shape, bool)
    saturated = subject & (saturation >= rules.saturation) & (value >= rules.brightness)
    if saturated.sum() < rules.colourful_share * max(int(subject.sum()), 1) or not saturated.any():
        return "neutral"
    ends = np.array([end for end, _ in HUE_NAMES])
    bins = np.searchsorted(ends, hue[saturated], side="right").clip(max=len(HUE_NAMES) - 1)
    weight = np.bincount(bins, weights=saturation[saturated], minlength=len(HUE_NAMES))
    names = [name for _, name in HUE_NAMES]
    totals = {name: float(weight[[i for i, n in enumerate(names) if n == name]].sum()) for name in COLOURS[1:]}
    return max(totals, key=lambda name: (totals[name], -COLOURS.index(name)))


#: The derived attributes, in column order: name -> rule.
DERIVED = {"setting": setting_of, "colour": dominant_colour}


def derive_attributes(image: Image.Image, rules: AttributeRules = RULES) -> dict[str, str]:
    """Every derived attribute of one image: ``{"setting": ..., "colour": ...}``."""
    return {name: rule(image, rules) for name, rule in DERIVED.items()}
