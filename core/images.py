"""Robust image decoding: an allow-list of formats, decode cost bounded from the header, EXIF orientation, any
mode to RGB, perceptual hashes.

Only JPEG, PNG, WebP, GIF (first frame), BMP and TIFF are ever decoded (``ALLOWED_FORMATS``): whatever its name,
PostScript, EPS, PDF, PSD, ICO or any other format Pillow knows is refused from its first bytes, so no foreign
decoder (Ghostscript for EPS) is ever started. Every entry point goes through :func:`probe_image`, which reads
the header only and checks the ceilings of a :class:`~core.config.ImageLimits` (file size, pixels per format,
smallest side, aspect ratio) before a single pixel is decoded; JPEG is decoded reduced (libjpeg's 1/2, 1/4, 1/8
scaling) towards the size the caller needs and never above ``max_pixels_full``. Files are read only when they
are regular files no larger than the limit (:func:`read_image_file`), so a FIFO, ``/dev/zero`` or a 40 GiB
sparse file is refused at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.config import FILE_LIMITS, ImageLimits
from core.errors import (
    CorruptImageError,
    ImageGeometryError,
    ImageLoadError,
    ImageTooLargeError,
    UnsupportedImageError,
)

#: The only formats ever decoded (Pillow's names). Multi-frame GIF, WebP and TIFF give their first frame.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Formats that can be decoded reduced (draft mode), so a large header is cheap to decode.
REDUCIBLE_FORMATS = frozenset({"JPEG"})
#: Background used when flattening transparent images.
BACKGROUND_RGB = (255, 255, 255)
#: Side of the difference hash: 16 gives 256 bits (the tutorial found it best for near-duplicates).
DHASH_SIZE = 16

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to log, print or encode as UTF-8, on one line.

    File names that are not valid UTF-8 reach Python as lone surrogates (``\\udcXX``): they are shown as
    ``\\xXX`` escapes, so two different undecodable names stay different and writing them never raises.
    Control characters (newline, carriage return, escape, bidirectional overrides...) are shown escaped
    (``\\n``, ``\\x1b``, ``\\u202e``), so a crafted name cannot split a message or forge a log line. The
    path object itself is kept unchanged for opening the file.
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from a file name
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class ImageHeader(NamedTuple):
    """What an image header says: ``format`` (one of ``ALLOWED_FORMATS``), ``width`` and ``height`` in pixels."""

    format: str
    width: int
    height: int


def content_hash(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the identity of an image across renames and copies."""
    return hashlib.sha256(data).hexdigest()


def _open_checked(data: bytes, name: str, limits: ImageLimits) -> tuple[Image.Image, ImageHeader]:
    """Parse the header of an allowed format and check every ceiling; no pixel is decoded."""
    if not data:
        raise CorruptImageError(f"{name}: empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise ImageTooLargeError(
            f"{name}: file too large ({len(data):,} bytes, limit {limits.max_file_bytes:,}); refusing to decode"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own ceilings apply below
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageTooLargeError(f"{name}: image too large, refusing to decode ({err})") from err
    except UnidentifiedImageError as err:
        raise _unidentified(data, name) from err
    except Exception as err:  # a plugin choked on a damaged header
        detail = str(err) or type(err).__name__
        raise CorruptImageError(f"{name}: corrupt or truncated image ({printable(detail)})") from err
    image_format = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a phone's multi-picture JPEG
    if image_format not in ALLOWED_FORMATS:  # pragma: no cover - Image.open(formats=...) guarantees it
        raise UnsupportedImageError(f"{name}: not a supported image format ({image_format})")
    header = ImageHeader(image_format, *image.size)
    _check_header(header, name, limits)
    return image, header


def probe_image(data: bytes, name: str = "<bytes>", limits: ImageLimits = FILE_LIMITS) -> ImageHeader:
    """Format and size of encoded image bytes, from the header only, with every ceiling of ``limits`` checked.

    This is what :func:`decode_image` checks first; a server can call it before queueing a decode.

    Args:
        data: The encoded file content.
        name: How to name the source in error messages (escaped with :func:`printable`).
        limits: Size and pixel ceilings (``core.config.UPLOAD_LIMITS`` for uploads).

    Raises:
        UnsupportedImageError: Not one of ``ALLOWED_FORMATS`` (HTTP 415).
        ImageTooLargeError: More bytes or header pixels than ``limits`` allow (HTTP 413).
        CorruptImageError: Empty, or an allowed format with an unreadable header (HTTP 422).
        ImageGeometryError: Too small or too elongated (HTTP 422).
    """
    image, header = _open_checked(data, printable(name), limits)
    image.close()
    return header


def sniff_format(data: bytes) -> str | None:
    """The allowed format of encoded image bytes (``"JPEG"``, ``"PNG"``...), or None; the header only."""
    try:
        return probe_image(
            data, limits=ImageLimits(max_file_bytes=max(1, len(data)), min_side=1, max_aspect_ratio=1e9)
        ).format
    except ImageLoadError:
        return None


def _draft_scale(header: ImageHeader, draft_size: int | None, limits: ImageLimits) -> int:
    """The JPEG reduction (1, 2, 4 or 8): enough for ``max_pixels_full``, and as much as ``draft_size`` allows."""
    width, height = header.width, header.height
    scale = next((s for s in (1, 2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= limits.max_pixels_full), 8)
    if draft_size is not None and draft_size > 0:
        wanted = next((s for s in (8, 4, 2, 1) if min(width, height) // s >= draft_size), 1)
        scale = max(scale, wanted)
    return scale


def decode_image(
    data: bytes, name: str = "<bytes>", draft_size: int | None = None, limits: ImageLimits = FILE_LIMITS
) -> Image.Image:
    """Decode image bytes into an upright RGB image.

    Args:
        data: The encoded file content.
        name: How to name the source in error messages (usually the path).
        draft_size: If given, JPEG decoding may scale down by a power of two while keeping both sides
            at least this large (much faster for big photos, same result after resizing).
        limits: Size and pixel ceilings, checked from the header before decoding. A JPEG larger than
            ``limits.max_pixels_full`` is decoded reduced (by 2, 4 or 8), so the image returned can be smaller
            than its header says (same aspect ratio).

    Returns:
        An RGB ``PIL.Image.Image`` with EXIF orientation applied and transparency (alpha or a transparent
        colour) flattened on white.

    Raises:
        ImageLoadError: The bytes are empty, not an allowed format, truncated, too large or too small (one of the
            subclasses listed in :func:`probe_image`).
    """
    name = printable(name)
    image, header = _open_checked(data, name, limits)
    try:
        if header.format in REDUCIBLE_FORMATS:
            scale = _draft_scale(header, draft_size, limits)
            if scale > 1:
                image.draft("RGB", (header.width // scale, header.height // scale))
            if image.size[0] * image.size[1] > limits.max_pixels_full:
                raise ImageTooLargeError(
                    f"{name}: image too large, refusing to decode ({header.width}x{header.height} px even reduced "
                    f"by 8 exceeds {limits.max_pixels_full:,} px)"
                )
        image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageTooLargeError(f"{name}: image too large, refusing to decode ({err})") from err
    except Exception as err:
        detail = str(err) or type(err).__name__
        raise CorruptImageError(f"{name}: corrupt or truncated image ({printable(detail)})") from err
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an image already upright
    try:
        return to_rgb(image)
    except (OSError, ValueError) as err:
        raise CorruptImageError(f"{name}: unsupported colour mode {image.mode} ({err})") from err


#: File signatures of the allowed formats, to tell "damaged image" from "not an image at all".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
#: Formats Pillow cannot open but people upload anyway (Pillow's own signatures name the others: EPS, PSD...).
_FOREIGN_SIGNATURES = ((b"%PDF", "PDF"),)


def _unidentified(data: bytes, name: str) -> ImageLoadError:
    """Why ``data`` is not an allowed image, as specifically as its first bytes allow (nothing is parsed)."""
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return CorruptImageError(f"{name}: corrupt {image_format} file (header unreadable)")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return CorruptImageError(f"{name}: corrupt WebP file (header unreadable)")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypavif"):
        return UnsupportedImageError(
            f"{name}: not a recognised image format (HEIC/AVIF is not supported; convert it to JPEG or PNG)"
        )
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return UnsupportedImageError(f"{name}: not a recognised image format (SVG vector graphics are not supported)")
    if head.startswith((b"<!doctype html", b"<html")):
        return UnsupportedImageError(f"{name}: not a recognised image format (an HTML page)")
    foreign = _foreign_format(data)
    if foreign:
        allowed = ", ".join(ALLOWED_FORMATS)
        return UnsupportedImageError(f"{name}: not a supported image format ({foreign}; allowed: {allowed})")
    return UnsupportedImageError(f"{name}: not a recognised image format")


def _foreign_format(data: bytes) -> str | None:
    """The name of a format outside the allow-list that ``data`` starts like, from signatures only."""
    for signature, image_format in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            return image_format
    Image.init()
    prefix = data[:16]
    for image_format, (_, accept) in Image.OPEN.items():
        if image_format in ALLOWED_FORMATS or image_format == "MPO" or accept is None:
            continue
        with contextlib.suppress(Exception):
            if accept(prefix):
                return image_format
    return None


def _check_header(header: ImageHeader, name: str, limits: ImageLimits) -> None:
    """Refuse images too large, too small or too elongated, from their header alone.

    The pixel limits are checked here rather than through ``Image.MAX_IMAGE_PIXELS``: that is a
    process-wide setting, and changing it from decoding threads races.
    """
    width, height = header.width, header.height
    pixels = width * height
    reducible = header.format in REDUCIBLE_FORMATS
    ceiling = limits.max_pixels if reducible else limits.max_pixels_full
    if pixels > ceiling:
        raise ImageTooLargeError(
            f"{name}: image too large, refusing to decode ({width}x{height} = {pixels:,} px, limit {ceiling:,} "
            f"for {header.format}; possible decompression bomb)"
        )
    if min(width, height) < limits.min_side:
        raise ImageGeometryError(f"{name}: image too small ({width}x{height} px, minimum side {limits.min_side})")
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise ImageGeometryError(
            f"{name}: extreme aspect ratio ({width}x{height} px, at most {limits.max_aspect_ratio:g}:1); "
            "crop it to the subject"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency (alpha or a transparent colour) onto white."""
    transparent_colour = image.info.get("transparency") if image.mode != "P" else None
    if image.mode == "RGB" and transparent_colour is None:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        opaque = None
        if isinstance(transparent_colour, int):
            opaque = Image.fromarray(((np.asarray(image) != transparent_colour) * 255).astype(np.uint8), "L")
        extrema = image.getextrema()
        scale = 1 / 256 if image.mode != "I" or float(extrema[1]) > 255 else 1  # type: ignore[arg-type]
        image = image.point(lambda value: value * scale).convert("L")
        if opaque is not None:
            image = image.convert("RGBA")
            image.putalpha(opaque)
    has_alpha = (
        image.mode in ("RGBA", "LA", "PA", "La", "RGBa")
        or (image.mode == "P" and "transparency" in image.info)
        or (image.mode in ("1", "L", "RGB") and "transparency" in image.info)  # tRNS: one colour is transparent
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def read_image_file(path: str | Path, limits: ImageLimits = FILE_LIMITS) -> bytes:
    """The bytes of an image file, read only if it is a regular file no larger than ``limits.max_file_bytes``.

    A FIFO, a device (``/dev/zero``), a folder or a huge (even sparse) file is refused from its metadata,
    without reading, in well under a second.

    Raises:
        ImageLoadError: Missing, unreadable or not a regular file; :class:`ImageTooLargeError` when too large.
            The message names the path.
    """
    path = Path(path)
    name = printable(str(path))
    try:
        info = os.stat(path)
        kind = _not_regular(info.st_mode)
        if kind:
            raise ImageLoadError(f"{name}: not a regular file ({kind})")
        if info.st_size > limits.max_file_bytes:
            raise ImageTooLargeError(
                f"{name}: file too large ({info.st_size:,} bytes, limit {limits.max_file_bytes:,}); refusing to read"
            )
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it does not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(descriptor, "rb", closefd=True) as handle:
            kind = _not_regular(os.fstat(descriptor).st_mode)
            if kind:
                raise ImageLoadError(f"{name}: not a regular file ({kind})")
            data = handle.read(info.st_size + 1)  # one more byte tells if it grew past the stat
    except OSError as err:
        raise ImageLoadError(f"{name}: cannot read file ({printable(err.strerror or str(err))})") from err
    if len(data) > info.st_size:  # grew since the stat: read the rest, within the limit
        try:
            with open(path, "rb") as handle:
                data = handle.read(limits.max_file_bytes + 1)
        except OSError as err:
            raise ImageLoadError(f"{name}: cannot read file ({printable(err.strerror or str(err))})") from err
        if len(data) > limits.max_file_bytes:
            raise ImageTooLargeError(f"{name}: file too large (over {limits.max_file_bytes:,} bytes); refusing to read")
    return data


def load_image(path: str | Path, draft_size: int | None = None, limits: ImageLimits = FILE_LIMITS) -> Image.Image:
    """Read and decode an image file into upright RGB (see :func:`read_image_file` and :func:`decode_image`).

    Raises:
        ImageLoadError: The file is unreadable, not a regular file or not a usable image; the message names
            the path.
    """
    return decode_image(read_image_file(path, limits), name=str(path), draft_size=draft_size, limits=limits)


def perceptual_hash(image: Image.Image, hash_size: int = DHASH_SIZE) -> np.ndarray:
    """Difference hash (``imagehash.dhash``) of an image, bits packed into ``uint8[hash_size**2 / 8]``.

    Near-identical pictures (re-encoded, resized, lightly recompressed) get hashes a few bits apart;
    compare them with :func:`core.dedup.hamming_distances`.
    """
    import imagehash  # lazy: scipy and PyWavelets are only needed when hashing

    bits = imagehash.dhash(image, hash_size=hash_size).hash
    return np.packbits(bits.reshape(-1))
