"""Configuration as frozen dataclasses, loadable from a TOML file.

A TOML file has one table per dataclass, e.g.::

    [data]
    root = "data/demo"
    train_fraction = 0.75

    [featurizer]
    backbone = "efficientnet_lite0"

    [train]
    epochs = 6

    [svm]
    C = 0.01
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import WorkbenchError

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "demo"


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how queries are drawn.

    Attributes:
        root: Folder-per-label dataset.
        train_fraction: Share of each label used for training.
        seed: Seeds the split and the comparative sets.
        train_queries_per_label: Queries per label drawn from the training side.
        test_queries_per_label: Queries per label drawn from the test side.
        n_negatives: Negatives per query (shrunk when the data are too small).
        near_duplicate_threshold: dhash-16 Hamming distance (of 256 bits) under which two images count as
            near-duplicates for the train/test leakage check (see benchmarks/dedup.py).
        condition: Attribute that defines "similar" (a column of the attributes file); empty = the label folder.
        attributes: Attributes CSV (``path`` + one column per attribute); empty = ``<root>/attributes.csv``.
    """

    root: Path = DEFAULT_DATA
    train_fraction: float = 0.75
    seed: int = 0
    train_queries_per_label: int = 100
    test_queries_per_label: int = 20
    n_negatives: int = 99
    near_duplicate_threshold: int = 32
    condition: str = ""
    attributes: str = ""


@dataclass(frozen=True)
class FeaturizerConfig:
    """Which network embeds the images.

    Attributes:
        backbone: Architecture name (see ``core.backbones.BACKBONES``).
        weights: ``"default"`` (packaged or torchvision weights) or a path to a weights file.
        batch_size: Images per forward pass (8 was fastest on a 2-core CPU, see benchmarks/featurize.py).
        device: ``"cpu"``, ``"cuda"`` or empty for automatic.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    batch_size: int = 8
    device: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune.

    Attributes:
        backbone: Architecture to start from (ImageNet-pretrained).
        weights: Its weights: ``"default"`` or a file.
        epochs: Passes over the training split; 0 keeps the pretrained model.
        batch_size: Images per optimisation step.
        learning_rate: Peak learning rate of the new classifier head (AdamW).
        body_lr_scale: The pretrained body learns at ``learning_rate * body_lr_scale`` (layer-wise rates).
        freeze_body: Train the head only (body weights and batch-norm statistics stay fixed).
        schedule: ``"cosine"`` decay to zero over all steps, or ``"constant"``.
        weight_decay: AdamW weight decay.
        dropout: Dropout before the classifier.
        label_smoothing: Cross-entropy label smoothing.
        input_size: Training and featurizing resolution; 0 keeps the backbone's own.
        augment: Random resized crops, flips and colour jitter on training images.
        seed: Seeds weight init of the head, augmentation and batch order.
        device: ``"cpu"``, ``"cuda"`` or empty for automatic.
        objective: ``"classification"`` (cross-entropy on the labels, the body then serves as featurizer)
            or ``"triplet"`` (triplet margin loss on the embedding itself, with mined triplets).
        margin: Triplet margin (on L2-normalised embeddings).
        mining: Which triplets the miner keeps: ``"semihard"``, ``"hard"`` or ``"all"`` violating the margin.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 3e-3
    body_lr_scale: float = 0.1
    freeze_body: bool = False
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.1
    input_size: int = 0
    augment: bool = True
    seed: int = 0
    device: str = ""
    objective: Literal["classification", "triplet"] = "classification"
    margin: float = 0.2
    mining: Literal["semihard", "hard", "all"] = "semihard"


@dataclass(frozen=True)
class SVMConfig:
    """How the SVM ranker is trained.

    Attributes:
        C: Inverse regularisation strength of ``LinearSVC`` (0.01 as in the reference recipe).
        hard_negative_rounds: Refits, each adding the negatives the current model finds most similar.
        hard_negatives_per_query: Negatives added per training query and round.
        calibration_folds: Folds for out-of-fold Platt calibration.
        max_iter: ``LinearSVC`` iteration cap.
    """

    C: float = 0.01
    hard_negative_rounds: int = 1
    hard_negatives_per_query: int = 5
    calibration_folds: int = 3
    max_iter: int = 20_000


@dataclass(frozen=True)
class WorkbenchConfig:
    """All settings of one workspace."""

    data: DataConfig = field(default_factory=DataConfig)
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)


def _coerce(cls: type, values: dict[str, Any], origin: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise WorkbenchError(f"{origin}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if isinstance(default, Path) and isinstance(value, str):
            value = Path(value)
        elif isinstance(default, float) and type(value) is int:
            value = float(value)
        elif type(value) is not type(default):
            raise WorkbenchError(f"{origin}: {name} must be {type(default).__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def load_config(path: str | Path | None) -> WorkbenchConfig:
    """Read a TOML config; missing tables and keys keep their defaults.

    Raises:
        WorkbenchError: Unreadable file, bad TOML, unknown table or key, or a wrongly typed value.
    """
    if path is None:
        return WorkbenchConfig()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise WorkbenchError(f"{path}: cannot read config ({err.strerror or err})") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise WorkbenchError(f"{path}: invalid TOML ({err})") from err
    sections = {f.name: f.default_factory for f in dataclasses.fields(WorkbenchConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise WorkbenchError(f"{path}: unknown table(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    parts = {
        name: _coerce(type(factory()), raw.get(name, {}), f"{path} [{name}]") for name, factory in sections.items()
    }
    config = WorkbenchConfig(**parts)
    if not config.data.root.is_absolute():
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=path.parent / config.data.root))
    return config
