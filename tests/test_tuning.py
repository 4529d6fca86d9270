"""``tune``: validation carved from the training split only, candidates scored and ranked, budget kept, the winner
becomes the app's default. Synthetic embeddings on the tiny real set stand in for models (no training here)."""

import itertools
import json
import re
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

    def init(self, config=None, *args, **kwargs):
        # the workspace passes its [projection] section: the default one is replaced too
        original(self, quick if config in (None, metric_learning.ProjectionConfig()) else config, *args, **kwargs)

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
    monkeypatch.setattr(tuning, "CopyLook", lambda: lambda ws, ranker, gallery, originals: 1.0)  # no images here
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


def report_fit_rows(spec, prepared) -> np.ndarray:
    return tuning.validation_split(prepared, 0.25, np.random.default_rng(0)).train


def test_tune_never_scores_on_test_images_and_serves_its_winner_refitted_on_the_whole_training_split(
    spec, fake_models, monkeypatch
):
    prepared, embeddings, galleries = fake_models
    fit_rows: list[int] = []
    fit = ProjectionRanker.fit

    def counting_fit(self, rows, labels, sets=None):
        fit_rows.append(len(rows))
        return fit(self, rows, labels, sets)

    monkeypatch.setattr(ProjectionRanker, "fit", counting_fit)

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
    assert report.winner.ranker == "projection"  # the labels hide in quiet dimensions: learning finds them
    assert (
        report.previous == (PRETRAINED, "cosine")
        and report.installed
        and "replaces pretrained + cosine" in report.decision
    )
    # validation chose the projection fitted on the fit images; the one served is refitted on every training image
    train = np.sort(prepared.split.train)
    assert fit_rows == [len(report_fit_rows(spec, prepared)), len(train)]
    assert report.served_fit_rows == len(train) > report.n_fit
    served = ProjectionRanker.load(spec.layout.ranker("projection", f"fake-{PRETRAINED}"))
    refitted = ProjectionRanker().fit(embeddings[PRETRAINED][train], prepared.dataset.label_array[train])
    np.testing.assert_allclose(served.matrix, refitted.matrix, atol=1e-6)
    spec.layout.default_choice.write_text("{not json")
    assert tuning.default_choice(spec.layout) is None


def slow_blocks(monkeypatch, seconds: float) -> None:
    """Every validation query is a block of its own, and each block takes ``seconds`` to score."""
    monkeypatch.setattr(tuning, "QUERY_BLOCK", 1)
    score = tuning.evaluate_retrieval

    def slow_retrieval(*args, **kwargs):
        time.sleep(seconds)
        return score(*args, **kwargs)

    monkeypatch.setattr(tuning, "evaluate_retrieval", slow_retrieval)


def stepping_training(step_seconds: float, steps: int, started: list[str]):
    """A stand-in for ``fine_tune``: ``steps`` steps per epoch of ``step_seconds`` each, reported as the real one
    reports them (after every step; the epoch's metrics after its last)."""
    from core.train import EpochMetrics, TrainProgress

    def training(records, split, config, run_dir, progress=None, resume=True):
        started.append(run_dir.name)
        for epoch in range(1, config.epochs + 1):
            for step in range(1, steps + 1):
                time.sleep(step_seconds)
                progress(TrainProgress(epoch, config.epochs, step, steps))
            metrics = EpochMetrics(epoch, 1.0, 0.5, 1.0, 0.5, step_seconds * steps)
            progress(TrainProgress(epoch, config.epochs, steps, steps, metrics))

    return training


def test_budget_is_kept_within_ten_percent_when_scoring_is_what_runs_out(spec, fake_models, monkeypatch):
    """Scoring the pretrained featurizer alone outlasts the budget: it stops at a block of queries, the ranker
    it was scoring is listed as stopped and every recipe as skipped, each with why; progress moves meanwhile."""
    prepared, _, _ = fake_models
    labels = prepared.dataset.label_array.astype(str)
    split = tuning.validation_split(prepared, 0.25, np.random.default_rng(0))
    n_queries = len(tuning.validation_queries(labels, split, 2000, np.random.default_rng(0)))
    budget = 1.5
    slow_blocks(monkeypatch, budget / (1.5 * n_queries))  # each ranker takes 2/3 of the budget to score
    monkeypatch.setattr("core.train.fine_tune", stepping_training(0.01, 2, []))
    events: list[tuning.TuneProgress] = []
    config = tuning.TuneConfig(budget_s=budget, rankers=("cosine", "l2", "l1"), recipes=(tuning.Recipe("a"),))
    started = time.perf_counter()
    report = tuning.tune(spec, config, events.append)
    wall = time.perf_counter() - started
    assert wall <= 1.1 * budget and report.seconds <= 1.1 * budget, (wall, report.seconds)
    assert [(c.featurizer, c.ranker) for c in report.candidates] == [(PRETRAINED, "cosine")]
    l2, l1 = report.skipped
    assert (l2.ranker, l2.status) == ("l2", "stopped") and l2.reason.startswith("the budget ran out while scoring it")
    assert (l1.ranker, l1.status) == ("l1", "skipped") and l1.reason.startswith("the budget ran out before it")
    [outcome] = report.recipes
    assert outcome.status == "skipped" and outcome.reason.startswith("needs more than ~")  # no epoch measured yet
    assert "to featurize and score" in outcome.reason and "of the budget left" in outcome.reason
    assert any(line.startswith("recipe a skipped: needs more than ~") for line in report.not_done())
    # the bar moved while the pretrained featurizer was scored: one event per block of queries, time going up
    cosine_blocks = [e for e in events if e.text.startswith(f"scoring {PRETRAINED} + cosine: scoring")]
    assert len(cosine_blocks) == report.n_queries >= 3
    assert all(a.elapsed_s < b.elapsed_s for a, b in itertools.pairwise(cosine_blocks))
    assert all(e.budget_s == budget and 0 <= e.fraction <= 1 for e in events)


def test_budget_stops_a_recipe_that_would_not_finish_and_skips_the_next_with_why(spec, fake_models, monkeypatch):
    started: list[str] = []
    monkeypatch.setattr("core.train.fine_tune", stepping_training(0.1, 10, started))  # 4 s a recipe
    recipes = (tuning.Recipe("first"), tuning.Recipe("second"))
    budget = 2.0
    begin = time.perf_counter()
    report = tuning.tune(spec, tuning.TuneConfig(budget_s=budget, recipes=recipes, rankers=("cosine",)))
    assert time.perf_counter() - begin <= 1.1 * budget
    assert started == ["tune-first"]
    first, second = report.recipes
    assert (first.run, first.status, second.run, second.status) == ("tune-first", "stopped", "tune-second", "skipped")
    assert "it would need ~" in first.reason and first.seconds < budget  # stopped as soon as it could tell
    assert "4 epochs x 1 s" in second.reason, second.reason  # the first run's pace
    assert {c.featurizer for c in report.candidates} == {PRETRAINED}


def test_cli_tune_lists_what_it_skipped_and_stopped_with_why(spec, fake_models, monkeypatch, capsys):
    monkeypatch.setattr("core.train.fine_tune", stepping_training(0.1, 10, []))  # 4 s a recipe: over the budget
    flags = ["--data", str(spec.config.data.root), "--workdir", str(spec.layout.root.parent), "--budget-min", "0.05"]
    recipes = ["--recipe", "classification", "--recipe", "triplet", "--ranker", "cosine", "--quiet"]
    assert cli.main(["tune", *flags, *recipes]) == 0
    out = capsys.readouterr().out
    assert re.search(r"recipe classification stopped: at epoch 1/4, step \d+/10 it would need ~\d+ s more", out)
    assert re.search(r"recipe triplet skipped: needs ~\d+ s \(4 epochs x 1 s, then ~\d+ s to featurize and score", out)
    assert "of a 3 s budget: kept pretrained + cosine: it validated best" in out
    assert out.rstrip().endswith("the app opens with pretrained + cosine")


def make_complete_run(spec: WorkspaceSpec, run: str) -> None:
    from core.artifacts import SCHEMA_VERSION, atomic_write_json

    atomic_write_json(spec.layout.run(run) / "manifest.json", {"schema_version": SCHEMA_VERSION, "status": "complete"})


def test_a_candidate_that_validates_worse_than_the_current_default_is_not_installed(spec, fake_models):
    """The current default (an earlier run with L2) is scored on the same validation split. The look constraint
    rejects it here, and the best candidate it allows validates worse: the default stays, and the report says so."""
    prepared, embeddings, _ = fake_models
    labels = prepared.dataset.label_array
    embeddings["old"] = hidden_signal(labels, np.random.default_rng(0), 0.0)  # labels plain to see: MAP@R 1
    make_complete_run(spec, "old")
    atomic_write_json_choice = {"featurizer": "old", "ranker": "l2"}
    spec.layout.default_choice.write_text(json.dumps(atomic_write_json_choice))
    looked: list[tuple[str, str]] = []

    def look(ws, ranker, gallery, originals):
        looked.append((ws.run, ranker.name))
        assert set(gallery) == set(prepared.split.train) and set(originals) <= set(gallery)
        return 0.5 if (ws.run, ranker.name) == ("old", "l2") else 1.0

    config = tuning.TuneConfig(recipes=(), rankers=("cosine", "random"))
    report = tuning.tune(spec, config, look=look)
    assert report.previous == ("old", "l2") and report.incumbent is not None
    assert report.incumbent.rejected == "copy recall@1 0.50 < 0.95 x cosine's 1.00"
    assert report.winner is not None and report.winner.featurizer == PRETRAINED
    assert report.winner.map_at_r.value < report.incumbent.map_at_r.value
    assert not report.installed and report.choice == ("old", "l2")
    assert report.decision.startswith("kept old + l2") and "validated no better" in report.decision
    assert json.loads(spec.layout.default_choice.read_text()) == atomic_write_json_choice
    assert ("old", "cosine") in looked  # cosine on the same featurizer is the look's yardstick


def test_the_look_constraint_rejects_a_candidate_that_buries_the_original(spec, fake_models):
    def look(ws, ranker, gallery, originals):
        return 0.5 if ranker.name == "projection" else 0.9

    report = tuning.tune(spec, tuning.TuneConfig(recipes=(), rankers=("cosine", "projection")), look=look)
    by_ranker = {c.ranker: c for c in report.candidates}
    assert by_ranker["projection"].rejected == "copy recall@1 0.50 < 0.95 x cosine's 0.90"
    assert by_ranker["projection"].map_at_r.value > by_ranker["cosine"].map_at_r.value  # the better label metric
    assert report.winner == by_ranker["cosine"] and by_ranker["cosine"].copy_recall_at_1 == 0.9
    assert "(current default)" not in report.decision and report.choice == (PRETRAINED, "cosine")
    unconstrained = tuning.tune(spec, tuning.TuneConfig(recipes=(), rankers=("cosine", "projection"), look_ratio=0))
    assert unconstrained.winner is not None and unconstrained.winner.ranker == "projection"


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
    report = tuning.tune(small, tuning.TuneConfig(recipes=(), rankers=("cosine", "projection"), look_ratio=0))
    assert [c.ranker for c in report.candidates] == ["cosine", "projection"]
    assert all(0.0 <= c.map_at_r.value <= 1.0 for c in report.candidates)


def test_cli_tune_rejects_unknown_recipes_and_budgets_in_one_line(capsys, caplog):
    assert cli.main(["tune", "--recipe", "arcface", "--quiet"]) == 2
    assert "unknown recipe 'arcface'" in caplog.text
    assert cli.main(["tune", "--recipe", "none", "--recipe", "triplet", "--quiet"]) == 2
    assert "--recipe none means the pretrained model only" in caplog.text
    capsys.readouterr()  # those two errors were logged to stderr too
    for budget in ("0", "nan", "inf", "-1"):  # NaN would pass every "over budget?" check: no budget at all
        assert cli.main(["tune", "--budget-min", budget]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--budget-min" in err[0] and "finite positive number" in err[0], err
    assert cli.main(["tune", "--epochs", "1.5"]) == 2
    assert "expected an integer, got '1.5'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finite number of seconds"):
        tuning.TuneConfig(budget_s=float("nan"))


class ColourHistograms:
    """A featurizer that sees colour only (8 bins per channel): crops, mirrors and re-compression barely move it."""

    fingerprint = "colour-histograms"

    def embed(self, images) -> np.ndarray:
        rows = [
            np.concatenate([np.histogram(np.asarray(image)[..., c], 8, (0, 256))[0] for c in range(3)])
            for image in images
        ]
        vectors = np.asarray(rows, np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_copy_look_finds_the_originals_of_edited_copies_and_embeds_them_once(spec):
    from core.images import load_image
    from core.rankers import make_ranker

    prepared = prepared_data(spec.config.data, spec.layout)
    featurizer = ColourHistograms()
    calls: list[int] = []
    embed = featurizer.embed
    featurizer.embed = lambda images: calls.append(len(images)) or embed(images)  # type: ignore[method-assign]
    gallery_rows = embed([load_image(record.path) for record in prepared.dataset.records])
    ws = Workspace(spec, prepared, cast(Featurizer, featurizer), gallery_rows)
    split = tuning.validation_split(prepared, 0.25, np.random.default_rng(0))
    gallery = np.sort(prepared.split.train)
    look = tuning.CopyLook()
    cosine = look(ws, CosineRanker(), gallery, split.test)
    shuffled = look(ws, make_ranker("random", np.random.default_rng(0)), gallery, split.test)
    assert calls == [len(split.test)]  # the copies are embedded once, for both rankers
    assert cosine >= 0.75 and shuffled < cosine, (cosine, shuffled)
