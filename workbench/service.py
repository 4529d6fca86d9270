"""The one module the Streamlit pages call.

It keeps what belongs to one browser session (the chosen dataset folder, condition and featurizer live in
``st.session_state``, so one visitor's choice never changes another's), caches what is expensive to build
(workspaces per spec, evaluations per spec and ranker file), and hands everything else to the layers below:
``workbench.workspace`` (opening), ``workbench.workflows`` (fitting), ``workbench.jobs`` (training threads),
``workbench.views`` (rows to show) and ``workbench.analysis`` (heatmaps, maps). Pages never import ``core``
or ``export``.

Settings come from the environment: ``WORKBENCH_DATA`` (dataset folder, default: the bundled demo),
``WORKBENCH_WORKDIR`` (artifacts, default ``artifacts``), ``WORKBENCH_CONFIG`` (TOML) and
``WORKBENCH_DATA_ROOTS`` (folders, separated by ``os.pathsep``, inside which a visitor may pick another
dataset; default: the folder that holds the default dataset).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import streamlit as st
from PIL import Image

from core.config import OBJECTIVES, SVMConfig, TrainConfig  # noqa: F401  (re-exported for the pages)
from core.data import ATTRIBUTES_FILE, ImageRecord, check_within_roots
from core.errors import ArtifactError, DatasetError, ImageLoadError, WorkbenchError  # noqa: F401  (re-exported)
from core.evaluate import Estimate, EvaluationResult, RetrievalResult
from core.images import decode_image, printable
from core.looks import CopyResult
from core.out_of_gallery import MatchStrength
from core.pipeline import SearchHit
from core.plots import (  # noqa: F401  (pure figure builders, re-exported for the pages)
    embedding_map,
    label_counts_bar,
    metric_by_featurizer,
    per_category_bars,
    rank_distributions,
    rank_histogram,
    top_n_curves,
    training_curves,
)
from core.train import EpochMetrics
from core.workdir import PRETRAINED
from workbench import analysis, app_cache, attribute_fusion
from workbench.downloads import ModelFile
from workbench.jobs import JobBoard, TrainingJob, TuneJob
from workbench.tuning import TuneConfig, TuneReport, default_choice
from workbench.views import (  # noqa: F401  (re-exported for the pages)
    DatasetSummary,
    GalleryIndex,
    QualitativeRow,
    category_rows,
    gallery_name,
    gallery_names,
    qualitative_rows,
    side_by_side_rows,
    summary_rows,
)
from workbench.views import dataset_summary as _dataset_summary
from workbench.workflows import LabelErrorReport, LearnedReady, fit_ranker
from workbench.workspace import (
    Workspace,
    WorkspaceSpec,
    completed_runs,
    open_workspace,
    refresh_data,
    spec_from_environment,
)

ProgressFn = Callable[[int, int], None]
_DATASET, _CONDITION = "workbench_dataset", "workbench_condition"


# --- what this session works on ---------------------------------------------------------------------


def allowed_roots() -> list[Path]:
    """Folders inside which a visitor may choose a dataset (``WORKBENCH_DATA_ROOTS``, else the default's parent)."""
    configured = os.environ.get("WORKBENCH_DATA_ROOTS")
    if configured:
        return [Path(part).expanduser().resolve() for part in configured.split(os.pathsep) if part]
    return [spec_from_environment().config.data.root.resolve().parent]


def current_spec(run: str = PRETRAINED) -> WorkspaceSpec:
    """The spec of this browser session: the environment's, with the session's dataset and condition."""
    spec = spec_from_environment()
    data = dataclasses.replace(
        spec.config.data,
        root=Path(st.session_state.get(_DATASET, spec.config.data.root)),
        condition=st.session_state.get(_CONDITION, spec.config.data.condition),
    )
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, data=data), run=run)


def data_folder() -> Path:
    """The dataset folder of this session."""
    return current_spec().config.data.root


def use_dataset(folder: str) -> Path:
    """Switch this session to another folder-per-label dataset inside one of :func:`allowed_roots`.

    Raises:
        DatasetError: Outside the allowed roots, missing, or without label sub-folders.
    """
    roots = allowed_roots()
    try:
        root = check_within_roots(Path(folder).expanduser(), roots)  # links resolved first
    except DatasetError:
        raise DatasetError(
            f"{printable(str(Path(folder).expanduser().resolve()))}: outside the folders this app may open "
            f"({', '.join(printable(str(r)) for r in roots)}; set WORKBENCH_DATA_ROOTS to allow others)"
        ) from None
    if not root.is_dir():
        raise DatasetError(f"{printable(str(root))}: dataset folder not found")
    try:
        label_dirs = [child for child in root.iterdir() if child.is_dir() and not child.name.startswith((".", "_"))]
    except OSError as err:
        raise DatasetError(f"{printable(str(root))}: cannot list the folder ({err.strerror or err})") from err
    for label_dir in label_dirs:  # a label folder that links out of the dataset would show outside photos
        check_within_roots(label_dir, [root])
    has_labels = bool(label_dirs)
    if not has_labels:
        raise DatasetError(f"{printable(str(root))}: no label folders (expected <folder>/<label>/<image files>)")
    st.session_state[_DATASET] = str(root)
    st.session_state[_CONDITION] = ""
    return root


def active_condition() -> str:
    """The attribute that defines similarity in this session ("" = the label folders)."""
    return current_spec().config.data.condition


def conditions() -> list[str]:
    """Attributes the session's dataset offers as conditions (columns of its ``attributes.csv``)."""
    from core.attributes import attribute_names

    return attribute_names(data_folder() / ATTRIBUTES_FILE)


def use_condition(condition: str) -> None:
    """Define similarity in this session by an attribute of the dataset ("" = the label folders)."""
    if condition and condition not in conditions():
        raise DatasetError(f"no attribute {condition!r} in this dataset's {ATTRIBUTES_FILE}")
    st.session_state[_CONDITION] = condition


# --- cached workspaces ------------------------------------------------------------------------------


def kept_choice(key: str, options: Container[object] | None = None, default: object = None) -> Callable[[], None]:
    """Keep this session's choice in the widget ``key`` across page switches; call before drawing the widget and
    pass what it returns as the widget's ``on_change``.

    Streamlit drops the state of a widget whose page is not drawn, so the choice is also remembered under a key of
    its own and put back here, unless the menu no longer offers it (``options``: another featurizer's rankers, a
    changed folder); ``default`` is the first-time value (instead of the widget's ``value``/``index``).
    """
    remembered = f"_kept_{key}"
    if remembered in st.session_state:
        if options is None or st.session_state[remembered] in options:
            st.session_state[key] = st.session_state[remembered]
        else:
            del st.session_state[remembered]
            st.session_state.pop(key, None)
    if default is not None and key not in st.session_state:
        st.session_state[key] = default

    def remember() -> None:
        st.session_state[remembered] = st.session_state[key]

    return remember


def set_choice(key: str, value: object) -> None:
    """Choose ``value`` in the widget ``key`` (kept across pages as :func:`kept_choice` keeps it)."""
    st.session_state[key] = st.session_state[f"_kept_{key}"] = value


def search_from(name: str) -> None:
    """Make the gallery image ``name`` the Search page's query (click-to-search); an upload is cleared."""
    set_choice("gallery_pick", name)
    forget_upload()


def upload_key() -> str:
    """The Search page uploader's key: a new one clears the uploaded file (Streamlit cannot set a file)."""
    return f"upload_{st.session_state.get('upload_generation', 0)}"


@dataclass(frozen=True)
class Upload:
    """A photo this session uploaded, kept (bytes and name) so it stays the query across page switches."""

    name: str
    data: bytes


_UPLOAD = "kept_upload"


def keep_upload() -> None:
    """The Search page uploader's ``on_change``: keep its file for this session, or forget it when removed.

    Streamlit drops an uploader's file when its page is not drawn, and a file cannot be put back into one, so the
    page searches with :func:`kept_upload` instead of the widget's value.
    """
    file = st.session_state.get(upload_key())
    if file is None:
        st.session_state.pop(_UPLOAD, None)
    else:
        st.session_state[_UPLOAD] = Upload(file.name, file.getvalue())


def kept_upload() -> Upload | None:
    """This session's last upload, still the query after a page switch (None: none, or it was cleared)."""
    kept = st.session_state.get(_UPLOAD)
    return kept if isinstance(kept, Upload) else None


def forget_upload() -> None:
    """Clear this session's upload, in the uploader too (it gets a new key)."""
    st.session_state.pop(_UPLOAD, None)
    st.session_state["upload_generation"] = st.session_state.get("upload_generation", 0) + 1


#: Galleries larger than this are picked from by label and page (:func:`gallery_index`), not from one menu that
#: lists every name (at 10^6 photos that menu alone sends tens of MB to the browser on every rerun).
PICKER_LIMIT = 5_000


def bounded_picker(ws: Workspace) -> bool:
    """Whether the gallery is too large for one menu of every name: pick by label and page instead."""
    return len(ws.dataset) > PICKER_LIMIT


def gallery_index(ws: Workspace) -> GalleryIndex:
    """Each label's rows and each name's row in the workspace's gallery (built once per gallery: O(N), then each
    picker page and name lookup costs O(page))."""
    return app_cache.cached("gallery_index", f"{ws.spec!r}|{ws.prepared.source}", lambda: GalleryIndex.of(ws))


def gallery_row(ws: Workspace, name: str) -> int:
    """The record row of the gallery image ``name`` (as :func:`gallery_names` gives it).

    Raises:
        DatasetError: No gallery image has this name (the folder changed).
    """
    row = gallery_index(ws).row(name)
    if row is None:
        raise DatasetError(f"{printable(name)}: not in this gallery")
    return row


def gallery_record(ws: Workspace, row: int) -> ImageRecord:
    """The gallery record at ``row`` (a map point's ``customdata``)."""
    return ws.dataset.record(row)


def gallery_query(ws: Workspace, name: str) -> Upload:
    """The gallery image ``name`` (as :func:`gallery_names` gives it) as a query's bytes."""
    return Upload(name, ws.dataset.record(gallery_row(ws, name)).path.read_bytes())


def featurizer_choices() -> list[str]:
    """``"pretrained"`` plus every completed fine-tuning run of this session's dataset, newest first; the one
    ``tune`` chose comes first."""
    layout = current_spec().layout
    choices = [PRETRAINED, *completed_runs(layout)]
    tuned = default_choice(layout)
    return _first(choices, tuned[0]) if tuned else choices


def other_featurizers(run: str) -> list[str]:
    """Featurizers to set beside ``run`` on the Compare page: for the pretrained model the fine-tuned runs (the
    newest or tuned one first), for a run the pretrained model first."""
    others = [choice for choice in featurizer_choices() if choice != run]
    return others if run == PRETRAINED else _first(others, PRETRAINED)


def shared_rankers(workspaces: Sequence[Workspace]) -> tuple[str, ...]:
    """Rankers every workspace offers, in the first one's menu order."""
    first, *rest = [ranker_choices(ws) for ws in workspaces]
    return tuple(name for name in first if all(name in offered for offered in rest))


def _first(choices: list[str], wanted: str) -> list[str]:
    return [wanted, *(choice for choice in choices if choice != wanted)] if wanted in choices else choices


def workspace(
    run: str = PRETRAINED, progress: ProgressFn | None = None, spec: WorkspaceSpec | None = None
) -> Workspace:
    """The workspace of this session for a featurizer (or of an explicit ``spec``): opened once per process, and
    again when its dataset folder changed (photos added, removed or replaced are then in the gallery)."""
    spec = spec or current_spec(run)
    ws = app_cache.cached("workspace", repr(spec), lambda: open_workspace(spec, progress))
    if ws.folder_changed():
        app_cache.forget("workspace", repr(spec))
        ws = app_cache.cached("workspace", repr(spec), lambda: open_workspace(spec, progress))
    return ws


def since_fit_line(ws: Workspace) -> str | None:
    """``N new, M removed since the last fit`` (and which learned rankers are stale), or None when current."""
    from workbench.workflows import since_fit

    return since_fit(ws).line()


def dataset_summary(samples_per_label: int = 6) -> DatasetSummary:
    """Label counts by split, sample images and what the scan skipped, for this session's dataset (read again when
    the folder changed)."""
    spec = current_spec()
    state = app_cache.cached("prepared", repr(spec), lambda: refresh_data(spec.config.data, spec.layout))
    if state.watch.changed():
        app_cache.forget("prepared", repr(spec))
        state = app_cache.cached("prepared", repr(spec), lambda: refresh_data(spec.config.data, spec.layout))
    return _dataset_summary(state.prepared, samples_per_label)


def ranker_choices(ws: Workspace) -> list[str]:
    """Rankers on offer for this workspace, in menu order (learned ones once fitted); the one ``tune`` chose for
    this featurizer comes first."""
    tuned = default_choice(ws.layout)
    on_offer = ws.rankers_on_offer()
    return _first(on_offer, tuned[1]) if tuned and tuned[0] == ws.run else on_offer


def score_note(ws: Workspace, ranker: str, look_weight: float | None = None) -> str | None:
    """The weights inside a blended score (the projection's label agreement and look, ``look_weight`` in this
    search, default the fitted one), which the one-line meaning of :func:`score_meaning` leaves open; None for other
    rankers."""
    from core.metric_learning import ProjectionRanker

    model = ws.ranker(ranker)
    if not isinstance(model, ProjectionRanker):
        return None
    votes, look = model.neighbours, model.look_weight if look_weight is None else float(look_weight)
    agreement = "cosine after the learned projection"
    if votes is not None:
        agreement = (
            f"{1 - votes.weight:.2f} x {agreement} + {votes.weight:.2f} x agreement of the two photos' neighbour "
            "labels, the labels of their nearest training images"
        )
    return (
        f"score = {1 - look:.2f} x label agreement ({agreement}) + {look:.2f} x look (cosine of the raw "
        "embeddings): label agreement orders the labels, the look orders the photos within one"
    )


def score_meaning(ranker: str) -> str:
    """What a ranker's score is, its range and which way is more alike (the registry's one line)."""
    from core.rankers import ranker_spec

    return ranker_spec(ranker).score_meaning


def ranker_help(rankers: Sequence[str]) -> str:
    """The ranker menu's help: each ranker on offer with what its score means, one line each (markdown)."""
    return "\n".join(f"- **{name}**: {score_meaning(name)}" for name in rankers)


def explain_caption(
    ws: Workspace, ranker: str, score: float, similarity: float, look_weight: float | None = None
) -> str:
    """What the Explain heatmaps explain of a result the ranker ``ranker`` scored ``score``: the cosine similarity of
    the two embeddings, which is the look part of a ranker that blends one in (:func:`look_weight_of`; weighted
    ``look_weight`` in this search, default the fitted one), the score itself for cosine, and something beside the
    score for the others (each says how in its score meaning)."""
    meaning = f"the {ranker} score of this result is {score:.3f}: {score_meaning(ranker)}"
    look = look_weight_of(ws, ranker)
    if look is not None:
        look = look if look_weight is None else float(look_weight)
        return (
            f"The heatmaps explain the look part of this score, weighted {look:.2f}: the cosine similarity "
            f"{similarity:.3f} of the two embeddings; the label part, weighted {1 - look:.2f}, has no regions to "
            f"show ({meaning})."
        )
    return f"The heatmaps explain the cosine similarity {similarity:.3f} of the two embeddings; {meaning}."


def in_sample_warning(rankers: Sequence[str], split: str) -> str | None:
    """The warning beside train-split figures of learned rankers (``workflows.in_sample_warning``)."""
    from workbench.workflows import in_sample_warning as warning

    return warning(rankers, split)


def is_learned_ranker(name: str) -> bool:
    """Whether ``name`` is fitted on the dataset's labels (svm, projection)."""
    from core.rankers import ranker_spec

    return ranker_spec(name).learned


def label_error_ranker_choices(ws: Workspace) -> list[str]:
    """Rankers for the likely-label-errors search, plain ones first: a learned ranker was fitted on these very
    labels (the projection's neighbour-label vote carries each training image's own label), so it vouches for
    the labels it should question."""
    on_offer = ws.rankers_on_offer()
    return sorted(on_offer, key=is_learned_ranker)  # stable: menu order within each group


def decode_upload(ws: Workspace, image_bytes: bytes, name: str) -> Image.Image:
    """Uploaded bytes as upright RGB, within the configured upload limits (``[uploads]``).

    Raises:
        ImageLoadError: Not an allowed image, over the limits, or corrupt; the message names the file.
    """
    return decode_image(image_bytes, name=name, limits=ws.spec.config.uploads)


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query image, the image as decoded (upright RGB) and how long the query took."""

    query: Image.Image
    hits: list[SearchHit]
    seconds: float


def search(
    ws: Workspace, image_bytes: bytes, name: str, ranker: str, k: int, look_weight: float | None = None
) -> SearchResult:
    """Top-``k`` gallery images for uploaded bytes, with the time the query took; ``look_weight`` re-weighs a
    ranker that has one (:func:`look_weight_of`) for this search.

    Raises:
        ImageLoadError: The upload is not a usable image; the message names it.
        WorkbenchError: Unknown or unfitted ranker, or a look weight it cannot take.
    """
    start = time.perf_counter()
    image = decode_upload(ws, image_bytes, name)
    hits = ws.search(image, ranker, k, look_weight)
    return SearchResult(image, hits, time.perf_counter() - start)


def look_weight_of(ws: Workspace, ranker: str) -> float | None:
    """The look weight a ranker was fitted with (the share of the look in its score), None if it has none."""
    weight = getattr(ws.ranker(ranker), "look_weight", None)
    return None if weight is None else float(weight)


def hit_parts(hit: SearchHit) -> str | None:
    """What a hit's score is made of, in words: its two parts ("label 0.97 (P(same label) 0.93) · look 0.71") or its
    calibrated probability of the same label ("P(same label) 0.93"); None for rankers with neither."""
    if hit.parts is not None:
        agreement, look = hit.parts
        chance = "" if hit.probability is None else f" (P(same label) {hit.probability:.2f})"
        return f"label {agreement:.2f}{chance} · look {look:.2f}"
    if hit.probability is not None:
        return f"P(same label) {hit.probability:.2f}"
    return None


def evaluation(ws: Workspace, rankers: tuple[str, ...], split: str = "test") -> list[EvaluationResult]:
    """Evaluation of the given rankers on the workspace's comparative sets (cached per spec and ranker files)."""
    versions = tuple(ws.ranker_version(name) for name in rankers)
    key = f"{ws.spec!r}|{ws.prepared.source}|{rankers}|{split}|{versions}"
    return app_cache.cached("evaluation", key, lambda: ws.evaluate(rankers, split))


def fit(ws: Workspace, ranker: str) -> tuple[Estimate, Estimate] | None:
    """Fit and save a learned ranker for a workspace; returns balanced pair accuracy (train, test) with 95 %
    intervals when measured."""
    fitted = fit_ranker(ws, ranker)
    if fitted.train_pairs is None or fitted.test_pairs is None:
        return None
    return fitted.train_pairs.balanced_accuracy, fitted.test_pairs.balanced_accuracy


# --- training ---------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _board() -> JobBoard:
    return JobBoard()


def train_config(**values: Any) -> TrainConfig:
    """Fine-tuning settings: the configured ones (``WORKBENCH_CONFIG``) with the form's values on top."""
    return dataclasses.replace(current_spec().config.train, **values)


def start_training(run: str, config: TrainConfig, svm_config: SVMConfig) -> TrainingJob:
    """Start (or return the running) job for ``run`` on this session's dataset and condition.

    Raises:
        ArtifactError: ``run`` is not a plain folder name.
    """
    spec = current_spec()
    spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, train=config, svm=svm_config))
    return _board().start(spec, run)


def start_tune(budget_minutes: float) -> TuneJob:
    """Start (or return the running) ``tune`` of this session's dataset and condition with the default recipes."""
    return _board().start_tune(current_spec(), TuneConfig(budget_s=budget_minutes * 60.0))


def tune_job() -> TuneJob | None:
    """The latest tune job of this session's dataset and condition in this server process."""
    return _board().tune_job(current_spec())


def tune_rows(report: TuneReport) -> list[dict[str, Any]]:
    """One row per candidate of a tune report, best first, for a table."""
    ranked = sorted(report.candidates, key=lambda candidate: -candidate.map_at_r.value)
    return [
        {
            "featurizer": c.featurizer,
            "ranker": c.ranker,
            "MAP@R": round(c.map_at_r.value, 3),
            "MAP@R 95% CI": f"{c.map_at_r.low:.3f} – {c.map_at_r.high:.3f}",
            "recall@1": round(c.recall_at_1.value, 3),
            "copy recall@1": None if c.copy_recall_at_1 is None else round(c.copy_recall_at_1, 3),
            "default": "✓" if c.choice == report.choice else "",
            "note": "; ".join(
                note
                for note in (
                    "the default before" if c.choice == report.previous else "",
                    f"rejected: {c.rejected}" if c.rejected else "",
                )
                if note
            ),
        }
        for c in ranked
    ]


def training_jobs() -> list[TrainingJob]:
    """Jobs of this session's dataset and condition started in this server process, oldest first."""
    return _board().jobs(current_spec())


def run_history(run: str) -> list[EpochMetrics]:
    """Per-epoch metrics of a fine-tuning run (empty for the pretrained model)."""
    from core.train import read_manifest

    if run == PRETRAINED:
        return []
    manifest = read_manifest(current_spec().layout.run(run))
    return [EpochMetrics(**metrics) for metrics in manifest.get("history", [])]


# --- looking inside ---------------------------------------------------------------------------------


def explain(ws: Workspace, image_bytes: bytes, name: str, record: ImageRecord) -> analysis.Explanation:
    """Where the query and a gallery image agree: exact per-region shares of their cosine similarity.

    Raises:
        ImageLoadError: The query is not a usable image.
    """
    backbone = app_cache.cached("backbone", repr(ws.spec), lambda: analysis.torch_backbone(ws))
    return analysis.explain(backbone, decode_upload(ws, image_bytes, name), record)


def embedding_projection(ws: Workspace, method: str = "pca") -> analysis.EmbeddingMap:
    """The gallery's 2-D map, of a stratified sample of at most :data:`workbench.analysis.MAP_POINTS` photos (cached
    per workspace, method and cap)."""
    chosen: Literal["pca", "umap"] = "umap" if method == "umap" else "pca"
    cap = analysis.MAP_POINTS
    return app_cache.cached(
        "map", f"{ws.spec!r}|{ws.prepared.source}|{chosen}|{cap}", lambda: analysis.embedding_map(ws, chosen, cap)
    )


def place_on_map(ws: Workspace, mapping: analysis.EmbeddingMap, image_bytes: bytes, name: str) -> np.ndarray:
    """Coordinates of an uploaded image on the gallery's map."""
    return analysis.place_on_map(ws, mapping, decode_upload(ws, image_bytes, name))


# --- what the pages need to say what they show ------------------------------------------------------


def match_strength(ws: Workspace, query: Image.Image) -> MatchStrength:
    """The query's best cosine similarity to the gallery, beside the gallery's floor and the generated non-photos
    (computed once per workspace: :meth:`workbench.workspace.Workspace.match`)."""
    return ws.match(ws.embed([query]))


def projection_methods() -> list[str]:
    """2-D map methods this installation can draw: PCA, and UMAP when umap-learn is installed."""
    import importlib.util

    return ["pca", "umap"] if importlib.util.find_spec("umap") is not None else ["pca"]


def thumbnail(path: Path, size: int = 320) -> Image.Image:
    """A square, centre-cropped thumbnail of a gallery image, so result grids line up (the model sees the centre too).

    Raises:
        ImageLoadError: The file is no longer a usable image.
    """
    from PIL import ImageOps

    from core.images import load_image

    return ImageOps.fit(load_image(path, draft_size=size), (size, size))


# --- learned rankers ready, full-gallery retrieval, likely label errors -------------------------------


def ensure_learned_rankers(ws: Workspace, progress: Callable[[int, int, str], None] | None = None) -> LearnedReady:
    """Fit the quick learned rankers (``workflows.READY_RANKERS``: svm, projection) missing or stale for this
    workspace, once per workspace and data in this server process: what was fitted, current, or not fittable.

    ``progress(done, total, name)`` is called before each fit (``name`` "" once all are done).
    """
    from workbench.workflows import READY_RANKERS, data_signature, ensure_learned

    key = f"{ws.spec!r}|{ws.prepared.source}|{ws.fingerprint}|{data_signature(ws.prepared)}"
    return app_cache.cached("learned_rankers", key, lambda: ensure_learned(ws, READY_RANKERS, progress))


def retrieval(ws: Workspace, rankers: tuple[str, ...], split: str = "test") -> list[RetrievalResult]:
    """Full-gallery retrieval of the given rankers: every ``split`` image queries the whole gallery, itself
    excluded (cached per spec and ranker files)."""
    from workbench.workflows import retrieval as full_gallery

    versions = tuple(ws.ranker_version(name) for name in rankers)
    key = f"{ws.spec!r}|{ws.prepared.source}|{rankers}|{split}|{versions}"
    return app_cache.cached("retrieval", key, lambda: full_gallery(ws, rankers, split))


def results_csv(ws: Workspace, result: SearchResult, ranker: str) -> bytes:
    """A search's results as CSV (rank, score, label, path relative to the dataset, ranker), for a download."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "score", "label", "path", "ranker", "featurizer"])
    for hit in result.hits:
        writer.writerow([hit.rank, f"{hit.score:.6f}", hit.record.label, gallery_name(ws, hit.record), ranker, ws.run])
    return buffer.getvalue().encode("utf-8")


def evaluation_json(ws: Workspace, result: EvaluationResult, full: RetrievalResult, split: str) -> bytes:
    """One ranker's evaluation (comparative sets and full gallery) as a JSON report, for a download."""
    import json

    from workbench.workflows import result_summary

    report = {
        "dataset": str(ws.dataset.root),
        "featurizer": ws.fingerprint,
        "run": ws.run,
        "split": split,
        "in_sample": in_sample_warning([result.ranker], split) is not None,
        "in_sample_warning": in_sample_warning([result.ranker], split),
        "comparative_sets": result_summary(result),
        "full_gallery": full.to_dict(),
    }
    return json.dumps(report, indent=2, default=str).encode("utf-8")


#: The Evaluation page's ONNX choices: the plain featurizer, and with the projection ranker baked in.
ONNX_PLAIN, ONNX_PROJECTION = "featurizer only", "with the projection ranker baked in"


def onnx_choices(ws: Workspace) -> list[str]:
    """The ONNX models on offer for a featurizer: the plain one, and with the projection once it is fitted."""
    from workbench.downloads import can_bake_projection

    return [ONNX_PLAIN, ONNX_PROJECTION] if can_bake_projection(ws) else [ONNX_PLAIN]


def ready_onnx(ws: Workspace, with_projection: bool = False) -> ModelFile | None:
    """The featurizer's ONNX file (or with the projection baked in) when already made and current; exports nothing."""
    from workbench.downloads import ready_onnx as ready

    return ready(ws, with_projection)


def make_onnx(ws: Workspace, with_projection: bool = False) -> ModelFile:
    """The featurizer's ONNX file (or with the projection baked in), exported and validated now when missing; kept
    on disk, so later calls and pages reuse it.

    Raises:
        WorkbenchError: The export failed validation, or the projection ranker is not fitted.
    """
    from workbench.downloads import make_onnx as make

    return make(ws, with_projection)


def label_errors(ws: Workspace, ranker: str = "cosine", k: int = 10, min_share: float = 0.5) -> LabelErrorReport:
    """Images whose ``k`` nearest neighbours mostly carry another label, worst first (cached per spec and ranker
    file)."""
    from workbench.workflows import label_errors as find_label_errors

    key = f"{ws.spec!r}|{ws.prepared.source}|{ranker}|{ws.ranker_version(ranker)}|{k}|{min_share}"
    return app_cache.cached("label_errors", key, lambda: find_label_errors(ws, ranker, k, min_share))


#: Full-gallery metrics the pages show, in column order, with their display names.
RETRIEVAL_COLUMNS: dict[str, str] = {
    "recall@1": "recall@1",
    "recall@5": "recall@5",
    "recall@10": "recall@10",
    "map@r": "MAP@R",
    "mrr": "MRR",
    "r_precision": "R-precision",
}


def retrieval_rows(results: list[RetrievalResult]) -> list[dict[str, object]]:
    """One row per ranker: queries and the full-gallery metrics (rounded to 3 decimals)."""
    return [
        {
            "ranker": result.ranker,
            "queries": result.n_queries,
            **{shown: round(result.metrics.get(name, float("nan")), 3) for name, shown in RETRIEVAL_COLUMNS.items()},
        }
        for result in results
    ]


def looks(ws: Workspace, rankers: tuple[str, ...], split: str = "test") -> list[CopyResult]:
    """The look metric of the given rankers: an edited copy of each ``split`` image (a sample of at most 500)
    searches the whole gallery for its original (cached per spec and ranker files)."""
    from workbench.workflows import looks as copy_retrieval

    versions = tuple(ws.ranker_version(name) for name in rankers)
    key = f"{ws.spec!r}|{ws.prepared.source}|{rankers}|{split}|{versions}"
    return app_cache.cached("looks", key, lambda: copy_retrieval(ws, rankers, split))


def look_rows(results: list[CopyResult]) -> list[dict[str, object]]:
    """One row per ranker: copies, copy recall@1 and the mean rank of the original, each with its 95 % CI."""
    return [
        {
            "ranker": result.ranker,
            "copies": result.n_copies,
            "copy recall@1": f"{result.recall_at_1.value:.1%} [{result.recall_at_1.low:.1%}, {result.recall_at_1.high:.1%}]",
            "mean rank of original": f"{result.mean_rank.value:.2f} [{result.mean_rank.low:.2f}, {result.mean_rank.high:.2f}]",
        }
        for result in results
    ]


#: How the look metric's copies are made, for captions.
LOOKS_CAPTION = (
    "Looks: an edited copy of each image (a crop to 75-90 % of the area, 70 % size, brightness and colour ±15 %, "
    "half of them mirrored, JPEG quality 40-70) searches the whole gallery; does its original come first? "
    "Byte-identical twins of the original do not count against it."
)


def retrieval_category_rows(result: RetrievalResult) -> list[dict[str, object]]:
    """One row per label of one ranker's full-gallery retrieval."""
    return [
        {
            "label": label,
            "queries": n_queries,
            **{shown: round(metrics.get(name, float("nan")), 3) for name, shown in RETRIEVAL_COLUMNS.items()},
        }
        for label, (n_queries, metrics) in result.per_category.items()
    ]


# --- fusion of attribute rankers: the Search page's panel and Compare ---------------------------------------


def fusion_conditions() -> list[str]:
    """The meanings of "similar" this session's dataset can fuse: ``""`` (the label folders) and each attribute of
    its ``attributes.csv``; empty when it has none."""
    return attribute_fusion.fusion_conditions(current_spec())


def condition_title(condition: str) -> str:
    """How a condition is shown: its attribute, or "label folders"."""
    return attribute_fusion.condition_title(condition)


def fusion_weight_key(condition: str) -> str:
    """The session-state key of a condition's fusion weight: the Search page's slider, which Compare reads too."""
    return f"fusion_weight:{condition}"


def default_fusion_weight(condition: str) -> float:
    """A condition's weight until its slider is moved: 1 for the label folders, 0 for each attribute (the fused
    ranking starts as the label folders' SVM ranks)."""
    return 0.0 if condition else 1.0


def fusion_weights(conditions: Sequence[str]) -> dict[str, float]:
    """This session's fusion weight per condition: the slider's value, kept across pages like every choice."""
    weights = {}
    for condition in conditions:
        key = fusion_weight_key(condition)
        value = st.session_state.get(key, st.session_state.get(f"_kept_{key}", default_fusion_weight(condition)))
        weights[condition] = float(value)
    return weights


def _attributes_stamp(ws: Workspace) -> str:
    path = ws.spec.config.data.root / ATTRIBUTES_FILE
    try:
        stat = path.stat()
    except OSError:
        return "none"
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _fusion_key(ws: Workspace) -> str:
    return f"{ws.spec!r}|{ws.prepared.source}|{ws.fingerprint}|{_attributes_stamp(ws)}|{ws.ranker_version('svm')}"


def attribute_rankers(
    ws: Workspace, progress: Callable[[int, int, str], None] | None = None
) -> attribute_fusion.AttributeRankers:
    """The calibrated ranker of each condition of this dataset for the workspace's featurizer, fitted where missing
    or stale (the first time: a few seconds on the demo), then kept per workspace, attributes file and SVM file.

    ``progress(done, total, condition)`` is called before each fit.

    Raises:
        WorkbenchError: No attributes, or an unusable attributes file (one line naming it and the row).
    """
    key = _fusion_key(ws)
    return app_cache.cached("attribute_rankers", key, lambda: attribute_fusion.attribute_rankers(ws, progress))


def fusion_formula(rankers: attribute_fusion.AttributeRankers, weights: dict[str, float]) -> str:
    """The fused score in words, the weights normalised: ``0.67 x P(same label folders) + 0.33 x P(same colour)``."""
    total = sum(weights.get(condition, 0.0) for condition in rankers.conditions) or 1.0
    return " + ".join(
        f"{weights.get(condition, 0.0) / total:.2f} x P(same {condition_title(condition)})"
        for condition in rankers.conditions
        if weights.get(condition, 0.0) > 0
    )


def fused_search(
    ws: Workspace,
    rankers: attribute_fusion.AttributeRankers,
    image_bytes: bytes,
    name: str,
    weights: dict[str, float],
    k: int,
) -> SearchResult:
    """Top-``k`` gallery images by the fusion of the attribute rankers with ``weights``, for uploaded bytes.

    Raises:
        ImageLoadError: The upload is not a usable image; the message names it.
        WorkbenchError: Weights that are negative or all 0.
    """
    start = time.perf_counter()
    image = decode_upload(ws, image_bytes, name)
    hits = attribute_fusion.fused_search(ws, ws.embed([image]), rankers.fused(weights), k)
    return SearchResult(image, hits, time.perf_counter() - start)


def fused_results(
    ws: Workspace, rankers: attribute_fusion.AttributeRankers, weights: dict[str, float], split: str = "test"
) -> tuple[EvaluationResult, RetrievalResult]:
    """The fused ranker on the comparative sets and the full gallery of ``split`` (cached per weights).

    Raises:
        WorkbenchError: Weights that are negative or all 0, or a bad split.
    """
    model = rankers.fused(weights)
    key = f"{_fusion_key(ws)}|{sorted(weights.items())}|{split}"
    return app_cache.cached(
        "fused_results",
        key,
        lambda: (attribute_fusion.evaluate_fused(ws, model, split), attribute_fusion.retrieve_fused(ws, model, split)),
    )


def attribute_line(ws: Workspace, record: ImageRecord) -> str:
    """A gallery image's attribute values, as the fusion panel shows them under it ("plain · brown")."""
    from pathlib import PurePosixPath

    from core.attributes import read_attributes

    path = ws.spec.config.data.root / ATTRIBUTES_FILE
    rows = app_cache.cached("attribute_rows", f"{path}|{_attributes_stamp(ws)}", lambda: read_attributes(path).rows())
    values = rows.get(PurePosixPath(gallery_name(ws, record)), {})
    return " · ".join(values.values())
