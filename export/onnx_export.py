"""Export a backbone featurizer (pretrained or fine-tuned) to a self-contained ONNX file, then validate it.

Design:

* **Normalisation lives in the graph.** The input is ``pixels: uint8[batch, S, S, 3]``, RGB, exactly
  what ``np.asarray(pil_image)`` gives after the resize and centre crop; the graph casts, divides by
  255, subtracts the mean, divides by the std (folded into one multiply-add), transposes to NCHW,
  runs the backbone and L2-normalises. The output ``embedding: float32[batch, D]`` is ready for
  cosine ranking. So the ``.onnx`` file alone is the whole contract: no sidecar to lose or mismatch,
  no mean/std for a consumer (C++, JS, another team) to get wrong, a 4x smaller input tensor, and
  the per-image float conversion and normalisation that the Python pipeline paid for disappear.
  Only the resize and crop stay outside (images come in any size, and Pillow's antialiased
  bicubic resize is what the weights were evaluated with); their parameters are in the metadata,
  which the onnxruntime featurizer reads, so preprocessing can never mismatch.
* **Metadata** (backbone, weights id, training-run id, fingerprint, sizes, interpolation, mean/std
  for reference, versions) goes into ``metadata_props``; see :mod:`export.metadata`.
* **Exporter:** the classic TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). It
  handles these CNNs completely in well under a second and needs no extra package; the dynamo path
  needs ``onnxscript``, which is not a dependency. Only the batch axis is dynamic, so timm's
  TensorFlow-style "same" padding (computed from the input shape at run time, 10 Shape/Gather/Ceil
  chains and 5 Pad nodes that break onnxruntime's blocked-layout fusion) is frozen to constant
  padding before export; onnxruntime then fuses it into the convolutions (about 1.3x faster at
  batch 1 on 2 CPU cores). Validation compares against the *unmodified* PyTorch model.
* **IR version:** the onnx package may write an IR version newer than a deployed onnxruntime reads
  (onnx 1.23 writes IR 14, onnxruntime 1.31 reads up to 13). The file gets the lowest IR version that
  supports its opsets (IR 8 for opset 17), checked against :data:`MAX_IR_VERSION`.
* **Safety:** ``onnx.checker.check_model(full_check=True)``, then validation in the spirit of
  optimum's exporter (input/output names, dynamic axes, output shape, then values against PyTorch on
  a batch size other than the export one, reporting the largest absolute difference), all on a
  temporary file that replaces the target only when everything passed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.artifacts import atomic_path
from core.backbones import Backbone
from core.errors import ArtifactError
from core.featurize import l2_normalize
from core.preprocessing import Preprocessing, fingerprint_of
from export.metadata import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, ModelMetadata
from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Newest ONNX IR version the supported onnxruntime (1.31) loads.
MAX_IR_VERSION = 13
#: Session settings of :func:`onnx_featurizer_for`: idle threads do not spin, leaving cores to image decoding.
NON_SPINNING = OrtConfig(allow_spinning=False)


@dataclass(frozen=True)
class ExportConfig:
    """How to export and validate.

    Attributes:
        opset: ONNX opset; 17 is read by every onnxruntime since 1.13.
        export_batch_size: Batch of the dummy input traced at export.
        validation_batch_size: Batch checked against PyTorch; must differ from the export batch so
            the dynamic axis is exercised.
        atol: Largest absolute difference allowed between ONNX and PyTorch embeddings.
        min_cosine: Smallest cosine similarity allowed between the two embeddings of an image.
        seed: Seeds the random validation pixels when no sample images are given.
    """

    opset: int = 17
    export_batch_size: int = 2
    validation_batch_size: int = 3
    atol: float = 1e-4
    min_cosine: float = 0.9999
    seed: int = 0


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of comparing an exported model with its PyTorch source."""

    batch_size: int
    max_abs_diff: float
    min_cosine: float
    providers: tuple[str, ...]


@dataclass(frozen=True)
class ExportResult:
    """Where the model went, what it says about itself and how it validated."""

    path: Path
    metadata: ModelMetadata
    validation: ValidationReport
    ir_version: int
    opset: int


class _PixelsToEmbedding(nn.Module):
    """uint8 NHWC RGB pixels -> normalised NCHW floats -> backbone -> L2-normalised embeddings."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32)
        std = torch.tensor(preprocessing.std, dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale + shift
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        inputs = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift
        return nn.functional.normalize(self.model(inputs), dim=1)


def freeze_same_padding(model: nn.Module, input_size: int) -> nn.Module:
    """A copy of ``model`` whose timm ``Conv2dSame`` layers pad by constants computed for ``input_size``.

    TensorFlow-style "same" padding depends on the input's spatial size; with that size fixed it is
    a constant, which exports as a plain ``Pad`` that onnxruntime fuses into the convolution.
    Models without such layers are returned as a plain copy.
    """
    model = copy.deepcopy(model).eval()
    try:
        from timm.layers import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # not a timm model
        return model
    names = [name for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
    if not names:
        return model
    spatial: dict[str, tuple[int, int]] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _module, inputs, name=name: spatial.__setitem__(name, tuple(inputs[0].shape[-2:]))
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for name in names:
        same = model.get_submodule(name)
        assert isinstance(same, Conv2dSame)  # collected above by this type
        height, width = spatial[name]
        pad_h = get_same_padding(height, same.kernel_size[0], same.stride[0], same.dilation[0])
        pad_w = get_same_padding(width, same.kernel_size[1], same.stride[1], same.dilation[1])
        conv = nn.Conv2d(
            same.in_channels,
            same.out_channels,
            (same.kernel_size[0], same.kernel_size[1]),
            (same.stride[0], same.stride[1]),
            0,
            (same.dilation[0], same.dilation[1]),
            same.groups,
            same.bias is not None,
        )
        conv.load_state_dict(same.state_dict())
        padded = nn.Sequential(nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)), conv)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, padded)
    return model


def pin_ir_version(model: onnx.ModelProto, max_ir_version: int = MAX_IR_VERSION) -> int:
    """Set ``model.ir_version`` to the lowest version supporting its opsets; returns it.

    Raises:
        ArtifactError: The opsets need an IR version above ``max_ir_version``.
    """
    import onnx

    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if needed > max_ir_version:
        raise ArtifactError(
            f"opsets {[(o.domain, o.version) for o in model.opset_import]} need IR {needed} > {max_ir_version}"
        )
    model.ir_version = needed
    return needed


def _versions() -> dict[str, str]:
    versions = {"exporter": "torch.onnx (TorchScript, dynamo=False)"}
    for package in ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "timm", "torchvision"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def export_onnx(
    backbone: Backbone,
    path: str | Path,
    training_run: str = "",
    config: ExportConfig = ExportConfig(),
    sample_pixels: np.ndarray | None = None,
) -> ExportResult:
    """Export a feature-extracting backbone to ONNX and validate it against PyTorch.

    Args:
        backbone: Built with ``num_classes=0``; pretrained or fine-tuned weights alike.
        path: Target ``.onnx`` file, replaced atomically once export and validation pass.
        training_run: Id of the fine-tuning run behind the weights, recorded in the metadata.
        config: Opset, batch sizes and tolerances.
        sample_pixels: Optional ``uint8[N, S, S, 3]`` real images for validation (the first
            ``config.validation_batch_size`` are used); random pixels otherwise.

    Raises:
        ValueError: Equal export and validation batch sizes, or sample pixels of the wrong shape.
        ArtifactError: The checker or the validation failed; nothing is written then.
    """
    import onnx

    if config.export_batch_size == config.validation_batch_size:
        raise ValueError("validation_batch_size must differ from export_batch_size to exercise the dynamic batch axis")
    path = Path(path)
    spec = backbone.preprocessing
    size = spec.input_size
    metadata = ModelMetadata(
        backbone=backbone.name,
        weights_id=backbone.weights_id,
        preprocessing=spec,
        feature_dim=backbone.feature_dim,
        fingerprint=fingerprint_of(backbone.name, backbone.weights_id, spec),
        training_run=training_run,
        versions=_versions(),
    )
    wrapper = _PixelsToEmbedding(freeze_same_padding(backbone.model, size), spec).eval()
    dummy = torch.zeros(config.export_batch_size, size, size, 3, dtype=torch.uint8)
    with atomic_path(path, suffix=".onnx") as temp:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter announces its deprecation on every call; it is the deliberate choice here.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            # Pad amounts are a small constant subgraph torch cannot fold (a reversing Slice); onnxruntime folds it at load.
            warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(temp),
                dynamo=False,
                opset_version=config.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                do_constant_folding=True,
            )
        model = onnx.load(str(temp))
        ir_version = pin_ir_version(model)
        model.producer_name = "image-similarity-workbench"
        model.doc_string = f"{backbone.name} featurizer: uint8 RGB pixels in, L2-normalised embeddings out"
        del model.metadata_props[:]
        for key, value in metadata.to_props().items():
            model.metadata_props.add(key=key, value=value)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as err:
            raise ArtifactError(f"{path}: exported model fails the ONNX checker ({err})") from err
        onnx.save(model, str(temp))
        if sample_pixels is None:
            rng = np.random.default_rng(config.seed)
            sample_pixels = rng.integers(0, 256, (config.validation_batch_size, size, size, 3), dtype=np.uint8)
        try:
            validation = validate_onnx(temp, backbone, sample_pixels[: config.validation_batch_size], config)
        except ArtifactError as err:  # the message names the temporary file; name the target too
            raise ArtifactError(f"{path}: export failed validation, nothing written ({err})") from err
    log.info(
        "exported %s to %s (IR %d, opset %d): max |diff| %.2e, min cosine %.6f on batch %d",
        backbone.name,
        path,
        ir_version,
        config.opset,
        validation.max_abs_diff,
        validation.min_cosine,
        validation.batch_size,
    )
    return ExportResult(path, metadata, validation, ir_version, config.opset)


def torch_reference(backbone: Backbone, pixels: np.ndarray) -> np.ndarray:
    """What the PyTorch featurizer gives for ``uint8[N, S, S, 3]`` pixels (normalise, forward, L2)."""
    spec = backbone.preprocessing
    inputs = (pixels.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    with torch.inference_mode():
        features = backbone.model.eval()(torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))))
    return l2_normalize(features.float().numpy())


def validate_onnx(
    path: str | Path, backbone: Backbone, pixels: np.ndarray, config: ExportConfig = ExportConfig()
) -> ValidationReport:
    """Check an exported model's names, dynamic axes, shapes and values against its PyTorch source.

    Args:
        path: The ``.onnx`` file.
        backbone: The PyTorch source, unmodified.
        pixels: ``uint8[N, S, S, 3]`` inputs; ``N`` should differ from the export batch size.
        config: Tolerances.

    Raises:
        ValueError: ``pixels`` do not fit the model's input size.
        ArtifactError: Any check fails; the message names the file and the largest difference.
    """
    size = backbone.preprocessing.input_size
    if pixels.dtype != np.uint8 or pixels.shape[1:] != (size, size, 3):
        raise ValueError(
            f"validation pixels must be uint8[N, {size}, {size}, 3], got {pixels.dtype}{list(pixels.shape)}"
        )
    featurizer = OnnxFeaturizer(path, OrtConfig(providers=("CPUExecutionProvider",)))
    session = featurizer.session
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ArtifactError(
            f"{path}: inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]}; expected [{INPUT_NAME}] -> [{OUTPUT_NAME}]"
        )
    if inputs[0].shape != [BATCH_AXIS, size, size, 3] or inputs[0].type != "tensor(uint8)":
        raise ArtifactError(
            f"{path}: input {inputs[0].type}{inputs[0].shape}, expected tensor(uint8)[{BATCH_AXIS}, {size}, {size}, 3]"
        )
    if outputs[0].shape != [BATCH_AXIS, backbone.feature_dim] or outputs[0].type != "tensor(float)":
        raise ArtifactError(
            f"{path}: output {outputs[0].type}{outputs[0].shape}, expected tensor(float)[{BATCH_AXIS}, {backbone.feature_dim}]"
        )
    got = featurizer.embed_pixels(pixels)
    expected = torch_reference(backbone, pixels)
    if got.shape != expected.shape:
        raise ArtifactError(f"{path}: output shape {got.shape} on batch {len(pixels)}, PyTorch gives {expected.shape}")
    max_abs_diff = float(np.abs(got - expected).max())
    cosines = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    min_cosine = float(cosines.min())
    if not max_abs_diff <= config.atol or not min_cosine >= config.min_cosine:
        raise ArtifactError(
            f"{path}: ONNX and PyTorch disagree on batch {len(pixels)}: max |diff| {max_abs_diff:.3e} "
            f"(allowed {config.atol:.1e}), min cosine {min_cosine:.6f} (required {config.min_cosine})"
        )
    return ValidationReport(len(pixels), max_abs_diff, min_cosine, tuple(session.get_providers()))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (created if missing); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic replace alone keeps the file whole
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_featurizer(path: Path, fingerprint: str, ort_config: OrtConfig) -> OnnxFeaturizer | None:
    """The cached model at ``path`` if it loads and is the expected featurizer, else None (logged)."""
    if not path.is_file():
        return None
    try:
        featurizer = OnnxFeaturizer(path, ort_config)
    except ArtifactError as err:
        log.warning("%s: cached ONNX model unusable, exporting it again (%s)", path, err)
        return None
    if featurizer.fingerprint != fingerprint:
        log.warning(
            "%s: cached ONNX model is %s, not %s; exporting it again", path, featurizer.fingerprint, fingerprint
        )
        return None
    return featurizer


def onnx_featurizer_for(
    backbone: Backbone,
    cache_dir: str | Path,
    training_run: str = "",
    ort_config: OrtConfig = NON_SPINNING,
    export_config: ExportConfig = ExportConfig(),
) -> OnnxFeaturizer:
    """An onnxruntime featurizer for a PyTorch backbone, exported once and reused.

    The model is cached as ``<cache_dir>/<fingerprint>.onnx``: the first call exports and validates it against
    PyTorch (:func:`export_onnx`, atomic), later calls, in any process, just load it. Two processes racing
    export it once (an advisory lock beside the file); a cached file that does not load or is another model
    is exported again. The featurizer's fingerprint is the PyTorch featurizer's, so both share cached features.

    Args:
        backbone: Built with ``num_classes=0``; pretrained or fine-tuned.
        cache_dir: Folder of exported models (e.g. ``<workdir>/onnx``).
        training_run: Id of the fine-tuning run behind the weights, recorded in the model's metadata.
        ort_config: Session settings; by default idle threads do not spin, leaving cores to image decoding.
        export_config: Opset, batch sizes and tolerances of the export's validation.

    Raises:
        ArtifactError: The export fails validation (nothing is cached then).
    """
    fingerprint = fingerprint_of(backbone.name, backbone.weights_id, backbone.preprocessing)
    path = Path(cache_dir) / f"{fingerprint}.onnx"
    featurizer = _cached_featurizer(path, fingerprint, ort_config)
    if featurizer is not None:
        return featurizer
    with _exclusive(path.with_name(f".{path.name}.lock")):
        featurizer = _cached_featurizer(path, fingerprint, ort_config)  # another process may have won the race
        if featurizer is not None:
            return featurizer
        export_onnx(backbone, path, training_run=training_run, config=export_config)
    return OnnxFeaturizer(path, ort_config)
