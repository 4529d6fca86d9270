"""Pure plotting functions: data in, plotly figure out (no I/O, no Streamlit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.evaluate import EvaluationResult, RetrievalResult
from core.svm import SVMRanker
from core.train import EpochMetrics

#: Margins of every figure: room for tick labels and axis titles, no blank band above the plot (plotly's default
#: top margin is 100 px; the pages put a heading above each chart instead of a figure title).
MARGIN = {"t": 30, "b": 40, "l": 50, "r": 10}


#: One colour per split in the one-epoch bars (plotly's first two default colours).
SPLIT_COLOURS = {"train": "#636efa", "test": "#ef553b"}


def _tight(figure: go.Figure) -> go.Figure:
    figure.update_layout(margin=MARGIN)
    return figure


def training_curves(history: Sequence[EpochMetrics]) -> go.Figure:
    """Loss and accuracy per epoch, train and test, side by side.

    Two epochs or more draw curves with a marker per epoch; a single epoch draws train and test as labelled bars
    (two lone dots at one x would say nothing), and the axis says why.
    """
    epochs = [m.epoch for m in history]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    single = len(history) == 1
    for split, dash in (("train", "solid"), ("test", "dash")):
        for col, metric in ((1, "loss"), (2, "accuracy")):
            values = [getattr(m, f"{split}_{metric}") for m in history]
            name = f"{split} {metric}"
            if single:
                text = [f"{v:.1%}" if metric == "accuracy" else f"{v:.3f}" for v in values]
                trace: go.Bar | go.Scatter = go.Bar(
                    x=[split],
                    y=values,
                    name=split,  # one legend entry per split: the colours mean the same in both panels
                    legendgroup=split,
                    showlegend=metric == "loss",
                    text=text,
                    textposition="outside",
                    cliponaxis=False,
                    marker_color=SPLIT_COLOURS[split],
                )
            else:
                trace = go.Scatter(x=epochs, y=values, name=name, mode="lines+markers", line={"dash": dash})
            figure.add_trace(trace, 1, col)
    if single:
        figure.update_xaxes(title_text=f"epoch {epochs[0]}, the only one: bars (curves need two epochs or more)")
        figure.update_yaxes(rangemode="tozero", row=1, col=1)
    else:
        figure.update_xaxes(title_text="epoch", dtick=1)
    figure.update_yaxes(range=[0, 1.1 if single else 1], tickformat=".0%", row=1, col=2)
    return _tight(figure)


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
    centres = np.bincount(which, weights=scores, minlength=len(edges) - 1)[filled] / counts[filled]
    observed = np.bincount(which, weights=same, minlength=len(edges) - 1)[filled] / counts[filled]
    grid = np.linspace(scores.min(), scores.max(), 200)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=grid, y=ranker.probability(grid), name="Platt sigmoid", mode="lines"))
    figure.add_trace(
        go.Scatter(
            x=centres,
            y=observed,
            name="observed share same",
            mode="markers",
            marker={"size": 9},
            text=[f"{c} pairs" for c in counts[filled]],
        )
    )
    figure.update_layout(xaxis_title="SVM score", yaxis_title="P(same label)", yaxis_range=[0, 1])
    return _tight(figure)


def rank_histogram(results: Sequence[EvaluationResult]) -> go.Figure:
    """Distribution of the positive's rank, one overlaid histogram per ranker (rank 1 = best)."""
    figure = go.Figure()
    max_rank = max(int(r.n_negatives) + 1 for r in results) if results else 1
    for result in results:
        figure.add_trace(
            go.Histogram(
                x=result.ranks, name=result.ranker, xbins={"start": 0.5, "end": max_rank + 0.5, "size": 1}, opacity=0.6
            )
        )
    figure.update_layout(barmode="overlay", xaxis_title="rank of the positive (1 = best)", yaxis_title="queries")
    # ranks and query counts are whole numbers: no 0.5-step ticks when they are few
    figure.update_xaxes(tickformat="d", range=[0.5, max_rank + 0.5], dtick=max(1, round(max_rank / 10)))
    figure.update_yaxes(tickformat="d", rangemode="tozero")
    return _tight(figure)


def top_n_curves(results: Sequence[EvaluationResult]) -> go.Figure:
    """Top-N accuracy against N for each ranker."""
    figure = go.Figure()
    for result in results:
        n = np.arange(1, len(result.top_n) + 1)
        figure.add_trace(go.Scatter(x=n, y=result.top_n, name=result.ranker, mode="lines+markers"))
    figure.update_layout(
        xaxis_title="N",
        yaxis_title="share of queries with the positive in the top N",
        yaxis_range=[0, 1.02],
        yaxis_tickformat=".0%",
    )
    return _tight(figure)


def rank_distributions(results: Sequence[EvaluationResult]) -> go.Figure:
    """Box plots of the positive's rank per ranker, side by side."""
    figure = go.Figure([go.Box(y=r.ranks, name=r.ranker, boxmean=True) for r in results])
    figure.update_layout(yaxis_title="rank of the positive (1 = best)", showlegend=False)
    return _tight(figure)


def metric_by_featurizer(
    results: Mapping[str, Sequence[RetrievalResult]], metric: str = "map@r", label: str = "MAP@R"
) -> go.Figure:
    """One full-gallery metric per ranker, a bar per featurizer side by side, with 95 % CI error bars.

    Args:
        results: ``featurizer -> full-gallery results``, one per ranker.
        metric: The metric's name in ``RetrievalResult.metrics``.
        label: How the axis names it.
    """
    figure = go.Figure()
    for featurizer, found in results.items():
        values = [result.metrics.get(metric, float("nan")) for result in found]
        intervals = [result.intervals.get(metric) for result in found]
        figure.add_trace(
            go.Bar(
                x=[result.ranker for result in found],
                y=values,
                name=featurizer,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [i.high - v if i else 0.0 for i, v in zip(intervals, values, strict=True)],
                    "arrayminus": [v - i.low if i else 0.0 for i, v in zip(intervals, values, strict=True)],
                },
            )
        )
    figure.update_layout(
        barmode="group",
        xaxis_title="ranker",
        yaxis_title=f"{label} (full gallery, 95 % CI)",
        yaxis_range=[0, 1.05],
        legend_title_text="featurizer",
    )
    return _tight(figure)


def per_category_bars(result: EvaluationResult) -> go.Figure:
    """Top-1 and top-5 accuracy per label for one ranker."""
    labels = [c.label for c in result.per_category]
    figure = go.Figure(
        [
            go.Bar(x=labels, y=[c.top1 for c in result.per_category], name="top-1"),
            go.Bar(x=labels, y=[c.top5 for c in result.per_category], name="top-5"),
        ]
    )
    figure.update_layout(barmode="group", yaxis_tickformat=".0%", yaxis_range=[0, 1], xaxis_title="label")
    return _tight(figure)


def label_counts_bar(counts: dict[str, tuple[int, int]]) -> go.Figure:
    """Images per label, stacked by split: ``counts[label] = (train, test)``."""
    labels = list(counts)
    figure = go.Figure(
        [
            go.Bar(x=labels, y=[counts[label][0] for label in labels], name="train"),
            go.Bar(x=labels, y=[counts[label][1] for label in labels], name="test"),
        ]
    )
    figure.update_layout(barmode="stack", yaxis_title="images", xaxis_title="label")
    return _tight(figure)


#: Above this many points a map is drawn with WebGL (``Scattergl``): SVG markers make a browser crawl.
WEBGL_POINTS = 2_000


def embedding_map(
    points: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str],
    query: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> go.Figure:
    """Gallery points coloured by label (hover: file name), with an optional query marker.

    Each point's ``customdata`` is its row in ``rows`` (the record rows of a sampled map), or its position in
    ``points`` without them.
    """
    label_array, name_array = np.asarray(labels), np.asarray(names)
    row_array = np.arange(len(points)) if rows is None else np.asarray(rows)
    scatter = go.Scattergl if len(points) > WEBGL_POINTS else go.Scatter
    figure = go.Figure()
    for label in sorted(set(label_array.tolist())):
        mask = label_array == label
        figure.add_trace(
            scatter(
                x=points[mask, 0],
                y=points[mask, 1],
                mode="markers",
                name=str(label),
                text=name_array[mask],
                customdata=row_array[mask],
                hovertemplate="%{text}<extra>%{fullData.name}</extra>",
            )
        )
    if query is not None:
        figure.add_trace(
            go.Scatter(
                x=[query[0]],
                y=[query[1]],
                mode="markers",
                name="query",
                marker={"symbol": "star", "size": 18, "color": "black"},
            )
        )
    figure.update_layout(xaxis_title="component 1", yaxis_title="component 2")
    return _tight(figure)
