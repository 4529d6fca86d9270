"""``tune``: choose the fine-tuning recipe and the ranker for a dataset on a validation split of its training split.

The test split is never looked at. A share of each label's training images becomes the validation queries; the
rest (the *fit* images) is all that learned rankers and fine-tuning see. Every candidate, a featurizer (pretrained
or a recipe's run) with a ranker, is scored by full-gallery retrieval: each validation image searches the whole
training split, itself excluded. MAP@R decides (recall@1 is reported beside it), each with a bootstrap 95 % CI.

Recipes are tried in order while the time budget lasts, then variants of the best one (:func:`_refinements`); one
that would overrun the budget is stopped at the end of a step (its run keeps its last finished epoch and resumes
if tuned again). The winner is written as the dataset's default choice, so the app opens with that featurizer and
ranker; a learned ranker is saved as validated (fitted on the fit images), not refitted. Recipe runs are ordinary
runs named ``tune-<recipe>``, trained on the fit images only.
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
from core.evaluate import Estimate, evaluate_retrieval
from core.rankers import LearnedRanker, Ranker, make_ranker, ranker_spec
from core.workdir import PRETRAINED, WorkDir
from workbench.workflows import fit_ranker
from workbench.workspace import WorkspaceSpec, completed_runs, open_workspace, prepared_data

if TYPE_CHECKING:
    from core.pipeline import PreparedData
    from core.train import TrainProgress

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


@dataclass(frozen=True)
class TuneConfig:
    """What ``tune`` tries and for how long.

    Attributes:
        budget_s: Wall-clock budget in seconds for the whole search.
        rankers: Rankers scored on every featurizer.
        recipes: Fine-tuning recipes, tried in order while the budget lasts.
        refine: Then try the best trained recipe with twice the epochs, a smaller input and a third of the
            learning rate.
        validation_fraction: Share of each label's training images used as validation queries.
        seed: Seeds the validation split and the fit images' comparative sets.
    """

    budget_s: float = 900.0
    rankers: tuple[str, ...] = ("cosine", "l2", "svm", "projection")
    recipes: tuple[Recipe, ...] = DEFAULT_RECIPES
    refine: bool = True
    validation_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.budget_s < math.inf:  # NaN fails this too: every budget check would pass
            raise ValueError(f"tune budget must be a finite number of seconds >= 0, got {self.budget_s}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {self.validation_fraction}")
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
    """

    featurizer: str
    ranker: str
    map_at_r: Estimate
    recall_at_1: Estimate
    seconds: float


@dataclass(frozen=True)
class RecipeOutcome:
    """What became of a recipe: ``"trained"``, ``"stopped"`` (budget ran out mid-run) or ``"skipped"``."""

    recipe: Recipe
    run: str
    status: str
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0


@dataclass(frozen=True)
class TuneReport:
    """Every candidate, what became of each recipe, and the winner."""

    candidates: tuple[Candidate, ...]
    recipes: tuple[RecipeOutcome, ...]
    winner: Candidate
    n_fit: int
    n_validation: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "winner": dataclasses.asdict(self.winner),
            "n_fit": self.n_fit,
            "n_validation": self.n_validation,
            "seconds": self.seconds,
            "candidates": [dataclasses.asdict(candidate) for candidate in self.candidates],
            "recipes": [dataclasses.asdict(outcome) for outcome in self.recipes],
        }


#: ``phase(text, fraction)``: what ``tune`` is doing and the share of the budget spent.
TuneProgressFn = Callable[[str, float], None]


class _OverBudget(Exception):
    pass


def _refinements(candidates: list[tuple[Candidate, Ranker]], outcomes: list[RecipeOutcome]) -> list[Recipe]:
    """Variants of the best trained recipe (by its best candidate): twice the epochs, a smaller input (small photos
    gain nothing from 224 px, and it costs half as much) and a third of the learning rate."""
    trained = {outcome.run: outcome.recipe for outcome in outcomes if outcome.status == "trained"}
    scored = [(c.map_at_r.value, trained[c.featurizer]) for c, _ in candidates if c.featurizer in trained]
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
    """Fit each ranker on the fit images, then let every validation image search the training split.

    Args:
        featurizer: Name reported for these embeddings.
        embeddings: One row per dataset record.
        labels: Label of each record.
        split: Fit and validation record indices (together: the training split).
        rankers: Registry names.
        sets: Comparative sets over the fit images (positions in ``split.train``), for rankers learning from pairs.
        rng: Draws the bootstrap intervals (and seeds the random baseline).
        settings: Learned rankers take their section of it (``[svm]``) when there is one.

    Returns:
        Each candidate with the ranker it scored (fitted on the fit images).
    """
    gallery = np.sort(np.concatenate([split.train, split.test]))
    queries = np.searchsorted(gallery, split.test)
    candidates = []
    for name in rankers:
        start = time.perf_counter()
        spec = ranker_spec(name)
        section = getattr(settings, name, None)
        if not spec.learned:
            ranker = make_ranker(name, rng)
        else:
            ranker = spec.build(section) if section is not None else spec.build()
        if isinstance(ranker, LearnedRanker):
            ranker.fit(embeddings[split.train], labels[split.train], sets)
        result = evaluate_retrieval(ranker, embeddings[gallery], labels[gallery], queries, ks=(1,))  # MAP@R, r@1
        candidate = Candidate(
            featurizer,
            name,
            result.interval("map@r", rng),
            result.interval("recall@1", rng),
            time.perf_counter() - start,
        )
        candidates.append((candidate, ranker))
        log.info("tune: %s + %s: MAP@R %s", featurizer, name, candidate.map_at_r)
    return candidates


def tune(spec: WorkspaceSpec, config: TuneConfig = TuneConfig(), progress: TuneProgressFn | None = None) -> TuneReport:
    """Score the pretrained featurizer and each recipe's run with every ranker; make the best the default.

    Raises:
        WorkbenchError: Too few training images to carve a validation split.
    """
    from core.train import fine_tune

    started = time.perf_counter()

    def phase(text: str) -> None:
        log.debug("tune: %s", text)
        if progress is not None:
            progress(text, min(1.0, (time.perf_counter() - started) / max(config.budget_s, 1e-9)))

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

    phase("scoring the pretrained featurizer")
    base = open_workspace(spec.with_run(PRETRAINED))
    candidates = score_featurizer(PRETRAINED, base.embeddings, labels, split, config.rankers, sets, rng, spec.config)
    outcomes: list[RecipeOutcome] = []

    def try_recipe(recipe: Recipe) -> None:
        """Fine-tune ``recipe`` on the fit images if the budget allows, then score its run."""
        run = f"tune-{recipe.name}"
        train_config = recipe.train_config(spec.config.train)
        remaining = config.budget_s - (time.perf_counter() - started)
        per_epoch = max((outcome.seconds_per_epoch for outcome in outcomes), default=0.0)
        if remaining <= 0 or per_epoch * recipe.epochs > remaining:
            outcomes.append(RecipeOutcome(recipe, run, "skipped"))
            log.info("tune: %s skipped (%.0f s of the budget left)", run, max(remaining, 0.0))
            return
        phase(f"fine-tuning {run}")
        run_started = time.perf_counter()

        def on_step(event: TrainProgress) -> None:
            if time.perf_counter() - started > config.budget_s:
                raise _OverBudget
            if event.metrics is not None:
                phase(f"fine-tuning {run}: epoch {event.epoch}/{event.epochs} done in {event.metrics.seconds:.0f} s")

        try:
            fine_tune(prepared.dataset.records, split, train_config, spec.layout.run(run), on_step)
        except _OverBudget:
            outcomes.append(RecipeOutcome(recipe, run, "stopped", time.perf_counter() - run_started))
            log.info("tune: %s stopped, the budget ran out", run)
            return
        seconds = time.perf_counter() - run_started
        outcomes.append(RecipeOutcome(recipe, run, "trained", seconds, seconds / max(recipe.epochs, 1)))
        phase(f"scoring {run}")
        tuned = open_workspace(spec.with_run(run))  # the run's own manifest sets its input size
        candidates.extend(
            score_featurizer(run, tuned.embeddings, labels, split, config.rankers, sets, rng, spec.config)
        )

    for recipe in config.recipes:
        try_recipe(recipe)
    if config.refine:  # every recipe tried: vary the best one's epochs, input size and learning rate
        for recipe in _refinements(candidates, outcomes):
            try_recipe(recipe)

    winner, winning_ranker = max(candidates, key=lambda pair: pair[0].map_at_r.value)  # first of equals: cheaper
    report = TuneReport(
        tuple(candidate for candidate, _ in candidates),
        tuple(outcomes),
        winner,
        len(split.train),
        len(split.test),
        time.perf_counter() - started,
    )
    atomic_write_json(spec.layout.tune_report, report.to_dict())
    if isinstance(winning_ranker, LearnedRanker):
        # the ranker validated is the one served: refitted on all training images, a fine-tuned run's ranker would
        # learn from images its network was trained on (near-perfect clusters), which the validation never saw
        fit_ranker(open_workspace(spec.with_run(winner.featurizer)), winner.ranker, winning_ranker)
    atomic_write_json(spec.layout.default_choice, {"featurizer": winner.featurizer, "ranker": winner.ranker})
    phase(f"done: {winner.featurizer} + {winner.ranker}")
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
