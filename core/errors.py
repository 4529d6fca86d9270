"""Exceptions raised by the library, each naming the file or thing at fault."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for errors a user can act on."""


class ImageLoadError(WorkbenchError):
    """An image file could not be read or decoded."""


class UnsupportedImageError(ImageLoadError):
    """Not an image of an allowed format (JPEG, PNG, WebP, GIF, BMP, TIFF); an HTTP API answers 415."""


class ImageTooLargeError(ImageLoadError):
    """Too many pixels (from the header) or too many bytes to decode; an HTTP API answers 413."""


class CorruptImageError(ImageLoadError):
    """An allowed format whose data are empty, truncated or damaged; an HTTP API answers 422."""


class ImageGeometryError(ImageLoadError):
    """A decodable image too small or too elongated to rank; an HTTP API answers 422."""


class DatasetError(WorkbenchError):
    """A dataset folder or list is unusable (missing, empty, too few labels...)."""


class ArtifactError(WorkbenchError):
    """A saved artifact is missing, corrupt or of an unknown schema, or could not be written."""
