"""Plots are pure functions of their data."""

import numpy as np

from core.plots import calibration_plot, training_curves
from core.svm import SVMRanker
from core.train import EpochMetrics


def test_training_curves_have_train_and_test_traces():
    history = [EpochMetrics(1, 1.2, 0.5, 1.0, 0.6, 3.0), EpochMetrics(2, 0.8, 0.8, 0.9, 0.7, 3.0)]
    figure = training_curves(history)
    names = [trace.name for trace in figure.data]
    assert names == ["train loss", "train accuracy", "test loss", "test accuracy"]
    assert list(figure.data[3].y) == [0.6, 0.7]


def test_calibration_plot_bins_observed_frequency():
    ranker = SVMRanker(weights=np.ones(2, np.float32), platt=(-1.0, 0.0))
    scores = np.r_[np.full(50, -3.0), np.full(50, 3.0)]
    same = np.r_[np.zeros(45), np.ones(5), np.ones(40), np.zeros(10)].astype(bool)
    figure = calibration_plot(ranker, scores, same, n_bins=2)
    observed = figure.data[1]
    assert list(observed.x) == [-3.0, 3.0]
    np.testing.assert_allclose(observed.y, [0.1, 0.8])
    sigmoid = figure.data[0]
    assert np.all(np.diff(sigmoid.y) > 0)


def test_evaluation_plots_carry_each_rankers_data():
    from core.evaluate import summarize
    from core.plots import per_category_bars, rank_distributions, rank_histogram, top_n_curves

    rng = np.random.default_rng(0)
    results = [
        summarize(name, ranks, ["a", "b", "a", "b"], 9, rng, 10)
        for name, ranks in (("l2", np.array([1, 2, 1, 5])), ("random", np.array([4, 9, 2, 10])))
    ]
    assert [t.name for t in rank_histogram(results).data] == ["l2", "random"]
    assert list(rank_histogram(results).data[0].x) == [1, 2, 1, 5]
    axes = rank_histogram(results).layout
    assert axes.xaxis.tickformat == "d" and axes.xaxis.dtick >= 1 and axes.yaxis.tickformat == "d"  # whole ranks
    curves = top_n_curves(results)
    assert list(curves.data[0].y[:5]) == [0.5, 0.75, 0.75, 0.75, 1.0]
    assert [list(t.y) for t in rank_distributions(results).data] == [[1, 2, 1, 5], [4, 9, 2, 10]]
    bars = per_category_bars(results[0])
    assert list(bars.data[0].x) == ["a", "b"] and list(bars.data[0].y) == [1.0, 0.0]


def test_embedding_map_groups_points_by_label_and_marks_the_query():
    from core.plots import embedding_map

    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    figure = embedding_map(points, ["b", "a", "b"], ["x.jpg", "y.jpg", "z.jpg"], query=np.array([0.5, 0.5]))
    assert [t.name for t in figure.data] == ["a", "b", "query"]
    assert list(figure.data[1].customdata) == [0, 2] and list(figure.data[1].text) == ["x.jpg", "z.jpg"]


def test_every_figure_builder_keeps_a_tight_top_margin():
    from core.evaluate import summarize
    from core.plots import (
        MARGIN,
        embedding_map,
        label_counts_bar,
        per_category_bars,
        rank_distributions,
        rank_histogram,
        top_n_curves,
    )

    result = summarize("l2", np.array([1, 2, 1, 5]), ["a", "b", "a", "b"], 9, np.random.default_rng(0), 10)
    figures = {
        "training_curves": training_curves([EpochMetrics(1, 1.2, 0.5, 1.0, 0.6, 3.0)]),
        "calibration_plot": calibration_plot(
            SVMRanker(weights=np.ones(2, np.float32), platt=(-1.0, 0.0)), np.r_[-1.0, 1.0], np.r_[False, True], 2
        ),
        "rank_histogram": rank_histogram([result]),
        "top_n_curves": top_n_curves([result]),
        "rank_distributions": rank_distributions([result]),
        "per_category_bars": per_category_bars(result),
        "label_counts_bar": label_counts_bar({"a": (3, 1)}),
        "embedding_map": embedding_map(np.zeros((2, 2)), ["a", "b"], ["x", "y"]),
    }
    for name, figure in figures.items():
        assert figure.layout.margin.t == MARGIN["t"] <= 30, name  # plotly's default is 100 px of blank band
        assert figure.layout.title.text is None, name  # the page's heading names the chart


def test_training_curves_mark_every_epoch_and_draw_one_epoch_as_bars():
    two = training_curves([EpochMetrics(1, 1.2, 0.5, 1.0, 0.6, 3.0), EpochMetrics(2, 0.8, 0.8, 0.9, 0.7, 3.0)])
    assert {trace.type for trace in two.data} == {"scatter"} and all("markers" in t.mode for t in two.data)
    one = training_curves([EpochMetrics(1, 1.2, 0.5, 1.0, 0.6, 3.0)])
    assert [trace.type for trace in one.data] == ["bar"] * 4
    assert [list(trace.x) for trace in one.data] == [["train"], ["train"], ["test"], ["test"]]
    assert "the only one" in one.layout.xaxis.title.text


def test_metric_by_featurizer_puts_a_bar_per_featurizer_beside_each_ranker_with_its_interval():
    from core.evaluate import Estimate, RetrievalResult
    from core.plots import metric_by_featurizer

    def found(ranker, value):
        interval = {"map@r": Estimate(value, value - 0.1, value + 0.05)}
        return RetrievalResult(ranker, 6, 0, 5, {"map@r": value}, {}, {}, intervals=interval)

    figure = metric_by_featurizer(
        {"pretrained": [found("cosine", 0.6), found("svm", 0.7)], "run1": [found("cosine", 0.8), found("svm", 0.9)]}
    )
    assert [trace.name for trace in figure.data] == ["pretrained", "run1"] and figure.layout.barmode == "group"
    assert list(figure.data[1].x) == ["cosine", "svm"] and list(figure.data[1].y) == [0.8, 0.9]
    np.testing.assert_allclose(figure.data[0].error_y.arrayminus, [0.1, 0.1])
    np.testing.assert_allclose(figure.data[0].error_y.array, [0.05, 0.05])
