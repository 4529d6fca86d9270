"""int8 versions of an exported featurizer with onnxruntime quantization, as an option beside float32.

* **static** (:func:`quantize_static_onnx`): weights per channel and activations are int8 (QDQ format), the
  activation ranges calibrated on the user's own images (uint8 pixels, as the model takes them), so the
  convolutions run as integer kernels.
* **dynamic** (:func:`quantize_dynamic_onnx`): int8 weights, activation ranges computed per batch at run time;
  no calibration data, but convolutions run as ``ConvInteger``, which onnxruntime's CPU kernels do slowly.

The result keeps the workbench metadata, with ``+int8-<mode>`` appended to the weights id: its fingerprint
differs from the float model's, so int8 and float32 features never mix in one feature cache.
See ``benchmarks/featurize.py`` (speed) and ``benchmarks/quantize.py`` (quality) for measurements.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.errors import ArtifactError
from core.preprocessing import fingerprint_of
from export.metadata import INPUT_NAME, ModelMetadata

log = logging.getLogger(__name__)

MODES = ("static", "dynamic")


def _read_metadata(path: Path) -> ModelMetadata:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError, OSError...
        raise ArtifactError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {err})") from err
    return ModelMetadata.from_props({prop.key: prop.value for prop in model.metadata_props}, str(path))


def _write_with_metadata(quantized: Path, target: Path, metadata: ModelMetadata, mode: str) -> ModelMetadata:
    """Stamp the int8 metadata (own weights id and fingerprint) into ``quantized`` and move it to ``target`` atomically."""
    import onnx

    from core.artifacts import atomic_path

    weights_id = f"{metadata.weights_id}+int8-{mode}"
    stamped = dataclasses.replace(
        metadata,
        weights_id=weights_id,
        fingerprint=fingerprint_of(metadata.backbone, weights_id, metadata.preprocessing),
    )
    model = onnx.load(str(quantized))
    del model.metadata_props[:]
    for key, value in stamped.to_props().items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(target, suffix=".onnx") as temp:
        onnx.save(model, str(temp))
    return stamped


class _PixelBatches:
    """onnxruntime ``CalibrationDataReader`` over ``uint8[N, S, S, 3]`` calibration pixels, in equal batches.

    The histogram calibrators stack per-batch outputs, so every batch has the same size: the remainder is left
    out (or, with fewer images than ``batch_size``, all of them make one batch).
    """

    def __init__(self, pixels: np.ndarray, batch_size: int) -> None:
        batch_size = min(batch_size, len(pixels))
        usable = len(pixels) - len(pixels) % batch_size
        self._batches: Iterator[np.ndarray] = iter(
            [pixels[start : start + batch_size] for start in range(0, usable, batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def quantize_static_onnx(
    source: str | Path,
    target: str | Path,
    calibration_pixels: np.ndarray,
    batch_size: int = 16,
    calibration: str = "minmax",
) -> ModelMetadata:
    """Statically quantize an exported featurizer to int8, calibrated on real images.

    Args:
        source: A float model written by :func:`export.onnx_export.export_onnx`.
        target: Where the int8 model goes (written atomically).
        calibration_pixels: ``uint8[N, S, S, 3]`` resized, centre-cropped images of the user's own data
            (``core.preprocessing.resize_crop``); a few dozen to a few hundred.
        batch_size: Calibration batch size.
        calibration: Activation ranges from ``"minmax"`` (fast) or ``"percentile"`` (99.99th, clips rare
            outliers: slightly closer to float32 on the demo photos, about 4x slower to calibrate).

    Returns:
        The int8 model's metadata (its own fingerprint).

    Raises:
        ValueError: Calibration pixels of the wrong shape or type, or none; unknown calibration method.
        ArtifactError: ``source`` is not a workbench model.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
    }
    if calibration not in methods:
        raise ValueError(f"unknown calibration {calibration!r}; choose one of {', '.join(methods)}")
    source, target = Path(source), Path(target)
    metadata = _read_metadata(source)
    size = metadata.preprocessing.input_size
    if (
        calibration_pixels.dtype != np.uint8
        or calibration_pixels.shape[1:] != (size, size, 3)
        or not len(calibration_pixels)
    ):
        raise ValueError(
            f"calibration pixels must be uint8[N>0, {size}, {size}, 3], got {calibration_pixels.dtype}{list(calibration_pixels.shape)}"
        )
    with tempfile.TemporaryDirectory(prefix="quantize-") as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            _PixelBatches(calibration_pixels, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[calibration][0],
            extra_options=methods[calibration][1],
        )
        stamped = _write_with_metadata(quantized, target, metadata, "static")
    log.info("int8 static model %s from %s, calibrated on %d images", target, source, len(calibration_pixels))
    return stamped


def quantize_dynamic_onnx(source: str | Path, target: str | Path) -> ModelMetadata:
    """Dynamically quantize an exported featurizer (int8 weights, activation ranges at run time).

    Raises:
        ArtifactError: ``source`` is not a workbench model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    metadata = _read_metadata(source)
    with tempfile.TemporaryDirectory(prefix="quantize-") as folder:
        quantized = Path(folder) / "int8.onnx"
        quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
        stamped = _write_with_metadata(quantized, target, metadata, "dynamic")
    log.info("int8 dynamic model %s from %s", target, source)
    return stamped


def quantize_onnx(
    source: str | Path, target: str | Path, mode: str = "static", calibration_pixels: np.ndarray | None = None
) -> ModelMetadata:
    """Quantize by mode name: ``"static"`` (needs ``calibration_pixels``) or ``"dynamic"``.

    Raises:
        ValueError: Unknown mode, or static without calibration pixels.
        ArtifactError: ``source`` is not a workbench model.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "dynamic":
        return quantize_dynamic_onnx(source, target)
    if calibration_pixels is None:
        raise ValueError("static quantization needs calibration pixels from your own images")
    return quantize_static_onnx(source, target, calibration_pixels)
