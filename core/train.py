"""Fine-tuning a pretrained backbone as a classifier of the dataset's labels (transfer learning).

The refined body then serves as the featurizer: :func:`finetuned_backbone` rebuilds it from a run folder.

Run folder (every file written atomically, so Ctrl-C leaves the last finished epoch intact)::

    <run_dir>/checkpoint.pt   model, optimizer and scheduler state after the last finished epoch
    <run_dir>/manifest.json   config, labels, preprocessing, data hash, versions, per-epoch metrics, status
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

import numpy as np
import torch
from torch import nn

from core.artifacts import SCHEMA_VERSION, atomic_write, atomic_write_json, environment_versions, read_json
from core.backbones import Backbone, build_backbone, file_sha256
from core.config import OBJECTIVES, TrainConfig
from core.data import ImageRecord, Split
from core.errors import ArtifactError
from core.images import load_image
from core.preprocessing import Preprocessing, preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochMetrics:
    """Loss and accuracy on both splits after one epoch (train: running average while training)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every optimisation step; ``metrics`` is set at the end of an epoch."""

    epoch: int
    epochs: int
    step: int
    steps: int
    metrics: EpochMetrics | None = None


@dataclass(frozen=True)
class TrainResult:
    """A finished (or resumed-and-finished) fine-tuning run."""

    run_dir: Path
    labels: tuple[str, ...]
    history: tuple[EpochMetrics, ...]


def data_hash(records: Sequence[ImageRecord], split: Split) -> str:
    """Identity of the training data: image contents, labels and the split."""
    payload = json.dumps(
        {"records": [[r.sha256, r.label] for r in records], "train": split.train.tolist(), "test": split.test.tolist()}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _resized(preprocessing: Preprocessing, input_size: int) -> Preprocessing:
    if not input_size or input_size == preprocessing.input_size:
        return preprocessing
    crop_fraction = preprocessing.input_size / preprocessing.resize_size
    return dataclasses.replace(preprocessing, input_size=input_size, resize_size=round(input_size / crop_fraction))


# timm models' extras beyond nn.Module; isinstance checks on these protocols test the attribute's presence.
@runtime_checkable
class _HasGetClassifier(Protocol):
    def get_classifier(self) -> nn.Module: ...


@runtime_checkable
class _HasResetClassifier(Protocol):
    def reset_classifier(self, num_classes: int) -> None: ...


@runtime_checkable
class _HasDropRate(Protocol):
    drop_rate: float


def _classifier(model: nn.Module) -> nn.Module:
    if isinstance(model, _HasGetClassifier):
        return model.get_classifier()
    # torchvision ResNets: nn.Module.__getattr__ is typed Tensor | Module, but ``fc`` is the Linear head.
    return cast(nn.Module, model.fc)


class _Images(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[ImageRecord], targets: Sequence[int], transform: Callable) -> None:
        self.records, self.targets, self.transform = records, targets, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.records[index].path)), self.targets[index]


def _train_transform(preprocessing: Preprocessing, augment: bool) -> Callable:
    from torchvision.transforms import v2

    if not augment:
        return lambda image: torch.from_numpy(preprocess(image, preprocessing))
    interpolation = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(
                preprocessing.input_size,
                scale=(0.35, 1.0),
                interpolation=interpolation[preprocessing.interpolation],
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )


class _Objective:
    """What fine-tuning optimises: a loss on a batch's outputs and how many of them are "right"."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        raise NotImplementedError


class _Classification(_Objective):
    """Cross-entropy on the labels; right = arg-max class."""

    def __init__(self, label_smoothing: float) -> None:
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(outputs, targets)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        return int((outputs.argmax(1) == targets).sum())


class _Embedding(_Objective):
    """A metric-learning loss on the embedding itself (pytorch-metric-learning); right = the nearest other item
    of the batch shares the label."""

    def __init__(self, config: TrainConfig) -> None:
        from pytorch_metric_learning import losses, miners

        self.miner = None
        if config.objective == "triplet":
            self.miner = miners.TripletMarginMiner(margin=config.margin, type_of_triplets=config.mining)
            self.criterion: nn.Module = losses.TripletMarginLoss(margin=config.margin)
        elif config.objective == "multisimilarity":
            self.criterion = losses.MultiSimilarityLoss()
        else:
            self.criterion = losses.SupConLoss(temperature=SUPCON_TEMPERATURE)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pairs = None if self.miner is None else self.miner(outputs, targets)
        return self.criterion(outputs, targets, pairs)

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        if len(targets) < 2:
            return 0
        unit = nn.functional.normalize(outputs.detach(), dim=1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-2.0)
        return int((targets[similarity.argmax(1)] == targets).sum())


#: Temperature of the supervised contrastive objective (the value its authors used on ImageNet).
SUPCON_TEMPERATURE = 0.1


def _objective(config: TrainConfig) -> _Objective:
    if config.objective == "classification":
        return _Classification(config.label_smoothing)
    if config.objective in OBJECTIVES:
        return _Embedding(config)
    raise ValueError(f"unknown objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}")


def _evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, objective: _Objective
) -> tuple[float, float]:
    """Loss and accuracy over the whole loader at once (triplets and nearest neighbours span batches)."""
    model.eval()
    output_batches: list[torch.Tensor] = []
    target_batches: list[torch.Tensor] = []
    with torch.inference_mode():
        for images, batch_targets in loader:
            output_batches.append(model(images.to(device)))
            target_batches.append(batch_targets.to(device))
    if not output_batches:
        return float("nan"), float("nan")
    outputs, targets = torch.cat(output_batches), torch.cat(target_batches)
    with torch.inference_mode():
        return float(objective.loss(outputs, targets)), objective.correct(outputs, targets) / len(targets)


def last_stage_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the body's last stage: what ``freeze_body`` leaves trainable.

    timm EfficientNets: the last block group and the 1x1 head convolution with its norm (``conv_head``, ``bn2``);
    torchvision ResNets: ``layer4``.

    Raises:
        ValueError: An architecture whose last stage is not known.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        modules = [blocks[-1], *(getattr(model, name) for name in ("conv_head", "bn2") if hasattr(model, name))]
    elif isinstance(getattr(model, "layer4", None), nn.Module):
        modules = [model.layer4]
    else:
        raise ValueError(f"freeze_body: the last stage of {type(model).__name__} is not known; train the whole body")
    return [parameter for module in modules for parameter in module.parameters()]


def fine_tune(
    records: Sequence[ImageRecord],
    split: Split,
    config: TrainConfig,
    run_dir: str | Path,
    progress: Callable[[TrainProgress], None] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune ``config.backbone`` to classify the labels of the training split.

    After every epoch the checkpoint and manifest are replaced atomically. With ``resume``, a run folder
    holding a checkpoint of the same config and data continues where it stopped.

    Args:
        records: All dataset records; ``split`` indexes into them.
        split: Train and test indices (test only measures, never trains).
        config: Hyper-parameters.
        run_dir: Folder of this run.
        progress: Called after each step and at the end of each epoch.
        resume: Continue a matching interrupted run instead of starting over.

    Raises:
        ArtifactError: The run folder holds a run of another config or data, or an unreadable checkpoint.
    """
    run_dir = Path(run_dir)
    labels = tuple(sorted({records[i].label for i in split.train}))
    index_of = {label: i for i, label in enumerate(labels)}
    fingerprint = data_hash(records, split)
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    objective = _objective(config)
    head_classes = len(labels) if config.objective == "classification" else 0
    backbone = build_backbone(config.backbone, config.weights, num_classes=head_classes)
    preprocessing = _resized(backbone.preprocessing, config.input_size)
    model = backbone.model
    if isinstance(model, _HasDropRate):
        model.drop_rate = config.dropout
    model = model.to(device).to(memory_format=torch.channels_last)
    head_params = list(_classifier(model).parameters())
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if id(p) not in head_ids]
    if config.freeze_body:  # only the last stage learns: cheaper, and unlike a head alone it moves the embedding
        tail_ids = {id(p) for p in last_stage_parameters(model)}
        for parameter in body_params:
            parameter.requires_grad_(id(parameter) in tail_ids)
        body_params = [p for p in body_params if id(p) in tail_ids]
    groups = [{"params": head_params, "lr": config.learning_rate}] if head_params else []
    groups.append({"params": body_params, "lr": config.learning_rate * config.body_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    train_records = [records[i] for i in split.train]
    test_records = [records[i] for i in split.test]
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = torch.utils.data.DataLoader(
        _Images(
            train_records, [index_of[r.label] for r in train_records], _train_transform(preprocessing, config.augment)
        ),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=len(train_records) > config.batch_size,
    )
    known_test = [r for r in test_records if r.label in index_of]
    test_loader = torch.utils.data.DataLoader(
        _Images(
            known_test,
            [index_of[r.label] for r in known_test],
            lambda image: torch.from_numpy(preprocess(image, preprocessing)),
        ),
        batch_size=config.batch_size,
    )
    total_steps = max(1, config.epochs * len(train_loader))
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if config.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    )

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "backbone": backbone.name,
        "base_weights_id": backbone.weights_id,
        "labels": list(labels),
        "preprocessing": dataclasses.asdict(preprocessing),
        "config": dataclasses.asdict(config),
        "data_hash": fingerprint,
        "versions": environment_versions(),
    }
    history: list[EpochMetrics] = []
    start_epoch = 1
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume and checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path)
        if state["config"] != manifest["config"] or state["data_hash"] != fingerprint:
            raise ArtifactError(f"{run_dir}: holds a run of another config or dataset; choose another run name")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochMetrics(**m) for m in state["history"]]
        start_epoch = len(history) + 1
        log.info("resuming %s after epoch %d", run_dir, len(history))

    def save(status: str) -> None:
        atomic_write_json(
            run_dir / "manifest.json",
            {**manifest, "status": status, "history": [dataclasses.asdict(m) for m in history]},
        )

    if start_epoch == 1:
        # epoch 0: the pretrained body, so a 0-epoch run is a valid (pretrained) featurizer too
        _save_checkpoint(checkpoint_path, model, optimizer, scheduler, generator, history, manifest)
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        if config.freeze_body:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        running_loss, running_correct, seen = 0.0, 0, 0
        try:
            for step, (images, targets) in enumerate(train_loader, start=1):
                images = images.to(device).contiguous(memory_format=torch.channels_last)
                targets = targets.to(device)
                outputs = model(images)
                loss = objective.loss(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running_loss += float(loss.detach()) * len(targets)
                running_correct += objective.correct(outputs, targets)
                seen += len(targets)
                if progress:
                    progress(TrainProgress(epoch, config.epochs, step, len(train_loader)))
        except KeyboardInterrupt:
            save("interrupted")
            log.warning("interrupted in epoch %d; %s holds epoch %d", epoch, checkpoint_path, len(history))
            raise
        test_loss, test_accuracy = _evaluate(model, test_loader, device, objective)
        metrics = EpochMetrics(
            epoch,
            running_loss / max(seen, 1),
            running_correct / max(seen, 1),
            test_loss,
            test_accuracy,
            time.perf_counter() - started,
        )
        history.append(metrics)
        _save_checkpoint(checkpoint_path, model, optimizer, scheduler, generator, history, manifest)
        save("running" if epoch < config.epochs else "complete")
        log.info(
            "epoch %d/%d: train loss %.3f acc %.1f%%, test loss %.3f acc %.1f%% (%.0f s)",
            epoch,
            config.epochs,
            metrics.train_loss,
            100 * metrics.train_accuracy,
            test_loss,
            100 * test_accuracy,
            metrics.seconds,
        )
        if progress:
            progress(TrainProgress(epoch, config.epochs, len(train_loader), len(train_loader), metrics))
    save("complete")
    return TrainResult(run_dir, labels, tuple(history))


def _save_checkpoint(path: Path, model, optimizer, scheduler, generator, history, manifest) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [dataclasses.asdict(m) for m in history],
        "config": manifest["config"],
        "data_hash": manifest["data_hash"],
    }
    # through a Python file object: a full disk then raises OSError (ENOSPC), which atomic_write reports as a
    # one-line ArtifactError, instead of torch's "enforce fail at inline_container.cc" RuntimeError
    atomic_write(path, lambda handle: torch.save(state, handle))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or not a checkpoint
        raise ArtifactError(f"{path}: unreadable checkpoint ({err})") from err


def read_manifest(run_dir: str | Path) -> dict:
    """The manifest of a run folder.

    Raises:
        ArtifactError: Missing, unreadable or of another schema version.
    """
    manifest = read_json(Path(run_dir) / "manifest.json")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{run_dir}/manifest.json: schema version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return manifest


def finetuned_backbone(run_dir: str | Path) -> Backbone:
    """The refined body of a run as a feature extractor, with the preprocessing it was trained with.

    Raises:
        ArtifactError: The run folder lacks a manifest or checkpoint, or they do not match.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    checkpoint_path = run_dir / "checkpoint.pt"
    state = _load_checkpoint(checkpoint_path)
    classification = manifest["config"].get("objective", "classification") == "classification"
    backbone = build_backbone(
        manifest["backbone"], weights=None, num_classes=len(manifest["labels"]) if classification else 0
    )
    try:
        backbone.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise ArtifactError(f"{checkpoint_path}: does not match {manifest['backbone']} ({err})") from err
    model = backbone.model
    if isinstance(model, _HasResetClassifier):
        model.reset_classifier(0)
    else:
        model.fc = nn.Identity()
    preprocessing = Preprocessing(
        **{
            **manifest["preprocessing"],
            "mean": tuple(manifest["preprocessing"]["mean"]),
            "std": tuple(manifest["preprocessing"]["std"]),
        }
    )
    weights_id = f"run:{manifest['run_id']}:{len(state['history'])}:sha256:{file_sha256(checkpoint_path)[:16]}"
    log.info(
        "loaded the fine-tuned %s of run %s (%d epoch(s) trained), %d-d features",
        backbone.name,
        run_dir.name,
        len(state["history"]),
        backbone.feature_dim,
    )
    return Backbone(backbone.name, model.eval(), preprocessing, weights_id, backbone.feature_dim)


def history_arrays(history: Sequence[EpochMetrics]) -> dict[str, np.ndarray]:
    """Per-epoch metrics as arrays keyed by field name (for plotting)."""
    return {name: np.array([getattr(m, name) for m in history]) for name in EpochMetrics.__dataclass_fields__}
