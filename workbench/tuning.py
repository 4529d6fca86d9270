"""``tune``: choose the fine-tuning recipe and the ranker for a dataset on a validation split of its training split.

The test split is never looked at. A share of each label's training images becomes the validation queries; the
rest (the *fit* images) is all that learned rankers and fine-tuning see. Every candidate, a featurizer (pretrained
or a recipe's run) with a ranker, is scored by full-gallery retrieval: each validation image (at most
:attr:`TuneConfig.max_queries`, a stratified seeded sample) searches the whole training split, itself excluded.
MAP@R decides (recall@1 is reported beside it), each with a 95 % CI (bootstrap; Wilson score for recall@1).

**The budget covers everything**, from reading the data to installing the choice. A step starts only when what was
measured of its kind so far says it ends in time, with room kept for the final refit; scoring runs in blocks of
queries and fine-tuning in steps, each stopped once the time is up, and featurizing a run stops at a batch. A step
never measured before (the first fit of each learned ranker, the first run) is started on trust: the rankers' own
caps on rows and steps bound it. Whatever was not done is listed with why (:class:`Skipped`,
:attr:`RecipeOutcome.reason`).

**The look constraint**: with a look probe (:data:`LookFn`; by default :class:`CopyLook`, the seeded edited copy of
each validation image searching the training split for its original), a candidate whose copy recall@1 is below :attr:`TuneConfig.look_ratio` times cosine's on the same
featurizer is rejected: a ranker that wins labels by burying the photo asked about is not chosen.

**Never worse**: the current default (``tune``'s earlier choice, else what the app opens with) is scored on the
same validation split like any candidate; the best eligible candidate replaces it only when its validation MAP@R
is higher, otherwise the current default stays and the report says so. A learned ranker on the pretrained
featurizer is then refitted on the whole training split before it is saved and served (the validation only chose
it); on a recipe's run it is saved as validated, fitted on the fit images its network was trained on.

Recipes are tried in order while the budget lasts, then variants of the best one (:func:`_refinements`). A run
stopped by the budget keeps its last finished epoch and resumes if tuned again. Recipe runs are ordinary runs named
``tune-<recipe>``, trained on the fit images only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.artifacts import atomic_write_json, read_json
from core.config import TrainConfig, WorkbenchConfig
from core.data import ComparativeSets, Split, make_comparative_sets, stratified_split
from core.errors import ArtifactError, WorkbenchError
from core.evaluate import MAX_QUERIES, Estimate, evaluate_retrieval, metric_interval, sample_queries
from core.rankers import CosineRanker, LearnedRanker, Ranker, make_ranker, ranker_spec
from core.workdir import PRETRAINED, WorkDir
from workbench.workflows import embed_copies, fit_ranker
from workbench.workspace import WorkspaceSpec, completed_runs, open_workspace, prepared_data

if TYPE_CHECKING:
    from core.pipeline import PreparedData
    from core.train import TrainProgress
    from workbench.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe: the :class:`core.config.TrainConfig` fields it sets (the rest come from the config).

    Attributes:
        name: Short name; its run is ``tune-<name>``.
        objective: What fine-tuning optimises.
        epochs: Passes over the fit images.
        learning_rate: Peak learning rate.
        input_size: Training and featurizing resolution (0: the backbone's own).
    """

    name: str
    objective: str = "classification"
    epochs: int = 4
    learning_rate: float = 3e-3
    input_size: int = 0

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this recipe's fields."""
        return dataclasses.replace(
            base,
            objective=self.objective,  # type: ignore[arg-type]  # validated by TrainConfig
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            input_size=self.input_size,
        )


#: Tried in this order while the budget lasts: cross-entropy first, then the metric-learning objectives on the
#: embedding itself; all at the fine-tuning defaults (learning rate 3e-3, 4 epochs). On the demo's validation split
#: (2-core CPU, 155 fit images) each took 8-11 s per epoch; at 1e-3 the metric objectives left cosine MAP@R below
#: the pretrained model's (0.58-0.60 vs 0.64), at 3e-3 above it (0.69-0.73).
DEFAULT_RECIPES: tuple[Recipe, ...] = (
    Recipe("classification"),
    Recipe("triplet", objective="triplet"),
    Recipe("multisimilarity", objective="multisimilarity"),
    Recipe("supcon", objective="supcon"),
)

#: Validation queries scored per block: progress and the deadline are checked between blocks.
QUERY_BLOCK = 256
#: Copies of validation images embedded per featurizer for the look constraint at most (a stratified sample).
MAX_LOOK_COPIES = 200


@dataclass(frozen=True)
class TuneConfig:
    """What ``tune`` tries and for how long.

    Attributes:
        budget_s: Wall-clock budget in seconds for the whole search, scoring and installing included.
        rankers: Rankers scored on every featurizer.
        recipes: Fine-tuning recipes, tried in order while the budget lasts.
        refine: Then try the best trained recipe with twice the epochs, a smaller input and a third of the
            learning rate.
        validation_fraction: Share of each label's training images used as validation queries.
        max_queries: Validation queries scored at most (a stratified sample, seeded, beyond it).
        look_ratio: With a look probe, a candidate whose copy recall@1 is below this share of cosine's on the same
            featurizer is rejected (0: no constraint).
        max_copies: Validation images copied for the look probe per featurizer at most.
        seed: Seeds the validation split, the query sample and the fit images' comparative sets.
    """

    budget_s: float = 900.0
    rankers: tuple[str, ...] = ("cosine", "l2", "svm", "projection")
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES
    refine: bool = True
    validation_fraction: float = 0.25
    max_queries: int = MAX_QUERIES
    look_ratio: float = 0.95
    max_copies: int = MAX_LOOK_COPIES
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.budget_s < math.inf:  # NaN fails this too: every budget check would pass
            raise ValueError(f"tune budget must be a finite number of seconds >= 0, got {self.budget_s}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")
        if self.max_queries < 1 or self.max_copies < 1:
            raise ValueError(f"max_queries and max_copies must be >= 1, got {self.max_queries}, {self.max_copies}")
        if not 0.0 <= self.look_ratio <= 1.0:
            raise ValueError(f"look_ratio must be in [0, 1], got {self.look_ratio}")
        for name in self.rankers:
            ranker_spec(name)  # unknown names fail here, with the registry's list


@dataclass(frozen=True)
class Candidate:
    """One featurizer with one ranker, scored on the validation queries.

    Attributes:
        featurizer: ``"pretrained"`` or a recipe's run.
        ranker: Ranker name.
        map_at_r: MAP@R with its 95 % CI.
        recall_at_1: Recall@1 with its 95 % CI.
        seconds: Time to fit the ranker and score it (the run's training time is in :class:`RecipeOutcome`).
        fit_rows: Images a learned ranker was fitted on for the validation (0: a plain ranker).
        fit_seconds: Time of that fit (part of ``seconds``).
        copy_recall_at_1: Look metric: share of edited copies of validation images whose original came first
            (None: no look probe).
        rejected: Why the look constraint rules it out ("" when it does not).
    """

    featurizer: str
    ranker: str
    map_at_r: Estimate
    recall_at_1: Estimate
    seconds: float
    fit_rows: int = 0
    fit_seconds: float = 0.0
    copy_recall_at_1: float | None = None
    rejected: str = ""

    @property
    def choice(self) -> tuple[str, str]:
        """``(featurizer, ranker)``."""
        return self.featurizer, self.ranker


@dataclass(frozen=True)
class Skipped:
    """A featurizer + ranker that was not scored: ``"skipped"`` (not started) or ``"stopped"`` (the budget ran out
    while it ran), and why."""

    featurizer: str
    ranker: str
    status: str
    reason: str


@dataclass(frozen=True)
class RecipeOutcome:
    """What became of a recipe: ``"trained"``, ``"stopped"`` (budget ran out mid-run) or ``"skipped"``, and why."""

    recipe: Recipe
    run: str
    status: str
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class TuneReport:
    """Every candidate, what was skipped or stopped and why, the best candidate and what became the default.

    Attributes:
        candidates: Every scored candidate, in scoring order.
        recipes: What became of each recipe.
        skipped: Candidates not scored (budget), with why.
        winner: The best candidate the look constraint allows (None: none was scored).
        previous: The default before this tune (its earlier choice, else what the app opens with).
        incumbent: ``previous`` scored on this validation split (None: it could not be scored in time).
        installed: Whether ``winner`` became the default (it validated better than ``previous``).
        decision: One sentence saying what became the default and why.
        served_fit_rows: Images the installed learned ranker was fitted on (0: none installed, or a plain ranker).
        n_fit: Fit images (fine-tuning and learned rankers).
        n_validation: Validation images.
        n_queries: Validation images scored (a sample when there are more than ``max_queries``).
        budget_s: The wall-clock budget.
        seconds: Wall-clock time of the whole tune.
    """

    candidates: tuple[Candidate, ...]
    recipes: tuple[RecipeOutcome, ...]
    skipped: tuple[Skipped, ...]
    winner: Candidate | None
    previous: tuple[str, str]
    incumbent: Candidate | None
    installed: bool
    decision: str
    served_fit_rows: int
    n_fit: int
    n_validation: int
    n_queries: int
    budget_s: float
    seconds: float

    @property
    def choice(self) -> tuple[str, str]:
        """The ``(featurizer, ranker)`` the app opens with after this tune."""
        return self.winner.choice if self.installed and self.winner is not None else self.previous

    def not_done(self) -> list[str]:
        """One line per recipe and candidate skipped or stopped, with why."""
        lines = [
            f"recipe {outcome.recipe.name} {outcome.status}: {outcome.reason}"
            for outcome in self.recipes
            if outcome.status != "trained"
        ]
        lines += [f"{item.featurizer} + {item.ranker} {item.status}: {item.reason}" for item in self.skipped]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "winner": None if self.winner is None else dataclasses.asdict(self.winner),
            "previous": list(self.previous),
            "incumbent": None if self.incumbent is None else dataclasses.asdict(self.incumbent),
            "installed": self.installed,
            "decision": self.decision,
            "served_fit_rows": self.served_fit_rows,
            "n_fit": self.n_fit,
            "n_validation": self.n_validation,
            "n_queries": self.n_queries,
            "budget_s": self.budget_s,
            "seconds": self.seconds,
            "candidates": [dataclasses.asdict(candidate) for candidate in self.candidates],
            "recipes": [dataclasses.asdict(outcome) for outcome in self.recipes],
            "skipped": [dataclasses.asdict(item) for item in self.skipped],
        }


@dataclass(frozen=True)
class TuneProgress:
    """What ``tune`` is doing and how much of the budget is spent."""

    text: str
    elapsed_s: float
    budget_s: float

    @property
    def fraction(self) -> float:
        """Share of the budget spent, at most 1."""
        return min(1.0, self.elapsed_s / self.budget_s) if self.budget_s > 0 else 1.0


#: Called at every phase, scoring block, fine-tuning step and featurizing batch.
TuneProgressFn = Callable[[TuneProgress], None]

#: The look probe: ``look(ws, ranker, gallery, originals)`` is the copy recall@1 of ``ranker`` when an edited copy
#: of each of ``originals`` (record indices, inside ``gallery``) searches ``gallery`` (record indices) embedded by
#: ``ws``'s featurizer. A probe keeps its copies' embeddings per featurizer itself.
LookFn = Callable[["Workspace", Ranker, np.ndarray, np.ndarray], float]


class CopyLook:
    """The look probe ``tune`` uses by default (a :data:`LookFn`): the seeded edited copy of each original
    (:func:`core.looks.make_copy`, the same copy the evaluation's look metric makes of that photo) searches the
    gallery; byte-identical twins of an original never count against it. Each featurizer's copies are embedded once
    per probe."""

    def __init__(self) -> None:
        self._copies: dict[tuple[str, bytes], np.ndarray] = {}

    def __call__(self, ws: Workspace, ranker: Ranker, gallery: np.ndarray, originals: np.ndarray) -> float:
        """Copy recall@1 of ``ranker`` (see :data:`LookFn`).

        Raises:
            WorkbenchError: An original can no longer be read.
        """
        from core.looks import copy_retrieval

        key = (ws.fingerprint, np.asarray(originals, np.int64).tobytes())
        if key not in self._copies:
            self._copies[key] = embed_copies(ws, originals)
        rows = np.searchsorted(gallery, originals)
        content = np.asarray(ws.dataset.sha256s)[gallery]
        result = copy_retrieval(
            ranker, self._copies[key], ws.embeddings[gallery], rows, np.random.default_rng(ws.seed), content
        )
        return result.recall_at_1.value


class _OverBudget(Exception):
    pass


def _refinements(candidates: Sequence[Candidate], outcomes: list[RecipeOutcome]) -> list[Recipe]:
    """Variants of the best trained recipe (by its best candidate): twice the epochs, a smaller input (small photos
    gain nothing from 224 px, and it costs half as much) and a third of the learning rate."""
    trained = {outcome.run: outcome.recipe for outcome in outcomes if outcome.status == "trained"}
    scored = [(c.map_at_r.value, trained[c.featurizer]) for c in candidates if c.featurizer in trained]
    if not scored:
        return []
    best = max(scored, key=lambda pair: pair[0])[1]
    return [
        dataclasses.replace(best, name=f"{best.name}-long", epochs=2 * best.epochs),
        dataclasses.replace(best, name=f"{best.name}-small", input_size=SMALL_INPUT),
        dataclasses.replace(best, name=f"{best.name}-gentle", learning_rate=best.learning_rate / 3),
    ]


#: Input side of the "small" refinement (EfficientNet-Lite0's own is 224).
SMALL_INPUT = 160


def validation_split(prepared: PreparedData, fraction: float, rng: np.random.Generator) -> Split:
    """Fit and validation record indices, both inside the training split (stratified by label)."""
    train = np.sort(prepared.split.train)
    inner = stratified_split(prepared.dataset.label_array[train], 1.0 - fraction, rng)
    return Split(np.sort(train[inner.train]), np.sort(train[inner.test]))


def validation_queries(labels: np.ndarray, split: Split, max_queries: int, rng: np.random.Generator) -> np.ndarray:
    """The validation images that are scored: those with another training image of their label, at most
    ``max_queries`` of them (stratified by label, seeded), ascending."""
    gallery_labels = labels[np.concatenate([split.train, split.test])]
    names, counts = np.unique(gallery_labels, return_counts=True)
    usable = split.test[counts[np.searchsorted(names, labels[split.test])] > 1]
    return sample_queries(usable, labels, max_queries, rng) if len(usable) else usable


def score_candidate(
    featurizer: str,
    name: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    split: Split,
    sets: ComparativeSets,
    rng: np.random.Generator,
    settings: WorkbenchConfig | None = None,
    queries: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Candidate, Ranker]:
    """Fit one ranker on the fit images, then let the validation queries search the training split, in blocks.

    Args:
        featurizer: Name reported for these embeddings.
        name: Registry name of the ranker.
        embeddings: One row per dataset record.
        labels: Label of each record.
        split: Fit and validation record indices (together: the training split).
        sets: Comparative sets over the fit images (positions in ``split.train``), for rankers learning from pairs.
        rng: Draws the bootstrap interval of MAP@R (recall@1 gets a Wilson one) and seeds the random baseline.
        settings: Learned rankers take their section of it (``[svm]``) when there is one.
        queries: Validation record indices to score (default: every usable one, :func:`validation_queries`).
        progress: Told what is happening (fitting, each block of queries).
        stop: Asked before the fit and every block; True stops the scoring (raises ``_OverBudget``).

    Returns:
        The candidate and its ranker (fitted on the fit images).
    """
    start = time.perf_counter()
    say = progress or (lambda text: None)
    if queries is None:
        queries = validation_queries(labels, split, len(split.test) or 1, np.random.default_rng(0))
    spec = ranker_spec(name)
    section = getattr(settings, name, None)
    if not spec.learned:
        ranker = make_ranker(name, rng)
    else:
        ranker = spec.build(section) if section is not None else spec.build()
    fit_rows, fit_seconds = 0, 0.0
    if isinstance(ranker, LearnedRanker):
        if stop is not None and stop():
            raise _OverBudget
        say(f"{name}: fitting on {len(split.train)} images")
        ranker.fit(embeddings[split.train], labels[split.train], sets)
        fit_rows, fit_seconds = len(split.train), time.perf_counter() - start
    gallery = np.sort(np.concatenate([split.train, split.test]))
    gallery_embeddings, gallery_labels = embeddings[gallery], labels[gallery]
    positions = np.searchsorted(gallery, queries)
    per_query: dict[str, list[np.ndarray]] = {"map@r": [], "recall@1": []}
    for begin in range(0, len(positions), QUERY_BLOCK):
        if stop is not None and stop():
            raise _OverBudget
        say(f"{name}: scoring, {begin}/{len(positions)} queries done")
        block = evaluate_retrieval(
            ranker, gallery_embeddings, gallery_labels, positions[begin : begin + QUERY_BLOCK], ks=(1,)
        )
        for metric, values in per_query.items():
            values.append(block.per_query[metric])
    candidate = Candidate(
        featurizer,
        name,
        metric_interval("map@r", np.concatenate(per_query["map@r"]), rng),
        metric_interval("recall@1", np.concatenate(per_query["recall@1"]), rng),
        time.perf_counter() - start,
        fit_rows,
        fit_seconds,
    )
    log.info("tune: %s + %s: MAP@R %s", featurizer, name, candidate.map_at_r)
    return candidate, ranker


def score_featurizer(
    featurizer: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    split: Split,
    rankers: Sequence[str],
    sets: ComparativeSets,
    rng: np.random.Generator,
    settings: WorkbenchConfig | None = None,
) -> list[tuple[Candidate, Ranker]]:
    """:func:`score_candidate` for each of ``rankers`` on every usable validation image, with no budget."""
    return [score_candidate(featurizer, name, embeddings, labels, split, sets, rng, settings) for name in rankers]


@dataclass(frozen=True)
class _Data:
    """What every candidate is scored on: labels, the fit/validation split, the scored queries, the fit images'
    comparative sets."""

    labels: np.ndarray
    split: Split
    queries: np.ndarray
    sets: ComparativeSets
    n_train: int

    @property
    def gallery(self) -> np.ndarray:
        return np.sort(np.concatenate([self.split.train, self.split.test]))


class _Search:
    """One ``tune``: the clock, what each kind of step took so far, and every candidate, outcome and skip."""

    def __init__(self, spec: WorkspaceSpec, config: TuneConfig, progress: TuneProgressFn | None, look: LookFn | None):
        self.spec, self.config, self.progress, self.look = spec, config, progress, look
        self.started = time.perf_counter()
        self.rng = np.random.default_rng(config.seed)
        self.candidates: list[Candidate] = []
        self.rankers: dict[tuple[str, str], Ranker] = {}
        self.workspaces: dict[str, Workspace] = {}
        self.outcomes: list[RecipeOutcome] = []
        self.skipped: list[Skipped] = []
        self.step_seconds: dict[str, float] = {}  # ranker -> its fit and scoring on the latest featurizer
        self.look_seconds = 0.0  # embedding one featurizer's copies for the look metric
        self.open_seconds = 0.0  # featurizing a run
        self.per_copy = 0.0  # decoding, editing and embedding one copy for the look metric, pretrained
        self.previous: tuple[str, str] = (PRETRAINED, "")  # the current default, set once known
        self.n_train = 0
        self.now = "starting"

    # --- the clock -------------------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def limit(self) -> float:
        """When every step must have ended: the budget less the room kept for installing the choice."""
        return self.config.budget_s - self.refit_seconds()

    def refit_seconds(self) -> float:
        """Room kept for refitting the best candidate so far on the whole training split, when it would replace
        the current default and is a learned ranker on the pretrained featurizer (from its fit on fewer images)."""
        best = max((c for c in self.candidates if not c.rejected), key=lambda c: c.map_at_r.value, default=None)
        if best is None or best.featurizer != PRETRAINED or not best.fit_rows or best.choice == self.previous:
            return 0.0
        return best.fit_seconds * self.n_train / best.fit_rows

    def fits(self, seconds: float) -> bool:
        """Whether a step expected to take ``seconds`` ends by :meth:`limit`."""
        return self.elapsed() + seconds <= self.limit()

    def over(self) -> bool:
        return self.elapsed() > self.limit()

    def left(self) -> str:
        return f"{max(0.0, self.limit() - self.elapsed()):.0f} s of the budget left"

    def phase(self, text: str) -> None:
        self.now = text
        log.debug("tune: %s", text)
        if self.progress is not None:
            self.progress(TuneProgress(text, self.elapsed(), self.config.budget_s))

    def skip(self, featurizer: str, ranker: str, status: str, reason: str) -> None:
        self.skipped.append(Skipped(featurizer, ranker, status, reason))
        log.info("tune: %s + %s %s: %s", featurizer, ranker, status, reason)

    # --- scoring ---------------------------------------------------------------------------------------------

    def scoring_estimate(self) -> float:
        """Seconds to score one more featurizer, from what the last one took."""
        return sum(self.step_seconds.get(name, 0.0) for name in self.config.rankers) + self.look_seconds

    def score(self, featurizer: str, ws: Workspace, names: Sequence[str], data: _Data) -> None:
        """Score each of ``names`` on ``ws``'s embeddings while the budget lasts; list the others with why."""
        self.workspaces[featurizer] = ws
        names = [name for name in dict.fromkeys(names) if (featurizer, name) not in self.rankers]
        cosine_look = None
        originals = sample_queries(
            data.queries, data.labels, self.config.max_copies, np.random.default_rng(self.config.seed)
        )
        if self.look is not None and self.config.look_ratio > 0 and names:
            if not self.fits(self.look_seconds):
                reason = f"the look metric's copies need ~{self.look_seconds:.0f} s, {self.left()}"
                for name in names:
                    self.skip(featurizer, name, "skipped", reason)
                return
            self.phase(f"scoring {featurizer}: embedding {len(originals)} copies for the look metric")
            started = time.perf_counter()
            cosine_look = self.look(ws, CosineRanker(), data.gallery, originals)
            self.look_seconds = time.perf_counter() - started
            self.per_copy = self.per_copy or self.look_seconds / max(len(originals), 1)
        for name in names:
            estimate = self.step_seconds.get(name, 0.0)
            if not self.fits(estimate):
                why = (
                    f"needs ~{estimate:.0f} s as measured before, {self.left()}"
                    if estimate
                    else "the budget ran out before it started"
                )
                self.skip(featurizer, name, "skipped", why)
                continue
            started = time.perf_counter()
            try:
                candidate, ranker = score_candidate(
                    featurizer, name, ws.embeddings, data.labels, data.split, data.sets, self.rng, self.spec.config,
                    data.queries, lambda text: self.phase(f"scoring {featurizer} + {text}"), self.over,
                )  # fmt: skip
                if cosine_look is not None and self.look is not None:
                    self.phase(f"scoring {featurizer} + {name}: look metric")
                    copy_recall = cosine_look if name == "cosine" else self.look(ws, ranker, data.gallery, originals)
                    floor = self.config.look_ratio * cosine_look
                    why = f"copy recall@1 {copy_recall:.2f} < {self.config.look_ratio:.2f} x cosine's {cosine_look:.2f}"
                    candidate = dataclasses.replace(
                        candidate, copy_recall_at_1=copy_recall, rejected="" if copy_recall >= floor else why
                    )
            except _OverBudget:
                self.skip(featurizer, name, "stopped", f"the budget ran out while scoring it ({self.now})")
                continue
            candidate = dataclasses.replace(candidate, seconds=time.perf_counter() - started)
            self.step_seconds[name] = candidate.seconds
            self.candidates.append(candidate)
            self.rankers[candidate.choice] = ranker

    def featurize_estimate(self, per_epoch: float, data: _Data) -> float:
        """Seconds to featurize every image with a new run: what the last run took; before any, twice what a copy
        for the look metric took per image (decoding and embedding one; the run's model must also be built), or
        without copies a third of a training epoch per image (a training step is about three forward passes)."""
        if self.open_seconds:
            return self.open_seconds
        if self.per_copy:
            return 2 * self.per_copy * len(data.labels)
        return per_epoch * len(data.labels) / len(data.split.train) / 3

    def open_run(self, run: str) -> Workspace:
        """The run's workspace, featurizing what is not cached; stops at a batch when the budget runs out."""

        def on_batch(done: int, total: int) -> None:
            if self.over():
                raise _OverBudget
            self.phase(f"featurizing with {run}: {done}/{total} images")

        self.phase(f"featurizing with {run}")
        started = time.perf_counter()
        ws = open_workspace(self.spec.with_run(run), on_batch)  # the run's own manifest sets its input size
        self.open_seconds = time.perf_counter() - started
        return ws

    # --- recipes ---------------------------------------------------------------------------------------------

    def try_recipe(self, recipe: Recipe, data: _Data, records: Sequence[Any]) -> None:
        """Fine-tune ``recipe`` on the fit images if the budget allows, then score its run."""
        from core.train import fine_tune

        run = f"tune-{recipe.name}"
        if run in self.workspaces:  # the current default's run, scored already: score the other rankers on it
            self.outcomes.append(RecipeOutcome(recipe, run, "trained", reason="the current default's run, reused"))
            self.score(run, self.workspaces[run], self.config.rankers, data)
            return
        per_epoch = max((o.seconds_per_epoch for o in self.outcomes), default=0.0)
        after = self.scoring_estimate() + self.featurize_estimate(per_epoch, data)
        need = per_epoch * recipe.epochs + after
        if self.over() or not self.fits(need):
            epochs = f"{recipe.epochs} epochs x {per_epoch:.0f} s" if per_epoch else "no epoch measured yet"
            detail = f"{epochs}, then ~{after:.0f} s to featurize and score; "
            about = "~" if per_epoch else "more than ~"
            self.outcomes.append(
                RecipeOutcome(recipe, run, "skipped", reason=f"needs {about}{need:.0f} s ({detail}{self.left()})")
            )
            log.info("tune: %s skipped: %s", run, self.outcomes[-1].reason)
            return
        self.phase(f"fine-tuning {run}")
        run_started = time.perf_counter()
        first: list[tuple[float, int]] = []  # (time, steps done) at the first step: the model is built by then
        epoch_seconds: list[float] = []
        pace = [0.0]  # seconds per epoch, as measured so far

        def on_step(event: TrainProgress) -> None:
            done, total = (event.epoch - 1) * event.steps + event.step, event.epochs * event.steps
            now = time.perf_counter()
            first[:] = first or [(now, done)]
            if event.metrics is not None:
                epoch_seconds.append(event.metrics.seconds)
            measured = done - first[0][1]
            per_step = (now - first[0][0]) / measured if measured >= 2 else 0.0
            pace[0] = float(np.mean(epoch_seconds)) if epoch_seconds else per_step * event.steps
            rest = (total - done) * per_step
            then = self.scoring_estimate() + self.featurize_estimate(pace[0], data)
            if self.over():
                raise _OverBudget(f"the budget ran out at epoch {event.epoch}/{event.epochs}, step {event.step}")
            if per_step and not self.fits(rest + then):
                raise _OverBudget(
                    f"at epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps} it would need ~{rest:.0f} s "
                    f"more, then ~{then:.0f} s to featurize and score; {self.left()}"
                )
            self.phase(f"fine-tuning {run}: epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps}")

        try:
            fine_tune(
                records, data.split, recipe.train_config(self.spec.config.train), self.spec.layout.run(run), on_step
            )
        except _OverBudget as stop:
            reason = f"{stop} (the run keeps its last finished epoch and resumes if tuned again)"
            seconds = time.perf_counter() - run_started
            self.outcomes.append(RecipeOutcome(recipe, run, "stopped", seconds, pace[0], reason))
            log.info("tune: %s %s", run, reason)
            return
        seconds = time.perf_counter() - run_started
        per_epoch = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0  # 0: a finished run, only reopened
        try:
            ws = self.open_run(run)
        except _OverBudget:
            reason = f"trained, but the budget ran out while featurizing with it ({self.now})"
            self.outcomes.append(RecipeOutcome(recipe, run, "stopped", seconds, per_epoch, reason))
            return
        self.outcomes.append(RecipeOutcome(recipe, run, "trained", seconds, per_epoch))
        self.score(run, ws, self.config.rankers, data)

    # --- the choice ------------------------------------------------------------------------------------------

    def decide(self, previous: tuple[str, str], data: _Data) -> tuple[Candidate | None, Candidate | None, bool, str]:
        """The best eligible candidate, the scored current default, whether the best replaces it, and why."""
        eligible = [c for c in self.candidates if not c.rejected]
        winner = max(eligible, key=lambda c: c.map_at_r.value, default=None)  # first of equals: scored first
        incumbent = next((c for c in self.candidates if c.choice == previous), None)
        current = " + ".join(previous)
        if winner is None:
            return None, incumbent, False, f"no candidate was scored within the budget; the app keeps {current}"
        best = f"{winner.featurizer} + {winner.ranker}"
        if incumbent is None:
            return (
                winner,
                None,
                False,
                (
                    f"kept {current}: it could not be scored on the validation split within the budget, so {best} "
                    f"(MAP@R {winner.map_at_r.value:.3f}) cannot be shown to be better"
                ),
            )
        if winner.choice == previous:
            return winner, incumbent, False, f"kept {current}: it validated best (MAP@R {incumbent.map_at_r})"
        if winner.map_at_r.value <= incumbent.map_at_r.value:
            flag = f" ({incumbent.rejected})" if incumbent.rejected else ""
            return (
                winner,
                incumbent,
                False,
                (
                    f"kept {current} (validation MAP@R {incumbent.map_at_r}){flag}: the best eligible candidate, {best}, "
                    f"validated no better ({winner.map_at_r})"
                ),
            )
        return (
            winner,
            incumbent,
            True,
            (f"{best} (validation MAP@R {winner.map_at_r}) replaces {current} ({incumbent.map_at_r})"),
        )

    def install(self, winner: Candidate, data: _Data) -> int:
        """Save the winner's learned ranker (pretrained: refitted on the whole training split) and make the winner
        the default; returns the images the served ranker was fitted on (0: a plain ranker)."""
        ranker = self.rankers[winner.choice]
        ws = self.workspaces[winner.featurizer]
        rows = 0
        if isinstance(ranker, LearnedRanker):
            if winner.featurizer == PRETRAINED:
                self.phase(f"refitting {winner.ranker} on all {data.n_train} training images")
                fit_ranker(ws, winner.ranker)  # validation chose it; every training image fits the one served
                rows = data.n_train
            else:  # the run's network was trained on the fit images: its ranker is served as validated
                fit_ranker(ws, winner.ranker, ranker)
                rows = winner.fit_rows
        atomic_write_json(self.spec.layout.default_choice, {"featurizer": winner.featurizer, "ranker": winner.ranker})
        return rows


def tune(
    spec: WorkspaceSpec,
    config: TuneConfig = TuneConfig(),
    progress: TuneProgressFn | None = None,
    look: LookFn | None = None,
) -> TuneReport:
    """Score the current default, the pretrained featurizer and each recipe's run with every ranker within the
    budget; make the best the default when it validates better than the current one.

    Args:
        spec: The dataset, condition and workdir (its run is ignored).
        config: What to try and for how long.
        progress: Told what is happening, with the time spent, at every phase, block, step and batch.
        look: The look probe of the look constraint (default: :class:`CopyLook`; none when
            :attr:`TuneConfig.look_ratio` is 0).

    Raises:
        WorkbenchError: Too few training images to carve a validation split.
    """
    search = _Search(spec, config, progress, look or (CopyLook() if config.look_ratio > 0 else None))
    search.phase("reading the data")
    prepared = prepared_data(spec.config.data, spec.layout)
    labels = prepared.dataset.label_array.astype(str)
    rng = np.random.default_rng(config.seed)
    split = validation_split(prepared, config.validation_fraction, rng)
    if len(split.test) == 0 or len(np.unique(labels[split.train])) < 2:
        raise WorkbenchError(
            f"{spec.config.data.root}: too few training images to hold out a validation split "
            f"({len(prepared.split.train)} training images)"
        )
    sets = make_comparative_sets(
        labels[split.train], prepared.config.train_queries_per_label, prepared.config.n_negatives, rng
    )
    queries = validation_queries(labels, split, config.max_queries, rng)
    data = _Data(labels, split, queries, sets, len(prepared.split.train))

    search.phase("featurizing with the pretrained model")
    base = open_workspace(
        spec.with_run(PRETRAINED), lambda done, total: search.phase(f"featurizing with pretrained: {done}/{total}")
    )
    previous = default_choice(spec.layout) or (PRETRAINED, base.rankers_on_offer()[0])
    search.previous, search.n_train = previous, data.n_train
    first = [previous[1]] if previous[0] == PRETRAINED else []  # the current default is scored first
    search.score(PRETRAINED, base, [*first, *config.rankers], data)
    if previous[0] != PRETRAINED and previous[0] in completed_runs(spec.layout):
        try:
            search.score(previous[0], search.open_run(previous[0]), [previous[1]], data)
        except _OverBudget:
            search.skip(*previous, "stopped", f"the budget ran out while featurizing with it ({search.now})")

    for recipe in config.recipes:
        search.try_recipe(recipe, data, prepared.dataset.records)
    if config.refine:  # every recipe tried: vary the best one's epochs, input size and learning rate
        for recipe in _refinements(search.candidates, search.outcomes):
            search.try_recipe(recipe, data, prepared.dataset.records)

    winner, incumbent, installed, decision = search.decide(previous, data)
    served_rows = search.install(winner, data) if installed and winner is not None else 0
    log.info("tune: %s", decision)
    report = TuneReport(
        tuple(search.candidates),
        tuple(search.outcomes),
        tuple(search.skipped),
        winner,
        previous,
        incumbent,
        installed,
        decision,
        served_rows,
        len(split.train),
        len(split.test),
        len(queries),
        config.budget_s,
        search.elapsed(),
    )
    atomic_write_json(spec.layout.tune_report, report.to_dict())
    search.phase(f"done: the app opens with {' + '.join(report.choice)}")
    return report


def default_choice(layout: WorkDir) -> tuple[str, str] | None:
    """The ``(featurizer, ranker)`` that ``tune`` chose for this dataset, or None when it never ran, its file is
    unreadable or not a choice (garbage, an unknown ranker), or the run it chose is gone (deleted, or never
    completed); each of those is one warning naming the file. A chosen ranker that is not fitted (or whose file is
    damaged) is the caller's to check: the CLI and the app fall back to cosine."""
    from core.rankers import list_rankers

    path = layout.default_choice
    if not path.exists():
        return None
    hint = "ignoring it (run `python -m workbench tune` to choose again, or delete it)"
    try:
        payload = read_json(path)
    except ArtifactError as err:
        log.warning("%s; %s", err, hint)
        return None
    featurizer = payload.get("featurizer") if isinstance(payload, dict) else None
    ranker = payload.get("ranker") if isinstance(payload, dict) else None
    if not isinstance(featurizer, str) or not featurizer or ranker not in list_rankers():
        log.warning(
            '%s: not a choice of tune (expected {"featurizer": <run or pretrained>, "ranker": one of %s}); %s',
            path,
            ", ".join(list_rankers()),
            hint,
        )
        return None
    choice = featurizer, str(ranker)
    if choice[0] != PRETRAINED and choice[0] not in completed_runs(layout):
        log.warning("%s: tune chose run %r, which is gone; ignoring that choice", layout.default_choice, choice[0])
        return None
    return choice
