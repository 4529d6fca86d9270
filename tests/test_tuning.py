"""``tune``: validation carved from the training split only, candidates scored and ranked, budget kept, the winner
becomes the app's default. Synthetic embeddings on the tiny real set stand in for models (no training here)."""

import json
import time
from typing import cast

import numpy as np
import pytest

from core.evaluate import evaluate_retrieval
from core.featurize import Featurizer
from core.metric_learning import ProjectionRanker
from core.rankers import CosineRanker
from core.workdir import PRETRAINED
from workbench import cli, tuning
from workbench.workspace import Workspace, WorkspaceSpec, configure, prepared_data


class FakeFeaturizer:
    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint


def hidden_signal(labels: np.ndarray, rng: np.random.Generator, loud_noise: float) -> np.ndarray:
    """Labels differ along 3 quiet dimensions; 30 louder noise dimensions blur them for plain cosine."""
    codes = np.unique(labels, return_inverse=True)[1]
    signal = np.eye(3)[codes % 3] * 1.0 + 0.1 * rng.normal(size=(len(labels), 3))
    vectors = np.hstack([signal, loud_noise * rng.normal(size=(len(labels), 30))])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def spec(tmp_path, tiny_dataset) -> WorkspaceSpec:
    return WorkspaceSpec(configure(data={"root": tiny_dataset, "seed": 0}), tmp_path / "work", backend="torch")


@pytest.fixture(autouse=True)
def quick_projection(monkeypatch):
    """The projection ranker trains 3 epochs with the learned matrix alone (the defaults take seconds)."""
    from core import metric_learning

    original = metric_learning.ProjectionRanker.__init__
    quick = metric_learning.ProjectionConfig(epochs=3, identity_weights=(0.0,))

    def init(self, config=None, matrix=None, identity_weight=1.0, neighbours=None):
        original(self, config or quick, matrix, identity_weight, neighbours)

    monkeypatch.setattr(metric_learning.ProjectionRanker, "__init__", init)


@pytest.fixture
def fake_models(monkeypatch, spec):
    """``open_workspace`` returns synthetic embeddings per featurizer; records every gallery ``tune`` scores."""
    prepared = prepared_data(spec.config.data, spec.layout)
    labels = prepared.dataset.label_array
    embeddings = {PRETRAINED: hidden_signal(labels, np.random.default_rng(0), 0.4)}
    galleries: list[int] = []

    def open_workspace(run_spec, progress=None):
        run_embeddings = embeddings.get(run_spec.run, embeddings[PRETRAINED])  # a run not planted: no better
        return Workspace(run_spec, prepared, cast(Featurizer, FakeFeaturizer(f"fake-{run_spec.run}")), run_embeddings)

    def recording_retrieval(ranker, gallery, gallery_labels, queries, **options):
        galleries.append(len(gallery))
        return evaluate_retrieval(ranker, gallery, gallery_labels, queries, **options)

    monkeypatch.setattr(tuning, "open_workspace", open_workspace)
    monkeypatch.setattr(tuning, "evaluate_retrieval", recording_retrieval)
    return prepared, embeddings, galleries


def test_validation_split_lies_inside_the_training_split_and_covers_every_label(spec):
    prepared = prepared_data(spec.config.data, spec.layout)
    split = tuning.validation_split(prepared, 0.25, np.random.default_rng(0))
    train = set(prepared.split.train.tolist())
    assert set(split.train.tolist()) | set(split.test.tolist()) == train
    assert not set(split.train.tolist()) & set(split.test.tolist())
    assert not (set(split.test.tolist()) & set(prepared.split.test.tolist()))
    labels = prepared.dataset.label_array
    assert set(labels[split.test]) == set(labels[prepared.split.train])  # every label has validation queries


def test_score_featurizer_matches_a_naive_map_at_r_and_learning_beats_cosine_on_hidden_signal():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.array(["a", "b", "c"]), 20)
    embeddings = hidden_signal(labels, rng, 0.6)
    inner = tuning.stratified_split(labels, 0.75, np.random.default_rng(0))
    sets = tuning.make_comparative_sets(labels[inner.train], 5, 10, np.random.default_rng(0))
    candidates = tuning.score_featurizer(
        "x", embeddings, labels, inner, ("cosine", "projection", "random"), sets, np.random.default_rng(0)
    )
    by_name = {c.ranker: c for c, _ in candidates}
    # naive MAP@R of cosine: each validation image searches the others (every image here is train or validation)
    scores = CosineRanker().score(embeddings, embeddings)
    expected = []
    for q in inner.test:
        order = [i for i in np.argsort(-scores[q], kind="stable") if i != q]
        relevant = [labels[i] == labels[q] for i in order]
        r = sum(relevant)
        expected.append(sum(np.mean(relevant[: i + 1]) for i in range(r) if relevant[i]) / r)
    assert by_name["cosine"].map_at_r.value == pytest.approx(np.mean(expected), abs=1e-9)
    for c, _ in candidates:
        assert c.map_at_r.low <= c.map_at_r.value <= c.map_at_r.high
    assert by_name["projection"].map_at_r.value > by_name["cosine"].map_at_r.value + 0.1
    assert by_name["random"].map_at_r.value < by_name["cosine"].map_at_r.value


def test_tune_never_scores_on_test_images_and_makes_the_winner_the_apps_default(spec, fake_models, monkeypatch):
    prepared, embeddings, galleries = fake_models

    def no_training(*args, **kwargs):
        raise AssertionError("no recipe was asked for")

    monkeypatch.setattr("core.train.fine_tune", no_training)
    report = tuning.tune(spec, tuning.TuneConfig(recipes=(), rankers=("cosine", "projection", "random")))
    assert galleries and set(galleries) == {len(prepared.split.train)}  # the training split, never a test image
    assert report.n_fit + report.n_validation == len(prepared.split.train)
    assert [c.ranker for c in report.candidates] == ["cosine", "projection", "random"]
    assert report.winner == max(report.candidates, key=lambda c: c.map_at_r.value)
    saved = json.loads(spec.layout.tune_report.read_text())
    assert saved["winner"]["ranker"] == report.winner.ranker and len(saved["candidates"]) == 3
    assert tuning.default_choice(spec.layout) == (PRETRAINED, report.winner.ranker)
    print([(c.ranker, c.map_at_r) for c in report.candidates])
    assert report.winner.ranker == "projection"  # the labels hide in quiet dimensions: learning finds them
    served = ProjectionRanker.load(spec.layout.ranker("projection", f"fake-{PRETRAINED}"))
    fit_only = tuning.validation_split(prepared, 0.25, np.random.default_rng(0)).train
    validated = ProjectionRanker().fit(embeddings[PRETRAINED][fit_only], prepared.dataset.label_array[fit_only])
    np.testing.assert_allclose(served.matrix, validated.matrix, atol=1e-6)  # the ranker validated is the one served
    spec.layout.default_choice.write_text("{not json")
    assert tuning.default_choice(spec.layout) is None


def test_budget_skips_recipes_that_cannot_start_and_stops_one_that_overruns(spec, fake_models, monkeypatch):
    started: list[str] = []

    def slow_training(records, split, config, run_dir, progress=None, resume=True):
        started.append(run_dir.name)
        from core.train import TrainProgress

        time.sleep(0.3)
        progress(TrainProgress(epoch=1, epochs=config.epochs, step=1, steps=4))  # past the budget: stops here
        raise AssertionError("tune should have stopped the run")

    monkeypatch.setattr("core.train.fine_tune", slow_training)
    recipes = (tuning.Recipe("first", epochs=1), tuning.Recipe("second", epochs=1))
    report = tuning.tune(spec, tuning.TuneConfig(budget_s=0.2, recipes=recipes, rankers=("cosine",)))
    assert started == ["tune-first"]
    assert [(o.run, o.status) for o in report.recipes] == [("tune-first", "stopped"), ("tune-second", "skipped")]
    assert {c.featurizer for c in report.candidates} == {PRETRAINED}


def test_after_the_recipes_tune_varies_the_best_ones_epochs_input_size_and_learning_rate(
    spec, fake_models, monkeypatch
):
    prepared, embeddings, _ = fake_models
    embeddings["tune-b"] = hidden_signal(prepared.dataset.label_array, np.random.default_rng(0), 0.05)  # b's run wins
    trained = []

    def instant_training(records, split, config, run_dir, progress=None, resume=True):
        trained.append((run_dir.name, config.objective, config.epochs, config.input_size, config.learning_rate))

    monkeypatch.setattr("core.train.fine_tune", instant_training)
    recipes = (tuning.Recipe("a", epochs=1), tuning.Recipe("b", objective="triplet", epochs=2, learning_rate=3e-3))
    report = tuning.tune(spec, tuning.TuneConfig(recipes=recipes, rankers=("cosine",)))
    assert trained == [
        ("tune-a", "classification", 1, 0, 3e-3),
        ("tune-b", "triplet", 2, 0, 3e-3),
        ("tune-b-long", "triplet", 4, 0, 3e-3),
        ("tune-b-small", "triplet", 2, tuning.SMALL_INPUT, 3e-3),
        ("tune-b-gentle", "triplet", 2, 0, pytest.approx(1e-3)),
    ]
    assert report.winner.featurizer == "tune-b" and [o.status for o in report.recipes] == ["trained"] * 5
    assert len(report.candidates) == 6  # pretrained and five runs, one ranker each
    without = tuning.tune(spec, tuning.TuneConfig(recipes=recipes, rankers=("cosine",), refine=False))
    assert [o.run for o in without.recipes] == ["tune-a", "tune-b"]


def test_a_training_split_of_ten_images_or_fewer_is_still_tuned(tmp_path, tiny_dataset, monkeypatch):
    """Eight training images: the validation gallery is too small for recall@10, which tune never reports."""
    import shutil

    for label in ("fish", "tools"):
        shutil.copytree(tiny_dataset / label, tmp_path / "data" / label)
    small = WorkspaceSpec(configure(data={"root": tmp_path / "data", "seed": 0}), tmp_path / "work", backend="torch")
    prepared = prepared_data(small.config.data, small.layout)
    assert len(prepared.split.train) <= 10
    planted = hidden_signal(prepared.dataset.label_array, np.random.default_rng(0), 0.4)
    fake = cast(Featurizer, FakeFeaturizer("fake"))
    monkeypatch.setattr(
        tuning, "open_workspace", lambda run_spec, progress=None: Workspace(run_spec, prepared, fake, planted)
    )
    report = tuning.tune(small, tuning.TuneConfig(recipes=(), rankers=("cosine", "projection")))
    assert [c.ranker for c in report.candidates] == ["cosine", "projection"]
    assert all(0.0 <= c.map_at_r.value <= 1.0 for c in report.candidates)


def test_cli_tune_rejects_unknown_recipes_and_budgets_in_one_line(capsys, caplog):
    assert cli.main(["tune", "--recipe", "arcface", "--quiet"]) == 2
    assert "unknown recipe 'arcface'" in caplog.text
    assert cli.main(["tune", "--recipe", "none", "--recipe", "triplet", "--quiet"]) == 2
    assert "--recipe none means the pretrained model only" in caplog.text
    for budget in ("0", "nan", "inf", "-1"):  # NaN would pass every "over budget?" check: no budget at all
        assert cli.main(["tune", "--budget-min", budget]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--budget-min" in err[0] and "finite positive number" in err[0], err
    assert cli.main(["tune", "--epochs", "1.5"]) == 2
    assert "expected an integer, got '1.5'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finite number of seconds"):
        tuning.TuneConfig(budget_s=float("nan"))
