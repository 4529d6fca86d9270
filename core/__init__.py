"""Image-similarity ranking workbench: the library.

Submodules are imported on demand so that ``import core`` stays cheap (no torch at import time).
"""

__version__ = "0.1.0"
