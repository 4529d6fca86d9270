"""Fusion of attribute rankers over a workspace (seed 001, part 2): one calibrated ranker per meaning of "similar"
(the label folders and each column of the dataset's ``attributes.csv``), their probabilities of "same" averaged with
the user's weights (:class:`core.fusion.FusionRanker`).

The label folders bring their SVM (the one the app fits anyway: Platt-scaled distance, so it also orders the photos
of a label); each attribute brings a :class:`core.fusion.ValueAgreementRanker`, the probability that two photos
share its value (core.fusion says why not an SVM per attribute). Each is fitted on the training split of its own
condition (``--condition colour``: that attribute's labels, split and workdir) for the workspace's featurizer, saved
there, and fitted again when that condition's data change; features are shared by the conditions, so a fit costs
the fit alone. Scoring, searching and evaluating the fused ranker then use the workspace's own gallery, split and
comparative sets.

Every door names the meanings the same way, ``MEANING=WEIGHT`` (:func:`parse_fusion_weights`: ``label`` for the label
folders, an attribute by its column name), and gets the fused ranker and what its score means from here
(:func:`fusion_model`, :func:`fusion_score_meaning`). The CLI and the app fit missing rankers on use; the REST service
asks :func:`attribute_rankers` not to (``fit=False``) and refuses until ``python -m workbench fit --fusion`` ran.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.attributes import ATTRIBUTES_FILE, attribute_names, read_attributes
from core.errors import ArtifactError, DatasetError, WorkbenchError
from core.evaluate import EvaluationResult, RetrievalResult
from core.fusion import CalibratedRanker, FusionRanker, ValueAgreementRanker
from core.pipeline import SearchHit, evaluate_rankers
from core.rankers import top_k
from core.svm import SVMRanker
from workbench.workspace import Workspace, WorkspaceSpec, check_loaded_ranker, gallery_embeddings, refresh_data

log = logging.getLogger(__name__)

#: What the condition ``""`` (the label folders) is called where conditions are listed.
LABEL_FOLDERS = "label folders"
#: What ``MEANING=WEIGHT`` calls the label folders (:data:`LABEL_FOLDERS` is understood too).
LABEL_MEANING = "label"
#: The command that fits every ranker the fusion uses, named where a door refuses to fit them itself.
FIT_FUSION_COMMAND = "python -m workbench fit --fusion"
#: The registry's ranker the label folders bring (calibrated: it has probabilities).
LABEL_RANKER = "svm"
#: The file name (under a condition's rankers folder, per featurizer) of an attribute's value-agreement ranker.
AGREEMENT_RANKER = ValueAgreementRanker.name

#: ``progress(done, total, condition)`` before each attribute ranker is fitted (``condition`` "" when all are done).
FusionProgressFn = Callable[[int, int, str], None]


def condition_title(condition: str) -> str:
    """How a condition is shown: its attribute, or :data:`LABEL_FOLDERS`."""
    return condition or LABEL_FOLDERS


def meaning_name(condition: str) -> str:
    """How ``MEANING=WEIGHT`` names a condition: its attribute, or :data:`LABEL_MEANING`."""
    return condition or LABEL_MEANING


class FusionUnavailableError(WorkbenchError):
    """A meaning weighted above 0 whose ranker this dataset cannot fit (a single value, too few photos...)."""


class UnfittedFusionError(WorkbenchError):
    """Weighted meanings whose rankers are missing or stale, where the caller asked for no fit (the REST service).

    Attributes:
        conditions: Those meanings' conditions (``""``: the label folders).
    """

    def __init__(self, message: str, conditions: Sequence[str]) -> None:
        super().__init__(message)
        self.conditions = tuple(conditions)


def parse_fusion_weights(items: Sequence[str], option: str = "--fuse") -> dict[str, float]:
    """The weight of each condition named by ``MEANING=WEIGHT`` items (``label=1``, ``setting=0.5``), the one
    syntax of the CLI's ``--fuse`` and the REST service's ``fuse`` field (``option`` names it in messages).

    Whether each meaning exists and the weights add up is checked by :func:`fusion_model`.

    Raises:
        WorkbenchError: An item without ``=``, an empty meaning, a weight that is not a finite number, or a meaning
            named twice.
    """
    weights: dict[str, float] = {}
    for item in items:
        name, equals, value = (part.strip() for part in item.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not equals or not name or not math.isfinite(weight):
            raise WorkbenchError(f"{option} {item}: expected MEANING=WEIGHT, e.g. setting=1")
        condition = "" if name in (LABEL_MEANING, LABEL_FOLDERS) else name
        if condition in weights:
            raise WorkbenchError(f"{option} {item}: {name} is weighted twice")
        weights[condition] = weight
    return weights


def _check_weights(weights: Mapping[str, float], conditions: Sequence[str]) -> None:
    values = [float(weights.get(condition, 0.0)) for condition in conditions]
    if any(value < 0 for value in values) or not sum(values) > 0:
        shown = ", ".join(f"{condition_title(c)} {v:g}" for c, v in zip(conditions, values, strict=True))
        raise WorkbenchError(f"fusion weights must be non-negative with one above 0, got {shown or 'none'}")


def fusion_conditions(spec: WorkspaceSpec) -> list[str]:
    """The meanings of "similar" a dataset offers for fusion: ``""`` (the label folders) and each attribute of its
    ``attributes.csv``; empty when it has no attributes (nothing to fuse)."""
    attributes = attribute_names(spec.config.data.root / ATTRIBUTES_FILE)
    return ["", *attributes] if attributes else []


def condition_workspace(ws: Workspace, condition: str) -> Workspace:
    """The workspace's featurizer under another condition: that condition's prepared data (its images, labels and
    split) and their embeddings from the shared feature cache; ``ws`` itself for its own condition.

    Raises:
        WorkbenchError: The condition is unusable (no such attribute, no image with a value...).
    """
    if condition == ws.spec.config.data.condition:
        return ws
    data = dataclasses.replace(ws.spec.config.data, condition=condition)
    spec = dataclasses.replace(ws.spec, config=dataclasses.replace(ws.spec.config, data=data))
    state = refresh_data(data, spec.layout)
    embeddings = gallery_embeddings(spec, state.prepared, ws.featurizer)
    return Workspace(spec, state.prepared, ws.featurizer, embeddings, state.changes, state.watch)


@dataclass(frozen=True)
class AttributeRankers:
    """The calibrated ranker of each condition of a dataset, for one featurizer.

    Attributes:
        conditions: The conditions with a ranker, in :func:`fusion_conditions` order (``""``: the label folders).
        rankers: Their rankers, aligned with ``conditions``.
        failed: ``(condition, reason)`` of conditions whose ranker could not be fitted (a single value...).
        unfitted: Conditions whose ranker is missing or stale and was left so (``attribute_rankers(fit=False)``).
        meanings: Every condition of the dataset, in :func:`fusion_conditions` order, whatever became of its ranker.
    """

    conditions: tuple[str, ...]
    rankers: tuple[CalibratedRanker, ...]
    failed: tuple[tuple[str, str], ...] = ()
    unfitted: tuple[str, ...] = ()
    meanings: tuple[str, ...] = ()

    def fused(self, weights: Mapping[str, float]) -> FusionRanker:
        """The fusion of the rankers with a weight per condition (missing: 0).

        Raises:
            WorkbenchError: A negative weight, or no positive one.
        """
        _check_weights(weights, self.conditions)
        return FusionRanker(self.rankers, [float(weights.get(condition, 0.0)) for condition in self.conditions])


def agreement_path(ws: Workspace) -> Path:
    """Where the value-agreement ranker of a condition's workspace is saved for its featurizer."""
    return ws.layout.ranker(AGREEMENT_RANKER, ws.fingerprint)


def _current_agreement(ws: Workspace, path: Path) -> ValueAgreementRanker | None:
    """The saved value-agreement ranker when it was fitted for this featurizer and data, else None."""
    from workbench.workflows import data_signature, saved_metadata

    metadata = saved_metadata(path)
    if (
        metadata is None
        or metadata.get("featurizer") != ws.fingerprint
        or metadata.get("data") != data_signature(ws.prepared)
    ):
        return None
    try:
        loaded = ValueAgreementRanker.load(path)
        check_loaded_ranker(loaded, AGREEMENT_RANKER, path, ws.embeddings)
    except ArtifactError as err:
        log.warning("%s; fitting it again", err)
        return None
    return loaded


def fit_agreement(ws: Workspace) -> ValueAgreementRanker:
    """Fit the value-agreement ranker of a condition's workspace on its training split and save it.

    Raises:
        WorkbenchError: Its training split holds fewer than two values.
    """
    from workbench.workflows import data_signature, training_view

    start = time.perf_counter()
    embeddings, labels, _ = training_view(ws.prepared, ws.embeddings)
    try:
        ranker = ValueAgreementRanker().fit(embeddings, labels)
    except ValueError as err:
        raise WorkbenchError(f"{ws.layout.root}: {err}") from err
    path = agreement_path(ws)
    metadata = {
        "featurizer": ws.fingerprint,
        "condition": ws.spec.config.data.condition,
        "data": data_signature(ws.prepared),
    }
    ranker.save(path, metadata)
    log.info("fitted the %s agreement ranker in %.1f s: %s", ws.spec.config.data.condition, time.perf_counter() - start,
             path)  # fmt: skip
    return ranker


def attribute_rankers(ws: Workspace, progress: FusionProgressFn | None = None, fit: bool = True) -> AttributeRankers:
    """The calibrated ranker of every condition of the workspace's dataset for its featurizer, fitted where missing
    or stale (see the module docstring).

    Args:
        ws: The workspace (its dataset, condition and featurizer).
        progress: Called before each fit.
        fit: False to fit nothing: rankers that need a fit are listed in ``unfitted`` instead (each condition's
            prepared data are still opened, as a workspace opens them).

    Raises:
        WorkbenchError: The dataset has no attributes, or its attributes file is unusable.
    """
    from workbench.workflows import ensure_learned, stale_rankers

    conditions = fusion_conditions(ws.spec)
    if not conditions:
        raise WorkbenchError(f"{ws.dataset.root}: no {ATTRIBUTES_FILE} with attributes to fuse")
    read_attributes(ws.spec.config.data.root / ATTRIBUTES_FILE)  # a malformed file is one error, not one per column
    workspaces: dict[str, Workspace] = {}
    failed: list[tuple[str, str]] = []
    for condition in conditions:
        try:
            workspaces[condition] = condition_workspace(ws, condition)
        except DatasetError as err:  # a column that defines no split (a single value, too few photos per value)
            failed.append((condition, str(err)))
    saved = {
        condition: None if not condition else _current_agreement(cws, agreement_path(cws))
        for condition, cws in workspaces.items()
    }
    needs_fit = [
        condition
        for condition, cws in workspaces.items()
        if (stale_rankers(cws, (LABEL_RANKER,)) if not condition else saved[condition] is None)
    ]
    todo, unfitted = (needs_fit, ()) if fit else ([], tuple(needs_fit))
    kept: list[str] = []
    rankers: list[CalibratedRanker] = []
    for condition, cws in workspaces.items():
        if condition in unfitted:
            continue
        if progress is not None and condition in todo:
            progress(todo.index(condition), len(todo), condition_title(condition))
        ranker: CalibratedRanker | None
        if not condition:
            not_fitted = ensure_learned(cws, (LABEL_RANKER,)).failed if fit else ()
            svm = None if not_fitted else cws.ranker(LABEL_RANKER)
            ranker = svm if isinstance(svm, SVMRanker) else None
            reason = not_fitted[0][1] if not_fitted else f"the {LABEL_RANKER} ranker gives no probabilities"
        else:
            try:
                ranker = saved[condition] or fit_agreement(cws)
            except WorkbenchError as err:
                ranker, reason = None, str(err)
        if ranker is None:
            log.warning("no %s ranker to fuse: %s", condition_title(condition), reason)
            failed.append((condition, reason))
            continue
        kept.append(condition)
        rankers.append(ranker)
    if progress is not None:
        progress(len(todo), len(todo), "")
    order = {condition: index for index, condition in enumerate(conditions)}
    failed.sort(key=lambda item: order[item[0]])
    return AttributeRankers(tuple(kept), tuple(rankers), tuple(failed), unfitted, tuple(conditions))


def fusion_model(rankers: AttributeRankers, weights: Mapping[str, float], option: str = "--fuse") -> FusionRanker:
    """The fused ranker of ``weights`` (from :func:`parse_fusion_weights`; meanings not named weigh 0), every
    named meaning checked against the dataset's.

    Raises:
        UnfittedFusionError: A meaning weighted above 0 whose ranker awaits a fit (``rankers`` got with
            ``fit=False``); the message names :data:`FIT_FUSION_COMMAND`.
        FusionUnavailableError: A meaning weighted above 0 whose ranker cannot be fitted (the reason).
        WorkbenchError: A meaning the dataset does not have, a negative weight or none above 0.
    """
    meanings = rankers.meanings or rankers.conditions
    failed = dict(rankers.failed)
    unknown = [condition for condition in weights if condition not in meanings]
    if unknown:
        offered = ", ".join(meaning_name(c) for c in meanings if c not in failed)
        raise WorkbenchError(f"{option}: no meaning {unknown[0]!r} to fuse here; choose from {offered}")
    _check_weights(weights, meanings)
    weighted = [condition for condition in meanings if weights.get(condition, 0.0) > 0]
    for condition in weighted:
        if condition in failed:
            raise FusionUnavailableError(
                f"{option}: no {condition_title(condition)} ranker to fuse: {failed[condition]}"
            )
    waiting = [condition for condition in weighted if condition in rankers.unfitted]
    if waiting:
        names = ", ".join(condition_title(condition) for condition in waiting)
        raise UnfittedFusionError(
            f"{option}: the {names} ranker{'s are' if len(waiting) > 1 else ' is'} not fitted for this featurizer "
            f"and data; run `{FIT_FUSION_COMMAND}`",
            waiting,
        )
    return rankers.fused(weights)


def fusion_score_meaning(rankers: AttributeRankers, weights: Mapping[str, float]) -> str:
    """What a fused score is, in one line: ``(1 x P(same label folders) + 1 x P(same setting)) / sum of weights:
    the fused probability of "same", 0..1; higher = more alike``."""
    shown = " + ".join(f"{weights.get(c, 0.0):g} x P(same {condition_title(c)})" for c in rankers.conditions)
    return f'({shown}) / sum of weights: the fused probability of "same", 0..1; higher = more alike'


def fusion_stamp(ws: Workspace) -> tuple[int, int, float]:
    """Changes when :func:`attribute_rankers` may answer otherwise for the same workspace: the attributes file (size,
    time) and the label folders' ranker (its file time); a long-running door keeps its rankers until it does."""
    path = ws.spec.config.data.root / ATTRIBUTES_FILE
    try:
        stat = path.stat()
    except OSError:
        return (-1, 0, ws.ranker_version(LABEL_RANKER))
    return (stat.st_size, stat.st_mtime_ns, ws.ranker_version(LABEL_RANKER))


def fused_search(ws: Workspace, query: np.ndarray, model: FusionRanker, k: int) -> list[SearchHit]:
    """The ``k`` gallery images the fused ranker puts first for a query embedding ``(1, D)``, best first.

    Raises:
        WorkbenchError: ``k`` below 1.
    """
    if k < 1:
        raise WorkbenchError(f"k must be at least 1, got {k}")
    indices, scores = top_k(model, query, ws.embeddings, k)
    return [
        SearchHit(rank, ws.dataset.record(int(row)), float(score))
        for rank, (row, score) in enumerate(zip(indices[0], scores[0], strict=True), start=1)
    ]


def evaluate_fused(ws: Workspace, model: FusionRanker, split: str = "test") -> EvaluationResult:
    """The fused ranker on the workspace's comparative sets of ``split`` (as :meth:`Workspace.evaluate` does for
    the registry's rankers)."""
    if split not in ("test", "train"):
        raise WorkbenchError(f"split must be 'test' or 'train', got {split!r}")
    [result] = evaluate_rankers(ws.prepared, ws.embeddings, [model], ws.seed, split)
    return result


def retrieve_fused(ws: Workspace, model: FusionRanker, split: str = "test") -> RetrievalResult:
    """Full-gallery retrieval of the fused ranker (:func:`workbench.workflows.retrieval`, the same query sample)."""
    from workbench.workflows import retrieval

    [result] = retrieval(ws, [model], split)
    return result
