"""Robust image decoding: EXIF orientation, any mode to RGB, decompression-bomb guard."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageLoadError

#: Largest image accepted, in pixels. Pillow warns above this and we treat the warning as an error.
MAX_PIXELS = 64_000_000
#: Smallest side accepted, in pixels: a 1-pixel image carries no visual content worth ranking.
MIN_SIDE = 8
#: Background used when flattening transparent images.
BACKGROUND_RGB = (255, 255, 255)


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
    if not data:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            image = Image.open(io.BytesIO(data))
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ImageLoadError(f"{name}: image too large, refusing to decode ({err})") from err
        except UnidentifiedImageError as err:
            raise ImageLoadError(f"{name}: not a recognised image format") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from err
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    if min(image.size) < MIN_SIDE:
        raise ImageLoadError(f"{name}: image too small ({image.width}x{image.height} px, minimum side {MIN_SIDE})")
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, TypeError, SyntaxError):  # a broken EXIF block must not lose the picture
        pass
    return to_rgb(image)


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
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
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
        raise ImageLoadError(f"{path}: cannot read file ({err.strerror or err})") from err
    return decode_image(data, name=str(path), draft_size=draft_size)
