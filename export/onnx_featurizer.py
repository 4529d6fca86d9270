"""onnxruntime featurizer: the ``core.featurize.Featurizer`` contract, run from an exported ``.onnx`` file.

Everything it needs comes from the file: resize/crop settings from its metadata, normalisation and
L2-normalisation from its graph (see :mod:`export.onnx_export`). Its fingerprint is the PyTorch
featurizer's, so both back ends share one feature cache.

Provider choice is quiet: onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a
GPU and logs a loud error when asked for it there, so CUDA is requested only when the CUDA driver
library loads and reports a device (a ``ctypes`` call costing about a millisecond, no torch import).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.errors import ArtifactError
from core.featurize import SingleThreadEmbedder, default_workers
from core.preprocessing import Preprocessing, resize_crop
from export.metadata import INPUT_NAME, OUTPUT_NAME, PROJECTION_KEY, ModelMetadata

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

_OPTIMIZATION = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True)
class OrtConfig:
    """onnxruntime session settings.

    Attributes:
        providers: Execution providers in priority order; ``None`` picks CUDA when a GPU is usable,
            then CPU (see :func:`default_providers`).
        intra_op_threads: Threads inside one operator; 0 lets onnxruntime use one per physical core.
            Lower it when other work (image decoding) runs at the same time.
        inter_op_threads: Threads running independent operators in parallel (1: sequential graph).
        allow_spinning: Whether idle intra-op threads busy-wait for work. Faster for back-to-back
            batches, but the spinning steals cores from concurrent decoding threads.
        log_severity: onnxruntime's own log level (0 verbose ... 3 error, 4 fatal).
        optimization: Graph optimisation level: ``disabled``, ``basic``, ``extended`` or ``all``.
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = True
    log_severity: int = 3
    optimization: str = "all"


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver, a GPU or visible devices."""
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(library)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    try:
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:  # some other library of that name
        return 0
    return count.value


def default_providers() -> list[str]:
    """``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when onnxruntime has CUDA and a GPU is usable, else CPU only."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and cuda_device_count() > 0:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxFeaturizer:
    """Embeddings from an exported ``.onnx`` featurizer with onnxruntime.

    Args:
        path: A model written by :func:`export.onnx_export.export_onnx`.
        config: Session settings.

    Raises:
        ArtifactError: The file is missing, not a loadable ONNX model, or lacks the workbench
            metadata; the message names the file.
    """

    def __init__(self, path: str | Path, config: OrtConfig = OrtConfig()) -> None:
        self.path = Path(path)
        self.config = config
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: ONNX model not found")
        providers = list(config.providers) if config.providers is not None else default_providers()
        self.session = self._session(config, providers)
        if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in self.session.get_providers():
            log.warning(
                "%s: CUDA requested but unavailable to onnxruntime (missing cuDNN/cuBLAS?); running on CPU", self.path
            )
        props = self.session.get_modelmeta().custom_metadata_map
        if PROJECTION_KEY in props:
            raise ArtifactError(
                f"{self.path}: this model has the projection ranker baked in (its output ranks, it is not the "
                "featurizer's embedding); featurize with the plain export"
            )
        self.metadata = ModelMetadata.from_props(props, str(self.path))
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise ArtifactError(
                f"{self.path}: graph {names[0]} -> {names[1]}, expected [{INPUT_NAME}] -> [{OUTPUT_NAME}]"
            )
        spec = self.metadata.preprocessing
        self._mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        self._single_thread_session: onnxruntime.InferenceSession | None = None
        self._lock = threading.Lock()

    def _session(self, config: OrtConfig, providers: list[str]) -> onnxruntime.InferenceSession:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.log_severity_level = config.log_severity
        options.graph_optimization_level = getattr(
            onnxruntime.GraphOptimizationLevel, _OPTIMIZATION[config.optimization]
        )
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
        try:
            return onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
            raise ArtifactError(f"{self.path}: not a loadable ONNX model ({type(err).__name__}: {err})") from err

    @property
    def fingerprint(self) -> str:
        """The source PyTorch featurizer's fingerprint: both back ends share cached features."""
        return self.metadata.fingerprint

    @property
    def preprocessing(self) -> Preprocessing:
        return self.metadata.preprocessing

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses, in priority order."""
        return self.session.get_providers()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed resized, centre-cropped RGB ``uint8[N, S, S, 3]`` into ``float32[N, D]`` unit rows (the fast path)."""
        return self._run(self.session, pixels)

    def single_thread_embedder(self) -> SingleThreadEmbedder | None:
        """:meth:`embed_pixels` on one thread, safe to call from several threads at once, and how many at once.

        ``core.featurize.embed_pixel_batches`` (the file pipeline's model side) splits each batch over that many
        single-threaded runs: on a CPU that keeps every core on the model instead of keeping threads in step
        after every operator, which costs most while images decode on the same cores. ``runs`` is the thread
        budget of the config: ``intra_op_threads``, or one per core this process may use when that is 0. The
        single-threaded session is built on first use (the same model file, non-spinning), or is the main one
        when that already runs on one thread. None when the session runs on a GPU.

        Raises:
            ArtifactError: The model file can no longer be loaded.
        """
        if self.providers[0] != "CPUExecutionProvider":
            return None
        with self._lock:
            if self._single_thread_session is None:
                if self.config.intra_op_threads == 1 and self.config.inter_op_threads == 1:
                    self._single_thread_session = self.session
                else:
                    config = replace(self.config, intra_op_threads=1, inter_op_threads=1, allow_spinning=False)
                    self._single_thread_session = self._session(config, ["CPUExecutionProvider"])
            session = self._single_thread_session
        runs = self.config.intra_op_threads if self.config.intra_op_threads > 0 else default_workers()
        return SingleThreadEmbedder(partial(self._run, session), runs)

    def _run(self, session: onnxruntime.InferenceSession, pixels: np.ndarray) -> np.ndarray:
        size = self.preprocessing.input_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.path}: expects uint8[N, {size}, {size}, 3] pixels, got {pixels.dtype}{list(pixels.shape)}"
            )
        if len(pixels) == 0:
            return np.zeros((0, self.metadata.feature_dim), np.float32)
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels)})[0]

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a ``core.featurize.preprocess``-ed ``float32[N, 3, S, S]`` batch into ``float32[N, D]`` unit rows.

        The graph takes pixels, so the normalisation is undone and rounded to the 8-bit grid the
        batch came from (exact for ``preprocess`` output; other inputs are quantised to 1/255).
        Prefer :meth:`embed_pixels`, which skips both conversions.
        """
        size = self.preprocessing.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise ValueError(
                f"{self.path}: expects float32[N, 3, {size}, {size}], got {batch.dtype}{list(batch.shape)}"
            )
        values = (batch * self._std + self._mean) * 255.0
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return self.embed_pixels(pixels)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images into ``float32[N, D]`` unit rows."""
        size = self.preprocessing.input_size
        if not images:
            return np.zeros((0, self.metadata.feature_dim), np.float32)
        pixels = np.empty((len(images), size, size, 3), np.uint8)
        for index, image in enumerate(images):
            pixels[index] = resize_crop(image, self.preprocessing)
        return self.embed_pixels(pixels)
