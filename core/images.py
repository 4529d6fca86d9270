"""Robust image decoding: EXIF orientation, any mode to RGB, decompression-bomb guard, perceptual hashes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageLoadError

#: Largest image accepted, in pixels. Pillow warns above this and we treat the warning as an error.
MAX_PIXELS = 64_000_000
#: Smallest side accepted, in pixels: a 1-pixel image carries no visual content worth ranking.
MIN_SIDE = 8
#: Most elongated image accepted (long side / short side). Resizing the short side of a 10000x8 strip to
#: 256 px would make an 82-megapixel image; real panoramas stay well under this.
MAX_ASPECT_RATIO = 20.0
#: Background used when flattening transparent images.
BACKGROUND_RGB = (255, 255, 255)
#: Side of the difference hash: 16 gives 256 bits (the tutorial found it best for near-duplicates).
DHASH_SIZE = 16


def printable(text: str) -> str:
    """``text`` safe to log, print or encode as UTF-8.

    File names that are not valid UTF-8 reach Python as lone surrogates (``\\udcXX``); writing those to a
    UTF-8 stream raises. They are shown as U+FFFD instead, so messages never crash; the path object
    itself is kept unchanged for opening the file.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def sniff_format(data: bytes) -> str | None:
    """Pillow's name for the format of encoded image bytes (``"JPEG"``, ``"PNG"``...), or None.

    Only the header is read: use :func:`decode_image` to check that the whole image decodes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except Exception:
        return None


def content_hash(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the identity of an image across renames and copies."""
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str = "<bytes>", draft_size: int | None = None) -> Image.Image:
    """Decode image bytes into an upright RGB image.

    Args:
        data: The encoded file content.
        name: How to name the source in error messages (usually the path).
        draft_size: If given, JPEG decoding may scale down by a power of two while keeping both sides
            at least this large (much faster for big photos, same result after resizing).

    Returns:
        An RGB ``PIL.Image.Image`` with EXIF orientation applied and transparency flattened on white.

    Raises:
        ImageLoadError: The bytes are empty, not an image, truncated, too large or too small.
    """
    name = printable(name)
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        _check_geometry(image, name)  # from the header, before any pixel is decoded
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{name}: image too large, refusing to decode ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: {_unidentified(data)}") from err
    except Exception as err:
        detail = str(err) or type(err).__name__
        raise ImageLoadError(f"{name}: corrupt or truncated image ({detail})") from err
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as err:
        raise ImageLoadError(f"{name}: unsupported colour mode {image.mode} ({err})") from err


#: File signatures of formats Pillow reads, to tell "damaged image" from "not an image at all".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _unidentified(data: bytes) -> str:
    """Why Pillow could not identify ``data``, as specifically as the first bytes allow."""
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return f"corrupt {image_format} file (header unreadable)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "corrupt WebP file (header unreadable)"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypavif"):
        return "not a recognised image format (HEIC/AVIF is not supported; convert it to JPEG or PNG)"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return "not a recognised image format (SVG vector graphics are not supported)"
    if head.startswith((b"<!doctype html", b"<html")):
        return "not a recognised image format (an HTML page)"
    return "not a recognised image format"


def _check_geometry(image: Image.Image, name: str) -> None:
    """Refuse images too large, too small or too elongated, from their header alone.

    The pixel limit is checked here rather than through ``Image.MAX_IMAGE_PIXELS``: that is a
    process-wide setting, and changing it from decoding threads races.
    """
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"{name}: image too large, refusing to decode ({width}x{height} = {width * height:,} px, limit {MAX_PIXELS:,}; "
            "possible decompression bomb)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(f"{name}: image too small ({width}x{height} px, minimum side {MIN_SIDE})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageLoadError(
            f"{name}: extreme aspect ratio ({width}x{height} px, at most {MAX_ASPECT_RATIO:g}:1); crop it to the subject"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto a white background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        scale = 1 / 256 if image.mode != "I" or image.getextrema()[1] > 255 else 1
        image = image.point(lambda value: value * scale).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Read and decode an image file into upright RGB.

    Raises:
        ImageLoadError: The file is unreadable or not a usable image; the message names the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageLoadError(f"{printable(str(path))}: cannot read file ({err.strerror or err})") from err
    return decode_image(data, name=str(path), draft_size=draft_size)


def perceptual_hash(image: Image.Image, hash_size: int = DHASH_SIZE) -> np.ndarray:
    """Difference hash (``imagehash.dhash``) of an image, bits packed into ``uint8[hash_size**2 / 8]``.

    Near-identical pictures (re-encoded, resized, lightly recompressed) get hashes a few bits apart;
    compare them with :func:`core.dedup.hamming_distances`.
    """
    import imagehash  # lazy: scipy and PyWavelets are only needed when hashing

    bits = imagehash.dhash(image, hash_size=hash_size).hash
    return np.packbits(bits.reshape(-1))
