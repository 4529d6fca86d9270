"""Visible attributes from pixels (setting, dominant colour) on hand-made images, and the attributes file."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.attributes import (
    ATTRIBUTES_FILE,
    attribute_names,
    border_ring,
    derive_attributes,
    dominant_colour,
    read_attributes,
    setting_of,
    write_attributes,
)
from core.data import apply_condition, scan_folder
from core.errors import DatasetError

REPO = Path(__file__).resolve().parent.parent


def on_plain(background: tuple[int, int, int], subject: tuple[int, int, int], size: int = 200) -> Image.Image:
    """A subject (an ellipse) centred on a one-colour canvas, as a product photo or a cut-out."""
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).ellipse((size // 4, size // 6, 3 * size // 4, 5 * size // 6), fill=subject)
    return image


def textured(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 60, size: int = 200) -> Image.Image:
    """A busy photo: every pixel its own shade around ``base`` (foliage, gravel, a crowd)."""
    noise = rng.integers(-spread, spread + 1, size=(size, size, 3))
    return Image.fromarray(np.clip(np.array(base) + noise, 0, 255).astype(np.uint8))


def test_border_ring_takes_each_edge_pixel_once():
    pixels = np.arange(6 * 5).reshape(6, 5)
    ring = border_ring(pixels, 1)
    expected = [pixels[i, j] for i in range(6) for j in range(5) if i in (0, 5) or j in (0, 4)]
    assert sorted(ring.tolist()) == sorted(expected)
    assert border_ring(pixels, 3).size == pixels.size  # a ring wider than half the image is the whole image


def test_a_subject_on_a_plain_background_is_plain_and_takes_the_subjects_colour():
    assert derive_attributes(on_plain((240, 240, 240), (200, 30, 30))) == {"setting": "plain", "colour": "red"}
    assert derive_attributes(on_plain((255, 255, 255), (40, 60, 200))) == {"setting": "plain", "colour": "blue"}
    # a white-on-grey subject has no colour, and the grey background is not counted as the subject's colour
    assert derive_attributes(on_plain((240, 240, 240), (250, 250, 250))) == {"setting": "plain", "colour": "neutral"}
    # a saturated backdrop is the background, not the subject
    assert dominant_colour(on_plain((20, 40, 220), (230, 200, 30))) == "yellow"


def test_a_smooth_gradient_backdrop_is_plain():
    ramp = np.linspace(60, 230, 200)[None, :, None].repeat(200, axis=0).repeat(3, axis=2)
    image = Image.fromarray(ramp.astype(np.uint8))
    ImageDraw.Draw(image).rectangle((70, 60, 130, 140), fill=(30, 30, 30))
    assert setting_of(image) == "plain"


def test_a_textured_photo_is_a_scene():
    rng = np.random.default_rng(0)
    assert derive_attributes(textured(rng, (60, 150, 50))) == {"setting": "scene", "colour": "green"}
    assert setting_of(textured(rng, (128, 128, 128))) == "scene"
    # a textured field below a sky: no one colour along the border
    image = textured(rng, (60, 140, 40))
    image.paste(Image.new("RGB", (200, 90), (90, 150, 230)), (0, 0))
    assert setting_of(image) == "scene"


def test_the_committed_demo_attributes_follow_the_rules():
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_attributes.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "setting: plain 141, scene 134" in completed.stdout
    assert "matches the rules (275 images)" in completed.stdout


def test_attributes_file_round_trip(tmp_path):
    path = tmp_path / ATTRIBUTES_FILE
    write_attributes(path, ["setting", "colour"], [("a/x.jpg", ["plain", "red"]), ("b/y.jpg", ["scene", ""])])
    table = read_attributes(path)
    assert table.attributes == ("setting", "colour") and attribute_names(path) == ["setting", "colour"]
    assert {str(p): v for p, v in table.values_of("colour").items()} == {"a/x.jpg": "red"}  # empty: no value
    with pytest.raises(ValueError, match="2 values for 1 attributes"):
        write_attributes(path, ["setting"], [("a/x.jpg", ["plain", "red"])])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,colour\na/x.jpg,red\nb/y.jpg,blue,extra\n", r"attributes.csv:3: 3 fields where the header has 2$"),
        ("path,colour\na/x.jpg,red\na/x.jpg,blue\n", r"attributes.csv:3: a/x.jpg is listed again \(first on line 2\)"),
        ("path,colour\n,red\n", r"attributes.csv:2: empty path$"),
        ("path,colour\n../x.jpg,red\n", r"attributes.csv:2: \.\./x\.jpg: paths must be relative"),
        ("path,colour,colour\na/x.jpg,red,blue\n", r"attributes.csv: column 'colour' appears twice"),
        ("file,colour\na/x.jpg,red\n", r"attributes.csv: needs a 'path' column, found file, colour"),
    ],
)
def test_a_bad_attributes_file_is_refused_in_one_line_naming_the_file_and_row(tmp_path, rows, message):
    path = tmp_path / ATTRIBUTES_FILE
    path.write_text(rows)
    with pytest.raises(DatasetError, match=message) as caught:
        read_attributes(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    if rows.startswith("file"):
        assert attribute_names(path) == []  # the menus offer no condition from a file without paths


def test_conditions_read_the_file_through_the_same_checks(tmp_path, tiny_dataset):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    names = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    write_attributes(root / ATTRIBUTES_FILE, ["setting"], [(name, ["plain"]) for name in names])
    assert apply_condition(scan_folder(root), "setting").dataset.label_counts() == {"plain": len(names)}
    with open(root / ATTRIBUTES_FILE, "a") as handle:
        handle.write(f"{names[0]},scene\n")
    with pytest.raises(DatasetError, match=rf"attributes.csv:{len(names) + 2}: {names[0]} is listed again"):
        apply_condition(scan_folder(root), "setting")
