"""The Streamlit app, headless through AppTest, on the tiny real set with the real featurizer."""

import shutil
import time

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from tests.apptest import run_app
from workbench import service


@pytest.fixture(scope="module")
def ready_workdir(tmp_path_factory, tiny_dataset):
    """A workdir with the tiny set featurized and the quick learned rankers fitted, as `make run` leaves it."""
    from workbench.workflows import READY_RANKERS, ensure_learned
    from workbench.workspace import open_workspace, spec_from_environment

    template = tmp_path_factory.mktemp("app-ready")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(tiny_dataset))
        patch.setenv("WORKBENCH_WORKDIR", str(template))
        ensure_learned(open_workspace(spec_from_environment()), READY_RANKERS)
    return template


def use_workdir(monkeypatch, workdir, tiny_dataset):
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    return workdir


@pytest.fixture
def app_env(monkeypatch, tmp_path_factory, tiny_dataset, ready_workdir):
    """A copy of the ready workdir per test (each page fits the learned rankers only when they are missing)."""
    workdir = tmp_path_factory.mktemp("app-work") / "work"
    shutil.copytree(ready_workdir, workdir)
    return use_workdir(monkeypatch, workdir, tiny_dataset)


@pytest.fixture
def fresh_app_env(monkeypatch, tmp_path_factory, tiny_dataset):
    """An empty workdir: the app featurizes and fits everything itself."""
    return use_workdir(monkeypatch, tmp_path_factory.mktemp("app-fresh"), tiny_dataset)


def result_lines(app: AppTest) -> list[str]:
    return [md.value for md in app.markdown if md.value.startswith("**") and "·" in md.value]


def test_search_page_shows_results_and_switching_ranker_changes_scores(fresh_app_env):
    app = run_app()
    assert app.title[0].value == "Search by image"
    assert any("cosine ranker · 12 results" in caption.value for caption in app.caption)
    # a fresh workdir: the learned rankers are fitted on the first page load, not only once Evaluation is opened
    assert {"svm", "projection"} <= set(app.selectbox(key="ranker").options)
    assert not any("neighbour labels" in caption.value for caption in app.caption)
    app.selectbox(key="ranker").select("projection").run()
    assert any("x agreement of the two photos' neighbour labels" in caption.value for caption in app.caption)
    app.selectbox(key="ranker").select("cosine").run()
    cosine = result_lines(app)
    assert len(cosine) == 12 and cosine[0].startswith("**1.** fish")  # the query itself (fish/gc_fish1.jpg) comes first
    app.selectbox(key="ranker").select("l2").run()
    assert not app.exception
    assert any("l2 ranker" in caption.value for caption in app.caption)
    l2 = result_lines(app)
    assert l2 != cosine and [line.split("`")[0] for line in l2] == [
        line.split("`")[0] for line in cosine
    ]  # same order, other scores
    app.slider(key="k").set_value(3).run()
    assert len(result_lines(app)) == 3
    app.selectbox(key="gallery_pick").select("tools/gc_hammer1.jpg").run()
    assert result_lines(app)[0].startswith("**1.** tools")
    assert not any("heatmaps explain" in caption.value for caption in app.caption)
    app.toggle(key="explain").set_value(True).run()
    assert not app.exception
    assert any("The heatmaps explain the cosine similarity" in caption.value for caption in app.caption)


def test_evaluation_page_dashboard(app_env):
    app = run_app("pages/evaluation.py")
    assert [m.label for m in app.metric] == [
        *("mean rank", "median rank", "top-1", "top-5"),
        *("copy recall@1", "mean rank of original"),  # the look metric beside the label metrics
    ]
    looks = {m.label: m.value for m in app.metric}
    assert float(looks["copy recall@1"].rstrip("%")) >= 75 and float(looks["mean rank of original"]) < 3
    assert any(c.value.startswith("Looks: an edited copy") for c in app.caption)
    assert len(app.get("plotly_chart")) == 3
    categories = app.dataframe[0].value
    assert set(categories["label"]) == {"fish", "landmarks", "tools"}
    all_rows = len(list(app.get("imgs")))
    app.toggle(key="failures_only").set_value(True).run()
    assert not app.exception
    assert len(app.get("imgs")) <= all_rows
    app.selectbox(key="eval_ranker").select("random").run()
    assert not app.exception and "ranker random" in app.caption[0].value


def test_dataset_page(app_env):
    app = run_app("pages/dataset.py")
    values = {m.label: m.value for m in app.metric}
    assert values["labels"] == "3" and values["images"] == "18"
    assert any("**fish**" in md.value for md in app.markdown)


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_training_page_trains_a_run_that_other_pages_can_use(app_env):
    app = run_app("pages/training.py")
    assert any("No fine-tuned run yet" in info.value for info in app.info)
    app.text_input(key="run_name").input("tiny")
    assert app.number_input(key="epochs").min == 1  # 0 epochs is refused in the form, with the reason in its help
    app.number_input(key="epochs").set_value(1)
    app.number_input(key="batch").set_value(6)
    app.number_input(key="input_size").set_value(128)
    app.button[0].click().run()  # the form's submit button
    assert not app.exception
    deadline = time.monotonic() + 180
    while not all(job.done for job in service.training_jobs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    [job] = [job for job in service.training_jobs() if job.run == "tiny"]
    assert job.done and job.error is None, job.error
    assert len(job.history) == 1 and job.pair_accuracy is not None
    assert "tiny" in service.featurizer_choices()
    app.run()
    assert not app.exception
    assert [expander.label for expander in app.expander] == ["tiny"]  # under "Finished runs"
    assert "tiny" in app.sidebar.selectbox(key="featurizer").options
    assert any(p.proto.text.startswith("run tiny: done · ") and "elapsed" in p.proto.text for p in app.get("progress"))

    search = run_app()
    search.selectbox(key="featurizer").select("tiny").run()
    assert not search.exception
    assert "svm" in search.selectbox(key="ranker").options
    search.selectbox(key="ranker").select("svm").run()
    assert any("svm ranker" in caption.value and "featurizer tiny" in caption.value for caption in search.caption)

    # the choices survive page switches (Streamlit drops the state of widgets a page does not draw)
    search.switch_page("pages/explore.py").run()
    assert not search.exception
    assert search.sidebar.selectbox(key="featurizer").value == "tiny"
    search.switch_page("pages/search.py").run()
    assert not search.exception
    assert search.sidebar.selectbox(key="featurizer").value == "tiny"
    assert search.selectbox(key="ranker").value == "svm"


def test_bad_upload_gets_a_clear_message(app_env):
    run_app()
    ws = service.workspace()
    with pytest.raises(service.ImageLoadError, match="notes.jpg: not a recognised image format"):
        service.search(ws, b"plain text", "notes.jpg", "cosine", 5)


def test_search_uses_the_exported_onnx_model_when_present(app_env, tiny_dataset):
    from workbench.cli import main

    assert main(["export", "--data", str(tiny_dataset), "--workdir", str(app_env), "--quiet"]) == 0
    app = run_app()
    caption = next(c.value for c in app.caption if "ranker" in c.value)
    assert "featurizer pretrained (onnx)" in caption
    assert result_lines(app)[0] == "**1.** fish · `1.000`"


def test_explore_page_shows_the_map_and_explains_a_result(app_env):
    import importlib.util

    app = run_app("pages/explore.py")
    umap = ["UMAP"] if importlib.util.find_spec("umap") is not None else []  # offered only when installed
    assert app.sidebar.radio(key="projection").options == ["PCA", *umap]
    assert any(c.value.startswith("PCA of 18 gallery embeddings") for c in app.caption)
    assert any("centre-cropped" in c.value for c in app.caption)  # says the heatmaps show the model's crop
    assert len(app.get("plotly_chart")) == 1
    assert any("Cosine similarity" in caption.value for caption in app.caption)
    first = next(c.value for c in app.caption if "Cosine similarity" in c.value)
    app.selectbox(key="explain_hit").select_index(2).run()
    assert not app.exception
    assert next(c.value for c in app.caption if "Cosine similarity" in c.value) != first


def test_dataset_page_switches_folder_for_this_session_only_and_within_the_allowed_roots(
    app_env, monkeypatch, tmp_path, tiny_dataset
):
    import shutil

    other = tmp_path / "photos"
    for label in ("fish", "tools"):
        shutil.copytree(tiny_dataset / label, other / label)
    app = run_app("pages/dataset.py")
    app.text_input(key="data_folder").input(str(other))
    app.button[0].click().run()
    assert any("outside the folders this app may open" in e.value for e in app.error)  # default root: the demo's parent
    app.text_input(key="data_folder").input("/etc")
    app.button[0].click().run()
    assert any("outside the folders this app may open" in e.value for e in app.error)
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    app.text_input(key="data_folder").input(str(tmp_path / "nowhere"))
    app.button[0].click().run()
    assert any("dataset folder not found" in e.value for e in app.error)
    app.text_input(key="data_folder").input(str(other))
    app.button[0].click().run()
    assert not app.exception
    values = {m.label: m.value for m in app.metric}
    assert values["labels"] == "2" and values["images"] == "12"
    visitor = run_app("pages/dataset.py")  # another browser session still sees the default dataset
    assert {m.label: m.value for m in visitor.metric}["labels"] == "3"


def test_evaluation_cache_follows_the_saved_ranker_files(app_env):
    run_app()
    ws = service.workspace()
    for name in ("svm", "projection"):
        service.fit(ws, name)
        assert service.evaluation(ws, (name,), "train")[0].ranker == name
        ws.ranker_path(name).unlink()
        with pytest.raises(service.WorkbenchError, match=f"ranker '{name}' is not fitted"):  # not a stale cached result
            service.evaluation(ws, (name,), "train")


def test_off_topic_query_gets_no_close_match_and_a_gallery_image_does(app_env, tiny_dataset):
    import numpy as np
    from PIL import Image

    run_app()
    ws = service.workspace()
    gallery = service.match_strength(ws, Image.open(tiny_dataset / "fish" / "gc_fish1.jpg").convert("RGB"))
    assert gallery.close and gallery.best == pytest.approx(1.0, abs=1e-3)
    grey = Image.fromarray(np.full((224, 224, 3), 128, np.uint8))  # nothing in the gallery looks like this
    off_topic = service.match_strength(ws, grey)
    assert not off_topic.close and off_topic.best < off_topic.floor < 1.0


def test_training_job_reports_each_phase_with_its_own_counter():
    from core.config import TrainConfig, WorkbenchConfig
    from workbench.jobs import TrainingJob
    from workbench.workspace import WorkspaceSpec

    def job(epochs):
        return TrainingJob("r", WorkspaceSpec(WorkbenchConfig(train=TrainConfig(epochs=epochs))))

    one = job(2)
    one.phase = "fine-tuning"
    assert one.status == "run r: fine-tuning, epoch 1/2, starting"  # not "step 0/1" before the first step
    one.started = 100.0
    assert one.timing(now=130.0) == "0:30 elapsed"  # nothing done yet: no estimate
    one.phase, one.epoch, one.step, one.steps = "fine-tuning", 2, 5, 10
    assert one.timing(now=100.0 + 3 * 3600 * 0.525) == "1:34:30 elapsed, about 1:25:30 left"  # 52.5 % done
    assert one.status == "run r: fine-tuning, epoch 2/2, step 5/10" and one.fraction == pytest.approx(0.7 * 0.75)
    one.phase, one.epoch, one.step = "featurizing with the fine-tuned model", 2, 10
    assert one.status == "run r: featurizing with the fine-tuned model (loading the model)"
    one.featurized, one.to_featurize = 120, 275
    assert one.status == "run r: featurizing with the fine-tuned model: 120/275 images"
    assert one.fraction == pytest.approx(0.7 + 0.25 * 120 / 275)  # not stuck at 100 % while featurizing
    one.phase = "fitting the svm ranker"
    assert one.fraction == 0.95 and one.status == "run r: fitting the svm ranker"
    zero = job(0)
    zero.phase = "fine-tuning"
    assert zero.status == "run r: 0 epochs, keeping the pretrained weights"
    zero.phase, zero.featurized, zero.to_featurize = "featurizing with the fine-tuned model", 10, 20
    assert zero.fraction == pytest.approx(0.95 * 0.5)  # not stuck at 0 %
    zero.done = True
    assert zero.fraction == 1.0 and zero.status == "run r: done"


@pytest.mark.slow  # the first UMAP fit in a process compiles numba code (15-35 s on 2 cores)
def test_explore_draws_a_real_umap_map_under_the_umap_label(app_env):
    pytest.importorskip("umap")
    app = run_app("pages/explore.py")
    app.sidebar.radio(key="projection").set_value("umap").run(timeout=300)
    assert not app.exception
    assert any(c.value.startswith("UMAP of 18 gallery embeddings") for c in app.caption)
    assert not app.warning  # the warning that says a PCA map stands in for UMAP


def test_project_streamlit_config_keeps_the_console_quiet_and_the_toolbar_minimal():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"  # watching .venv overflows inotify: thousands of lines
    assert config["client"]["toolbarMode"] == "minimal"  # no Deploy button
    assert config["browser"]["gatherUsageStats"] is False
    from core.config import UPLOAD_LIMITS

    # the upload widget refuses what the app would refuse anyway, before reading it
    assert config["server"]["maxUploadSize"] * 2**20 == UPLOAD_LIMITS.max_file_bytes


def test_tuning_from_the_training_page_makes_its_winner_the_default_ranker(app_env, monkeypatch):
    from core.artifacts import atomic_write_json
    from core.evaluate import Estimate
    from workbench import jobs
    from workbench.tuning import Candidate, Recipe, RecipeOutcome, Skipped, TuneProgress, TuneReport

    budgets = []

    def fake_tune(spec, config, progress):  # the workflow itself is tested in test_tuning.py
        budgets.append(config.budget_s)
        progress(TuneProgress("scoring pretrained + svm: fitting on 6 images", 12.0, config.budget_s))
        assert service.tune_job().status == "scoring pretrained + svm: fitting on 6 images · 0:12 of 2:00"
        winner = Candidate("pretrained", "l2", Estimate(0.9, 0.8, 1.0), Estimate(1.0, 1.0, 1.0), 0.1)
        loser = Candidate("pretrained", "cosine", Estimate(0.7, 0.6, 0.8), Estimate(0.9, 0.8, 1.0), 0.1)
        atomic_write_json(spec.layout.default_choice, {"featurizer": "pretrained", "ranker": "l2"})
        skipped = RecipeOutcome(Recipe("triplet"), "tune-triplet", "skipped", reason="needs ~60 s, 10 s left")
        stopped = Skipped("pretrained", "projection", "stopped", "the budget ran out while scoring it")
        decision = "pretrained + l2 replaces pretrained + cosine"
        return TuneReport(
            (loser, winner), (skipped,), (stopped,), winner, ("pretrained", "cosine"), loser, True, decision, 0,
            6, 3, 3, config.budget_s, 118.0,
        )  # fmt: skip

    monkeypatch.setattr(jobs, "tune", fake_tune)
    search = run_app()
    assert search.selectbox(key="ranker").value == "cosine"  # before tuning: the registry's order
    app = run_app("pages/training.py")
    app.number_input(key="tune_budget").set_value(2)
    app.button(key="tune_start").click().run()
    deadline = time.monotonic() + 30
    while not service.tune_job().done and time.monotonic() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception and budgets == [120.0]
    assert any("pretrained + l2 replaces pretrained + cosine" in s.value for s in app.success)
    assert any("opens with pretrained + l2" in s.value for s in app.success)
    [warning] = [w.value for w in app.warning if "Not tried" in w.value]
    assert "recipe triplet skipped: needs ~60 s, 10 s left" in warning
    assert "pretrained + projection stopped: the budget ran out while scoring it" in warning
    [table] = [frame.value for frame in app.dataframe]
    assert list(table["ranker"]) == ["l2", "cosine"] and list(table["default"]) == ["✓", ""]
    assert run_app().selectbox(key="ranker").value == "l2"  # a new session opens with the winner


def test_click_to_search_makes_a_result_the_query(app_env):
    app = run_app()
    before = result_lines(app)
    third = before[2].split("`")[0]  # "**3.** label · "
    app.button(key="search_from_3").click().run()
    assert not app.exception, app.exception
    picked = app.selectbox(key="gallery_pick").value
    assert picked != "fish/gc_fish1.jpg" and picked.split("/")[0] in third
    after = result_lines(app)
    assert after[0].startswith(f"**1.** {picked.split('/')[0]}") and after != before  # the new query finds itself
    # and the choice survives a page switch, as the other choices do
    app.switch_page("pages/explore.py").run()
    app.switch_page("pages/search.py").run()
    assert app.selectbox(key="gallery_pick").value == picked


def test_search_and_evaluation_offer_their_results_as_downloads(app_env):
    import csv
    import io
    import json

    from workbench.workspace import open_workspace, spec_from_environment

    app = run_app()
    [button] = [element for element in app.get("download_button") if element.proto.label == "Download results (CSV)"]
    assert button.proto.label == "Download results (CSV)"
    # what the button serves, from the same service call
    ws = open_workspace(spec_from_environment())
    result = service.search(ws, (ws.dataset.root / "fish" / "gc_fish1.jpg").read_bytes(), "q.jpg", "cosine", 12)
    rows = list(csv.DictReader(io.StringIO(service.results_csv(ws, result, "cosine").decode())))
    assert len(rows) == 12 and rows[0]["path"] == "fish/gc_fish1.jpg" and float(rows[0]["score"]) > 0.999
    assert [int(row["rank"]) for row in rows] == list(range(1, 13))

    evaluation = run_app("pages/evaluation.py")
    labels = [element.proto.label for element in evaluation.get("download_button")]
    assert "Download this evaluation (JSON)" in labels
    [result_eval] = service.evaluation(ws, ("cosine",), "test")
    [full] = service.retrieval(ws, ("cosine",), "test")
    report = json.loads(service.evaluation_json(ws, result_eval, full, "test"))
    assert report["full_gallery"]["ranker"] == "cosine" and report["comparative_sets"]["ranker"] == "cosine"
    assert report["split"] == "test" and report["featurizer"] == ws.fingerprint


def test_the_look_weight_slider_moves_projection_results_towards_looks(app_env):
    app = run_app()
    assert not [s for s in app.sidebar.slider if s.key == "look_weight"]  # cosine has no look weight
    app.selectbox(key="ranker").select("cosine").run()
    cosine = [line.split("`")[0] for line in result_lines(app)]
    app.selectbox(key="ranker").select("projection").run()
    weight = app.sidebar.slider(key="look_weight")
    assert weight.value == pytest.approx(0.6)  # the weight the projection was fitted with
    parts = [caption.value for caption in app.caption if caption.value.startswith("label ")]
    assert len(parts) == 12 and all(" · look " in part for part in parts)
    blended = result_lines(app)
    weight.set_value(1.0).run()
    assert not app.exception
    assert [line.split("`")[0] for line in result_lines(app)] == cosine  # looks alone: cosine's order
    weight.set_value(0.0).run()
    assert result_lines(app) != blended  # label agreement alone: other scores
    app.switch_page("pages/evaluation.py").run()
    app.switch_page("pages/search.py").run()
    assert app.sidebar.slider(key="look_weight").value == 0.0  # kept across pages
