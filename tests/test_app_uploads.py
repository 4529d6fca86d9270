"""Uploads through the Search page itself (AppTest's file uploader), not only through the service under it:
unusual but valid images render with results, hostile ones get one ``st.error`` line and no traceback."""

import io

import numpy as np
import pytest

pytest.importorskip("streamlit")
from PIL import Image
from streamlit.testing.v1 import AppTest


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_dataset):
    """One browser session for every upload, as a user trying one file after another."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WORKBENCH_DATA", str(tiny_dataset))
        env.setenv("WORKBENCH_WORKDIR", str(tmp_path_factory.mktemp("uploads")))
        test = AppTest.from_file("../streamlit_app.py", default_timeout=180)
        test.run()
        assert not test.exception, test.exception
        yield test


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def grey_ramp(mode: str, top: float) -> Image.Image:
    ramp = np.linspace(0, top, 96 * 128).reshape(96, 128)
    image = Image.fromarray(ramp.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert image.mode == mode
    return image


VALID = [
    (
        "grey16.png",
        lambda: encoded(grey_ramp("I;16", 65535), "PNG"),
    ),  # crashed the page: cannot write mode I;16 as JPEG
    ("grey32.tif", lambda: encoded(grey_ramp("I", 2**31 - 1), "TIFF")),
    ("float.tif", lambda: encoded(grey_ramp("F", 1.0), "TIFF")),
    ("cmyk.jpg", lambda: encoded(Image.new("CMYK", (120, 90), (10, 200, 30, 0)), "JPEG")),
]
REFUSED = [
    ("notes.jpg", lambda: b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a supported image format"),
    ("huge.png", lambda: encoded(Image.new("1", (6300, 6300)), "PNG"), "too large"),
    ("empty.png", lambda: b"", "empty"),
]


@pytest.mark.parametrize(("name", "make"), VALID, ids=[case[0] for case in VALID])
def test_unusual_valid_uploads_render_results(app, name, make):
    app.get("file_uploader")[0].upload(name, make(), "image/png").run()
    assert not app.exception, app.exception
    assert not app.error, [error.value for error in app.error]
    assert any("12 results" in caption.value for caption in app.caption)


@pytest.mark.parametrize(("name", "make", "message"), REFUSED, ids=[case[0] for case in REFUSED])
def test_hostile_uploads_get_one_error_line(app, name, make, message):
    app.get("file_uploader")[0].upload(name, make(), "image/jpeg").run()
    assert not app.exception, app.exception
    [error] = app.error
    assert name in error.value and message in error.value and "\n" not in error.value and "Traceback" not in error.value
