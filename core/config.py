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

    [projection]        # the projection ranker's fit; "none" lifts a cap
    max_train_rows = 10_000
    max_steps = 300

    [images]            # files: dataset scans, the CLI, URL imports
    max_pixels_full = 40_000_000

    [uploads]           # bytes sent to the app or the REST API
    max_file_bytes = 20_971_520

Every value is checked where it enters (:func:`load_config`, and each dataclass's ``__post_init__``): a bad
value is a :class:`~core.errors.WorkbenchError` naming the file, the table and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Callable
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
            near-duplicates for the train/test leakage check. 4: on planted copies in Fashion-MNIST folders, 100 %
            / 92 % / 77 % of the pairs it finds at 2k / 20k / 60k photos are real copies (32, the earlier default,
            flagged mostly look-alikes: 7 % real at 60k); see docs/dedup.md.
        condition: Attribute that defines "similar" (a column of the attributes file); empty = the label folder.
        attributes: Attributes CSV (``path`` + one column per attribute); empty = ``<root>/attributes.csv``.
    """

    root: Path = DEFAULT_DATA
    train_fraction: float = 0.75
    seed: int = 0
    train_queries_per_label: int = 100
    test_queries_per_label: int = 20
    n_negatives: int = 99
    near_duplicate_threshold: int = 4
    condition: str = ""
    attributes: str = ""

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class FeaturizerConfig:
    """Which network embeds the images.

    Attributes:
        backbone: Architecture name (see ``core.backbones.BACKBONES``).
        weights: ``"default"`` (packaged or torchvision weights) or a path to a weights file.
        batch_size: Images per forward pass (onnxruntime, the default engine, is measured at 32 in
            benchmarks/featurize.py; PyTorch on a 2-core CPU was fastest at 8).
        device: ``"cpu"``, ``"cuda"`` or empty for automatic.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    batch_size: int = 32
    device: str = ""

    def __post_init__(self) -> None:
        _validate(self)


#: What fine-tuning optimises (see ``TrainConfig.objective``).
Objective = Literal["classification", "triplet", "multisimilarity", "supcon"]
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)


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
        freeze_body: Train only the body's last stage (and the head): cheaper, and the embedding still adapts;
            the rest of the body and every batch-norm statistic stay fixed.
        schedule: ``"cosine"`` decay to zero over all steps, or ``"constant"``.
        weight_decay: AdamW weight decay.
        dropout: Dropout before the classifier.
        label_smoothing: Cross-entropy label smoothing.
        input_size: Training and featurizing resolution; 0 keeps the backbone's own.
        augment: Random resized crops, flips and colour jitter on training images.
        seed: Seeds weight init of the head, augmentation and batch order.
        device: ``"cpu"``, ``"cuda"`` or empty for automatic.
        objective: ``"classification"`` (cross-entropy on the labels, the body then serves as featurizer)
            or a metric-learning loss on the embedding itself: ``"triplet"`` (triplet margin loss on mined
            triplets), ``"multisimilarity"`` (multi-similarity loss over every pair of a batch) or ``"supcon"``
            (supervised contrastive loss).
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
    objective: Objective = "classification"
    margin: float = 0.2
    mining: Literal["semihard", "hard", "all"] = "semihard"

    def __post_init__(self) -> None:
        _validate(self)


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

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class ProjectionConfig:
    """How the projection ranker (:mod:`core.metric_learning`) is trained.

    The three caps keep the fit at about the same cost from 10^4 to 10^6 photos; each costs quality on large sets
    (measured at 60k photos in ``docs/scale.md``: MAP@R 0.687 capped against 0.749 uncapped). Lift them in the
    config's ``[projection]`` table (``max_train_rows = "none"``, ``max_steps = "none"``) when time allows.

    Attributes:
        dims: Output dimension ``d`` (None: the input dimension, so ``a = 1`` is exactly cosine).
        epochs: Passes over the training embeddings.
        learning_rate: Adam learning rate.
        batch_size: Embeddings per step.
        shrinkage: LDA shrinkage of the within-label scatter towards a multiple of the identity, in (0, 1]
            (``core.metric_learning``'s docstring says why it is fixed and high).
        identity_weights: Candidate mix weights ``a`` of the base projection, chosen on validation.
        validation_fraction: Share of each label's training images held out to choose ``a`` and the label space.
        label_weight: ``b``, the share of the score given to the neighbour-label vote (0 turns it off).
        temperature: Softmax temperature of the vote over cosine similarities (smaller: fewer, nearer voters).
        max_references: Training images kept as voters (a stratified sample above this; bounds memory and time).
        max_train_rows: Training images the fit uses at most: above this, a stratified sample (seeded), so the fit
            costs the same at 10^4 and 10^6 images (None: all; see ``docs/scale.md`` for the measured cost).
        max_steps: Optimisation steps per training run at most (None: ``epochs`` full passes). A fit trains twice
            (on the validation split's training side, then on all rows).
        threads: Torch CPU threads while training. 1 by default: on a busy 2-core machine one thread took
            0.056 s per step against 0.33 s with two (``docs/scale.md``).
        seed: Seeds the validation split, initialisation order, batches and the voters' and rows' samples.
        look_weight: ``w``, the share of the score given to the input cosine (the look) beside label agreement;
            0 ranks by label agreement alone (``core.metric_learning``'s docstring says how 0.6 was chosen).
    """

    dims: int | None = None
    epochs: int = 40
    learning_rate: float = 1e-3
    batch_size: int = 256
    shrinkage: float = 0.9
    identity_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    validation_fraction: float = 0.25
    label_weight: float = 0.75
    temperature: float = 0.03
    max_references: int = 1024
    max_train_rows: int | None = 10_000
    max_steps: int | None = 300
    threads: int = 1
    seed: int = 0
    look_weight: float = 0.6

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost before any pixel is decoded: every ceiling is checked from the file size and
    the header alone.

    JPEG can be decoded reduced (libjpeg scales by 1/2, 1/4 or 1/8 while decoding, Pillow's draft mode), so it
    gets a high ceiling on header pixels and is decoded at most ``max_pixels_full`` pixels large; the other
    allowed formats (PNG, WebP, GIF, BMP, TIFF) are always decoded whole, so their ceiling is the decoded size.

    Attributes:
        max_file_bytes: Largest file or upload read, checked before reading.
        max_pixels: Most header pixels of a JPEG (decoded reduced to at most ``max_pixels_full``).
        max_pixels_full: Most pixels of an image decoded at full size (PNG, WebP, GIF, BMP, TIFF; JPEG after
            reduction). Peak memory of one decode is about 8 bytes per pixel.
        min_side: Smallest side accepted: a 1-pixel image carries no visual content worth ranking.
        max_aspect_ratio: Most elongated image accepted (long side / short side); resizing the short side of a
            10000x8 strip to 256 px would make an 82-megapixel image, real panoramas stay well under this.
    """

    max_file_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 150_000_000
    max_pixels_full: int = 40_000_000
    min_side: int = 8
    max_aspect_ratio: float = 20.0

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class WorkbenchConfig:
    """All settings of one workspace."""

    data: DataConfig = field(default_factory=DataConfig)
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    images: ImageLimits = field(default_factory=lambda: FILE_LIMITS)
    uploads: ImageLimits = field(default_factory=lambda: UPLOAD_LIMITS)


#: The tables of a TOML config, in order (``[data]``, ``[featurizer]``...).
CONFIG_SECTIONS: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(WorkbenchConfig))


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _fraction(value: Any) -> bool:
    return 0 < value < 1


def _unit_interval_open_right(value: Any) -> bool:
    return 0 <= value < 1


#: ``"Class.field" -> (check, what the value must be)``; NaN fails every check.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "DataConfig.train_fraction": (_fraction, "in (0, 1)"),
    "DataConfig.seed": (_non_negative, ">= 0"),
    "DataConfig.train_queries_per_label": (_positive, ">= 1"),
    "DataConfig.test_queries_per_label": (_positive, ">= 1"),
    "DataConfig.n_negatives": (_positive, ">= 1"),
    "DataConfig.near_duplicate_threshold": (lambda value: 0 <= value <= 256, "in [0, 256] (bits of a dhash-16)"),
    "FeaturizerConfig.batch_size": (_positive, ">= 1"),
    "TrainConfig.epochs": (_non_negative, ">= 0"),
    "TrainConfig.batch_size": (_positive, ">= 1"),
    "TrainConfig.learning_rate": (lambda value: 0 < value < math.inf, "> 0"),
    "TrainConfig.body_lr_scale": (lambda value: 0 <= value < math.inf, ">= 0"),
    "TrainConfig.weight_decay": (lambda value: 0 <= value < math.inf, ">= 0"),
    "TrainConfig.dropout": (_unit_interval_open_right, "in [0, 1)"),
    "TrainConfig.label_smoothing": (_unit_interval_open_right, "in [0, 1)"),
    "TrainConfig.input_size": (lambda value: value == 0 or 32 <= value <= 4096, "0 (the backbone's own) or 32..4096"),
    "TrainConfig.seed": (_non_negative, ">= 0"),
    "TrainConfig.margin": (lambda value: 0 < value < math.inf, "> 0"),
    "SVMConfig.C": (lambda value: 0 < value < math.inf, "> 0"),
    "SVMConfig.hard_negative_rounds": (_non_negative, ">= 0"),
    "SVMConfig.hard_negatives_per_query": (_positive, ">= 1"),
    "SVMConfig.calibration_folds": (lambda value: value >= 2, ">= 2"),
    "SVMConfig.max_iter": (_positive, ">= 1"),
    "ProjectionConfig.dims": (_positive, ">= 1, or none for the input dimension"),
    "ProjectionConfig.epochs": (_positive, ">= 1"),
    "ProjectionConfig.learning_rate": (lambda value: 0 < value < math.inf, "> 0"),
    "ProjectionConfig.batch_size": (_positive, ">= 1"),
    "ProjectionConfig.shrinkage": (lambda value: 0 < value <= 1, "in (0, 1]"),
    "ProjectionConfig.validation_fraction": (_fraction, "in (0, 1)"),
    "ProjectionConfig.label_weight": (_unit_interval_open_right, "in [0, 1)"),
    # below 0.001, cosines / T overflow float32 to NaN scores
    "ProjectionConfig.temperature": (lambda value: 1e-3 <= value <= 10, "in [0.001, 10]"),
    "ProjectionConfig.max_references": (_positive, ">= 1"),
    "ProjectionConfig.max_train_rows": (_positive, ">= 1, or none for no cap"),
    "ProjectionConfig.max_steps": (_positive, ">= 1, or none for no cap"),
    "ProjectionConfig.threads": (_positive, ">= 1"),
    "ProjectionConfig.seed": (_non_negative, ">= 0"),
    "ProjectionConfig.look_weight": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "ImageLimits.max_file_bytes": (_positive, ">= 1"),
    "ImageLimits.max_pixels": (_positive, ">= 1"),
    "ImageLimits.max_pixels_full": (_positive, ">= 1"),
    "ImageLimits.min_side": (_positive, ">= 1"),
    "ImageLimits.max_aspect_ratio": (lambda value: 1 <= value < math.inf, ">= 1"),
}


def config_problems(config: Any) -> list[tuple[str, str]]:
    """``(key, problem)`` for each invalid value of one config dataclass (empty when all are valid)."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    problems = []
    for item in dataclasses.fields(cls):
        value = getattr(config, item.name)
        if value is None and _optional(hints[item.name]):
            continue
        choices = typing.get_args(hints[item.name]) if typing.get_origin(hints[item.name]) is Literal else ()
        if choices and value not in choices:
            problems.append((item.name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}"))
        rule = _RULES.get(f"{cls.__name__}.{item.name}")
        if rule is not None:
            check, wanted = rule
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(check(value))
            if not ok:
                problems.append((item.name, f"must be {wanted}, got {value!r}"))
    if cls is ProjectionConfig and (
        not config.identity_weights
        or not all(
            isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 <= weight <= 1
            for weight in config.identity_weights
        )
    ):
        problems.append(("identity_weights", f"must be one or more numbers in [0, 1], got {config.identity_weights!r}"))
    if cls is ImageLimits and config.max_pixels_full > config.max_pixels:
        problems.append(
            ("max_pixels_full", f"must be <= max_pixels ({config.max_pixels}), got {config.max_pixels_full}")
        )
    return problems


class ConfigValueError(WorkbenchError, ValueError):
    """A config value out of range; ``key`` names the setting."""

    def __init__(self, owner: str, key: str, problem: str) -> None:
        super().__init__(f"{owner}.{key} {problem}")
        self.key = key
        self.problem = problem


def _validate(config: Any) -> None:
    problems = config_problems(config)
    if problems:
        key, problem = problems[0]
        raise ConfigValueError(type(config).__name__, key, problem)


#: Limits for files read from disk or imported from URLs (dataset scan, CLI, ``import-urls``): a 150 Mpx
#: camera JPEG and an 8K (33 Mpx) PNG screenshot pass, an 8000x8000 PNG (64 Mpx) does not.
FILE_LIMITS: ImageLimits = ImageLimits()
#: Limits for bytes uploaded to the app or the REST API, where one client must not hold a decoder long: a
#: 48 Mpx phone JPEG passes (decoded reduced), a 6300x6300 PNG (39.7 Mpx, a few kB) does not.
UPLOAD_LIMITS: ImageLimits = ImageLimits(
    max_file_bytes=20 * 1024 * 1024, max_pixels=64_000_000, max_pixels_full=16_000_000
)


def _optional(hint: Any) -> bool:
    """Whether a type hint allows None (``int | None``)."""
    return type(None) in typing.get_args(hint)


def _coerce_value(name: str, hint: Any, default: Any, value: Any, origin: str) -> Any:
    """A TOML value as the field's type: ``"none"`` for None where allowed, an array for a tuple of numbers."""
    if _optional(hint):
        if isinstance(value, str) and value.lower() == "none":
            return None
        base = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if type(value) is not base:
            raise WorkbenchError(f'{origin}: {name} must be {base.__name__} or "none", got {value!r}')
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(
            isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
        ):
            raise WorkbenchError(f"{origin}: {name} must be an array of numbers, got {value!r}")
        return tuple(float(item) for item in value)
    if isinstance(default, Path) and isinstance(value, str):
        return Path(value)
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if type(value) is not type(default):
        raise WorkbenchError(f"{origin}: {name} must be {type(default).__name__}, got {value!r}")
    return value


def _coerce(cls: type, defaults: Any, values: dict[str, Any], origin: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise WorkbenchError(f"{origin}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _coerce_value(name, hints[name], getattr(defaults, name), value, origin) for name, value in values.items()
    }
    try:
        return dataclasses.replace(defaults, **kwargs)
    except ConfigValueError as err:
        raise WorkbenchError(f"{origin}: {err.key} {err.problem}") from err


def load_config(path: str | Path | None) -> WorkbenchConfig:
    """Read a TOML config; missing tables and keys keep their defaults.

    Raises:
        WorkbenchError: Unreadable file, bad TOML, unknown table or key, a wrongly typed value or a value out of
            range, naming the file, the table and the key.
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
    defaults = WorkbenchConfig()
    sections = list(CONFIG_SECTIONS)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise WorkbenchError(f"{path}: unknown table(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    parts = {}
    for name in sections:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise WorkbenchError(f"{path}: {name} must be a table ([{name}]), got {table!r}")
        default = getattr(defaults, name)
        parts[name] = _coerce(type(default), default, table, f"{path} [{name}]")
    config = WorkbenchConfig(**parts)
    if not config.data.root.is_absolute():
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=path.parent / config.data.root))
    return config
