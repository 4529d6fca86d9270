"""Exceptions raised by the library, each naming the file or thing at fault."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for errors a user can act on."""


class ImageLoadError(WorkbenchError):
    """An image file could not be read or decoded."""


class DatasetError(WorkbenchError):
    """A dataset folder or list is unusable (missing, empty, too few labels...)."""


class ArtifactError(WorkbenchError):
    """A saved artifact is missing, corrupt or of an unknown schema."""
