"""The one module the Streamlit pages call: cached workspace, search and evaluation.

Pages only draw widgets and render what these functions return. Models and embeddings are cached
with ``st.cache_resource``; evaluation results (plain data) with ``st.cache_data``.
Settings come from the environment so tests and users can point the app elsewhere:
``WORKBENCH_DATA`` (dataset folder, default: the bundled demo) and ``WORKBENCH_WORKDIR``
(artifacts, default: ``artifacts``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from core.config import DEFAULT_DATA, DataConfig, FeaturizerConfig
from core.data import ImageDataset
from core.evaluate import EvaluationResult
from core.errors import ArtifactError, ImageLoadError  # noqa: F401  (ImageLoadError is re-exported for the pages)
from core.featurize import Featurizer
from core.images import decode_image
from core.pipeline import (
    PreparedData,
    SearchHit,
    build_featurizer,
    evaluate_rankers,
    featurize,
    load_prepared,
    prepare,
    save_prepared,
)
from core.pipeline import search as search_image
from core.rankers import RANKER_NAMES, make_ranker


ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Workspace:
    """What the pages work with: the prepared dataset, its embeddings and the featurizer."""

    prepared: PreparedData
    featurizer: Featurizer
    embeddings: np.ndarray
    workdir: Path

    @property
    def dataset(self) -> ImageDataset:
        return self.prepared.dataset


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query image and how long the query took."""

    hits: list[SearchHit]
    seconds: float


def settings() -> tuple[Path, Path]:
    """(dataset folder, workdir) from the environment, with the bundled demo as default."""
    return Path(os.environ.get("WORKBENCH_DATA", DEFAULT_DATA)), Path(os.environ.get("WORKBENCH_WORKDIR", "artifacts"))


def _build_workspace(data_root: Path, workdir: Path, progress: ProgressFn | None) -> Workspace:
    try:
        prepared = load_prepared(workdir)
        if prepared.config.root.resolve() != data_root.resolve():
            raise FileNotFoundError(f"{workdir} was prepared for {prepared.config.root}")
    except (ArtifactError, FileNotFoundError):  # missing, stale or unreadable: rebuild from the dataset
        prepared = prepare(DataConfig(root=data_root))
        save_prepared(prepared, workdir)
    featurizer = build_featurizer(FeaturizerConfig())
    embeddings = featurize(prepared, featurizer, workdir, progress=progress)
    return Workspace(prepared, featurizer, embeddings, workdir)


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    workspace: Workspace | None = None


@st.cache_resource(show_spinner=False)
def _slot(data_root: str, workdir: str) -> _Slot:
    # The cache holds a slot rather than the workspace itself: building it draws a progress bar, and
    # Streamlit would replay that drawing on every cache hit if it happened inside a cached function.
    return _Slot()


def workspace(progress: ProgressFn | None = None) -> Workspace:
    """The shared workspace; built on first use, featurizing with ``progress(done, total)``."""
    data_root, workdir = settings()
    slot = _slot(str(data_root.resolve()), str(workdir.resolve()))
    with slot.lock:
        if slot.workspace is None:
            slot.workspace = _build_workspace(data_root, workdir, progress)
        return slot.workspace


def search(ws: Workspace, image_bytes: bytes, name: str, ranker: str, k: int) -> SearchResult:
    """Top-``k`` gallery images for uploaded bytes.

    Raises:
        ImageLoadError: The upload is not a usable image; the message names it.
    """
    start = time.perf_counter()
    image = decode_image(image_bytes, name=name)
    hits = search_image(image, ws.featurizer, ws.dataset, ws.embeddings, make_ranker(ranker), k)
    return SearchResult(hits, time.perf_counter() - start)


@st.cache_data(show_spinner=False)
def _evaluation(fingerprint: str, data_root: str, rankers: tuple[str, ...], split: str) -> list[EvaluationResult]:
    ws = workspace()
    seed = ws.prepared.config.seed
    rng = np.random.default_rng(seed)
    return evaluate_rankers(ws.prepared, ws.embeddings, [make_ranker(name, rng) for name in rankers], seed, split)


def evaluation(rankers: tuple[str, ...] = RANKER_NAMES, split: str = "test") -> list[EvaluationResult]:
    """Evaluation of the given rankers on the workspace's comparative sets (cached)."""
    ws = workspace()
    return _evaluation(ws.featurizer.fingerprint, str(ws.dataset.root), rankers, split)


def summary_rows(results: list[EvaluationResult]) -> list[dict[str, object]]:
    """One row per ranker for a table: mean/median rank and top-1/top-5 with 95 % CIs."""
    return [
        {
            "ranker": result.ranker,
            "queries": result.n_queries,
            "mean rank": str(result.mean_rank),
            "median rank": str(result.median_rank),
            "top-1": str(result.top1),
            "top-5": str(result.top5),
        }
        for result in results
    ]
