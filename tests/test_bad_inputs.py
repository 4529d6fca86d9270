"""Bad-input corpus: every case through the library, the dataset scan, the CLI and the app's upload path.

Each case is generated here (small Pillow images, or bytes cut from the real fixtures) and must end
either decoded correctly or with a clear, specific message naming the file; nothing may crash. The
case -> outcome table is written to ``test-artifacts/bad_inputs.md`` for the report.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import scan_folder
from core.errors import ImageLoadError
from core.images import decode_image, load_image, printable
from core.workdir import WorkDir
from workbench.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "tiny" / "fish" / "gc_fish1.jpg"
TABLE = Path(__file__).resolve().parent.parent / "test-artifacts" / "bad_inputs.md"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo() -> Image.Image:
    return Image.open(FIXTURE).convert("RGB")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _corrupt_scan() -> bytes:
    data = bytearray(FIXTURE.read_bytes())
    start = data.find(b"\xff\xda") + 20
    data[start : start + 1800] = bytes(range(256)) * 7 + bytes(8)
    return bytes(data)


def _corrupt_header() -> bytes:
    data = bytearray(FIXTURE.read_bytes())
    data[20:400] = bytes(380)
    return bytes(data)


def _corrupt_png() -> bytes:
    data = bytearray(encode(photo(), "PNG"))
    start = data.find(b"IDAT") + 10
    data[start : start + 50] = b"\x55" * 50
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (40, 30), color) for color in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _broken_exif() -> bytes:
    data = encode(photo(), "JPEG", exif=_exif(6))
    start = data.find(b"Exif\x00\x00") + 6
    return data[:start] + b"XX\x00\x2a" + data[start + 4 :]  # bad byte-order mark in the TIFF header of the EXIF block


@dataclass(frozen=True)
class Case:
    """A bad (or merely unusual) input file and what must happen to it."""

    name: str
    filename: str
    data: bytes
    expected: str  # "ok" or a substring of the error message
    size: tuple[int, int] | None = None  # expected decoded size when "ok"

    @property
    def hidden(self) -> bool:
        """Dot files are not dataset images (``.DS_Store``, temp files of atomic writes): scans ignore them."""
        return self.filename.startswith(".")


def corpus() -> list[Case]:
    good = FIXTURE.read_bytes()
    png = encode(photo(), "PNG")
    return [
        Case("corrupt JPEG (header)", "corrupt_header.jpg", _corrupt_header(), "corrupt JPEG file (header unreadable)"),
        Case("corrupt JPEG (scan data)", "corrupt_scan.jpg", _corrupt_scan(), "ok", (160, 107)),
        Case(
            "truncated JPEG",
            "truncated.jpg",
            good[: len(good) * 6 // 10],
            "corrupt or truncated image (image file is truncated",
        ),
        Case("corrupt PNG (IDAT)", "corrupt.png", _corrupt_png(), "corrupt or truncated image (broken data stream"),
        Case(
            "truncated PNG",
            "truncated.png",
            png[: len(png) // 2],
            "corrupt or truncated image (image file is truncated)",
        ),
        Case("zero-byte file", "empty.jpg", b"", "empty file (0 bytes)"),
        Case("text file named .jpg", "notes.jpg", b"shopping list: eggs, milk\n", "not a recognised image format"),
        Case(
            "HTML page named .png",
            "page.png",
            b"<!DOCTYPE html><html><body>404</body></html>",
            "not a recognised image format (an HTML page)",
        ),
        Case(
            "SVG named .png",
            "vector.png",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
            "SVG vector graphics are not supported",
        ),
        Case("HEIC named .jpg", "phone.jpg", b"\x00\x00\x00\x18ftypheic" + bytes(64), "HEIC/AVIF is not supported"),
        Case(
            "decompression bomb (9000x9000 PNG)",
            "bomb.png",
            encode(Image.new("1", (9000, 9000)), "PNG"),
            "image too large, refusing to decode",
        ),
        Case(
            "PostScript named .jpg (would start Ghostscript)",
            "postscript.jpg",
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n%%EOF\n",
            "not a supported image format (EPS",
        ),
        Case(
            "PPM named .png (a format outside the allow-list)",
            "netpbm.png",
            b"P6\n16 16\n255\n" + bytes(16 * 16 * 3),
            "not a supported image format (PPM",
        ),
        Case(
            "8000x8000 PNG of 8 kB",
            "huge.png",
            encode(Image.new("1", (8000, 8000)), "PNG"),
            "image too large, refusing to decode (8000x8000",
        ),
        Case(
            "RGB PNG with a transparent colour (tRNS)",
            "trns.png",
            encode(Image.new("RGB", (40, 30), (255, 0, 0)), "PNG", transparency=(255, 0, 0)),
            "ok",
            (40, 30),
        ),
        Case("CMYK JPEG", "cmyk.jpg", encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), "ok", (40, 30)),
        Case("16-bit PNG", "sixteen.png", encode(Image.new("I;16", (40, 30), 40000), "PNG"), "ok", (40, 30)),
        Case("palette PNG", "palette.png", encode(photo().convert("P"), "PNG"), "ok", (160, 107)),
        Case(
            "palette PNG with transparency",
            "palette_t.png",
            encode(Image.new("P", (40, 30), 0), "PNG", transparency=0),
            "ok",
            (40, 30),
        ),
        Case("RGBA PNG", "alpha.png", encode(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"), "ok", (40, 30)),
        Case("EXIF-rotated photo", "rotated.jpg", encode(photo(), "JPEG", exif=_exif(6)), "ok", (107, 160)),
        Case("broken EXIF block", "broken_exif.jpg", _broken_exif(), "ok", (160, 107)),
        Case("1x1 image", "pixel.png", encode(Image.new("RGB", (1, 1)), "PNG"), "image too small (1x1 px"),
        Case(
            "very wide image (4000x40)",
            "wide.png",
            encode(Image.new("RGB", (4000, 40), (9, 9, 9)), "PNG"),
            "extreme aspect ratio (4000x40 px",
        ),
        Case("animated GIF", "anim.gif", _animated_gif(), "ok", (40, 30)),
        Case("WebP", "photo.webp", encode(photo(), "WEBP"), "ok", (160, 107)),
        Case("TIFF", "photo.tif", encode(photo(), "TIFF"), "ok", (160, 107)),
        Case("LAB TIFF", "lab.tif", encode(Image.new("LAB", (40, 30)), "TIFF"), "ok", (40, 30)),
        Case("32-bit float TIFF", "float.tif", encode(Image.new("F", (40, 30), 0.5), "TIFF"), "ok", (40, 30)),
        Case("grayscale JPEG", "grey.jpg", encode(photo().convert("L"), "JPEG"), "ok", (160, 107)),
        Case("PNG named .jpg", "really_png.jpg", png, "ok", (160, 107)),
        Case(
            "non-UTF-8 file name",
            os.fsdecode(b"caf\xe9-\xff.jpg"),
            encode(photo(), "JPEG", quality=80),
            "ok",
            (160, 107),
        ),
        Case("non-UTF-8 name, truncated", os.fsdecode(b"bad-\xfe.png"), png[:300], "corrupt or truncated image"),
        Case(
            "path-traversal-looking name (hidden)",
            "..\\..\\etc\\passwd.jpg",
            encode(photo(), "JPEG", quality=70),
            "ok",
            (160, 107),
        ),
        Case("backslash traversal name", "x\\..\\..\\evil.jpg", encode(photo(), "JPEG", quality=65), "ok", (160, 107)),
        Case("dot-dot name", "...jpg", encode(photo(), "JPEG", quality=60), "ok", (160, 107)),
        Case(
            "percent-encoded traversal name",
            "%2e%2e%2f%2e%2e%2fx.png",
            encode(photo().resize((80, 53)), "PNG"),
            "ok",
            (80, 53),
        ),
    ]


CASES = corpus()
OUTCOMES: dict[str, dict[str, str]] = {}


def outcome(case: Case, route: str, text: str) -> None:
    OUTCOMES.setdefault(case.name, {})[route] = text


def check(case: Case, run) -> str:
    """Run ``run()`` and compare with the case's expectation; returns the outcome text for the table."""
    try:
        image = run()
    except ImageLoadError as err:
        message = str(err)
        assert case.expected != "ok", f"{case.name}: unexpected error {message}"
        assert case.expected in message, message
        assert message.startswith(printable(case.filename)) or printable(case.filename) in message, message
        return f"error: {message.split(': ', 1)[1]}"
    assert case.expected == "ok", f"{case.name}: decoded but expected {case.expected!r}"
    if image is not None:
        assert image.mode == "RGB" and image.size == case.size
    return "ok"


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("corpus")
    for case in CASES:
        (root / "cases").mkdir(exist_ok=True)
        (root / "cases" / case.filename).write_bytes(case.data)
    for path in sorted(tiny_dataset.glob("*/*.jpg")):
        (root / path.parent.name).mkdir(exist_ok=True)
        (root / path.parent.name / path.name).write_bytes(path.read_bytes())
    (root / "single").mkdir()
    (root / "single" / "only.png").write_bytes(encode(Image.new("RGB", (48, 48), (0, 90, 0)), "PNG"))
    (root / "empty_label").mkdir()
    (root / "cases" / "readme.txt").write_text("not an image")
    yield root
    if OUTCOMES:
        TABLE.parent.mkdir(exist_ok=True)
        routes = ("library", "scan", "cli", "app")
        lines = ["| case | " + " | ".join(routes) + " |", "|---|" + "---|" * len(routes)]
        for name, by_route in OUTCOMES.items():
            lines.append(
                f"| {name} | " + " | ".join(by_route.get(route, "").replace("|", "/") for route in routes) + " |"
            )
        TABLE.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_library_decode_and_load(case, corpus_root):
    outcome(case, "library", check(case, lambda: load_image(corpus_root / "cases" / case.filename)))
    check(case, lambda: decode_image(case.data, name=case.filename))  # bytes route: same answer


@pytest.fixture(scope="module")
def scanned(corpus_root):
    return scan_folder(corpus_root)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_scan_folder(case, scanned, corpus_root):
    path = corpus_root / "cases" / case.filename
    kept = [record for record in scanned.dataset.records if record.path == path]
    reasons = [item.reason for item in scanned.skipped if item.path == path]
    if case.hidden:
        assert not kept and not reasons
        outcome(case, "scan", "ignored (hidden file)")
    elif case.expected == "ok":
        assert len(kept) == 1 and not reasons
        outcome(case, "scan", "kept")
    else:
        assert not kept and len(reasons) == 1 and case.expected in reasons[0]
        outcome(case, "scan", "skipped, reason logged")


def test_scan_folder_dataset_level_cases(scanned, corpus_root, caplog):
    assert scanned.dataset.label_counts()["single"] == 1  # a one-image label is kept (it goes to train)
    assert "empty_label" not in scanned.dataset.labels
    assert any("readme.txt: not an image file extension (.txt)" in item.reason for item in scanned.skipped)
    assert scanned.dhashes.shape == (len(scanned.dataset), 32)
    with caplog.at_level(logging.WARNING):
        scan_folder(corpus_root)
    assert "empty_label: empty label folder, ignored" in caplog.text


@pytest.fixture(scope="module")
def cli_prepare(corpus_root, tmp_path_factory):
    import contextlib
    import json

    workdir = tmp_path_factory.mktemp("corpus-work")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["prepare", "--data", str(corpus_root), "--workdir", str(workdir), "--quiet"])
    assert code == 0
    from core.pipeline import load_prepared

    written = json.loads(WorkDir(workdir, corpus_root).prepared.read_text(encoding="utf-8"))
    prepared = load_prepared(WorkDir(workdir, corpus_root).root)
    return out.getvalue(), {
        **written,
        "records": list(
            zip(prepared.dataset.relative_paths, prepared.dataset.label_array, prepared.dataset.sha256s, strict=True)
        ),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli(case, cli_prepare, corpus_root, tmp_path, caplog, capsys):
    printed, prepared = cli_prepare
    printed.encode("utf-8")  # a real UTF-8 terminal would raise on lone surrogates from non-UTF-8 names
    relative = f"cases/{case.filename}"
    recorded = {rel for rel, _, _ in prepared["records"]}
    if case.hidden:
        assert relative not in recorded
        outcome(case, "cli", "prepare: ignored (hidden file, exit 0)")
        return
    if case.expected == "ok":
        assert relative in recorded
        # prepared.json round-trips the name, even when it is not valid UTF-8
        outcome(case, "cli", "prepare: kept (exit 0)")
        return
    assert relative not in recorded
    assert f"skipped {printable(str(corpus_root / relative))}: " in printed and case.expected in printed
    caplog.clear()
    code = main(["search", str(corpus_root / relative), "--workdir", str(tmp_path), "--quiet"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and case.expected in errors[0] and "\n" not in errors[0]
    outcome(case, "cli", "prepare: skipped + reason; search: exit 2, one line")


def test_cli_prepare_round_trips_odd_names(cli_prepare, corpus_root, tmp_path):
    from core.pipeline import load_prepared

    _, prepared = cli_prepare
    assert prepared["config"]["root"]
    workdir = tmp_path / "w"
    assert main(["prepare", "--data", str(corpus_root), "--workdir", str(workdir), "--quiet"]) == 0
    loaded = load_prepared(WorkDir(workdir, corpus_root).root)
    assert all(record.path.is_file() for record in loaded.dataset.records)  # surrogate-escaped names reopen


@pytest.fixture(scope="module")
def app_workspace(tiny_dataset, lite0_featurizer, tmp_path_factory):
    pytest.importorskip("streamlit")
    from workbench import service
    from workbench.workspace import WorkspaceSpec, configure

    workdir = tmp_path_factory.mktemp("corpus-app")
    spec = WorkspaceSpec(configure(data={"root": tiny_dataset}), workdir, backend="torch")
    return service, service.workspace(spec=spec)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_app_upload(case, app_workspace):
    service, ws = app_workspace
    if case.expected == "ok":
        result = service.search(ws, case.data, case.filename, "cosine", 3)
        assert len(result.hits) == 3 and all(np.isfinite(hit.score) for hit in result.hits)
        outcome(case, "app", "ok: 3 results")
    else:
        with pytest.raises(service.ImageLoadError) as caught:
            service.search(ws, case.data, case.filename, "cosine", 3)
        assert case.expected in str(caught.value) and str(caught.value).startswith(printable(case.filename))
        outcome(case, "app", "ImageLoadError shown as one line")
