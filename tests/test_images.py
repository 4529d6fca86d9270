"""Image decoding: orientation, modes, and clear errors naming the file."""

import io

import pytest
from PIL import Image

from core.errors import ImageLoadError
from core.images import decode_image, load_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 60)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (32, 32), 128),
        Image.new("P", (32, 32), 3),
        Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
        Image.new("I;16", (32, 32), 40000),
    ],
    ids=["grey", "palette", "cmyk", "16-bit"],
)
def test_any_mode_becomes_rgb(image):
    fmt = "JPEG" if image.mode == "CMYK" else "PNG" if image.mode != "CMYK" else "TIFF"
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (32, 32)


def test_sixteen_bit_grey_keeps_its_level():
    decoded = decode_image(encode(Image.new("I;16", (16, 16), 32768), "PNG"))
    assert decoded.getpixel((0, 0)) == (128, 128, 128)


def test_transparency_is_flattened_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    good = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, I am text", "not a recognised image format"),
        "truncated.jpg": (good[: len(good) // 2], "corrupt or truncated"),
        "tiny.png": (encode(Image.new("RGB", (1, 1)), "PNG"), "image too small"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageLoadError, match=f"{name}: {message}"):
            load_image(path)
    with pytest.raises(ImageLoadError, match="missing.png: cannot read file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    bomb = encode(Image.new("1", (9000, 9000)), "PNG")  # 81 Mpx, a few kB on disk
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ImageLoadError, match="bomb.png: image too large"):
        load_image(path)
