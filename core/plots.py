"""Pure plotting functions: data in, plotly figure out (no I/O, no Streamlit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.svm import SVMRanker
from core.train import EpochMetrics


def training_curves(history: Sequence[EpochMetrics]) -> go.Figure:
    """Loss and accuracy per epoch, train and test, side by side."""
    epochs = [m.epoch for m in history]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for split, dash in (("train", "solid"), ("test", "dash")):
        figure.add_trace(go.Scatter(x=epochs, y=[getattr(m, f"{split}_loss") for m in history], name=f"{split} loss", line={"dash": dash}), 1, 1)
        figure.add_trace(go.Scatter(x=epochs, y=[getattr(m, f"{split}_accuracy") for m in history], name=f"{split} accuracy", line={"dash": dash}), 1, 2)
    figure.update_xaxes(title_text="epoch", dtick=1)
    figure.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    return figure


def calibration_plot(ranker: SVMRanker, scores: np.ndarray, same: np.ndarray, n_bins: int = 10) -> go.Figure:
    """Reliability of the Platt mapping: observed share of same-label pairs per score bin vs the sigmoid.

    Args:
        ranker: A fitted SVM ranker.
        scores: Pair scores.
        same: Whether each pair shares a label.
        n_bins: Equal-count score bins.
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    filled = counts > 0
    centres = (np.bincount(which, weights=scores, minlength=len(edges) - 1)[filled] / counts[filled])
    observed = (np.bincount(which, weights=same, minlength=len(edges) - 1)[filled] / counts[filled])
    grid = np.linspace(scores.min(), scores.max(), 200)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=grid, y=ranker.probability(grid), name="Platt sigmoid", mode="lines"))
    figure.add_trace(go.Scatter(x=centres, y=observed, name="observed share same", mode="markers", marker={"size": 9}, text=[f"{c} pairs" for c in counts[filled]]))
    figure.update_layout(xaxis_title="SVM score", yaxis_title="P(same label)", yaxis_range=[0, 1])
    return figure
