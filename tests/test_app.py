"""The Streamlit app, headless through AppTest, on the tiny real set with the real featurizer."""

import time

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from workbench import service


@pytest.fixture
def app_env(monkeypatch, tmp_path_factory, tiny_dataset):
    workdir = tmp_path_factory.mktemp("app-work")
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    return workdir


def run_app(page: str | None = None) -> AppTest:
    app = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    assert not app.exception, app.exception
    return app


def result_lines(app: AppTest) -> list[str]:
    return [md.value for md in app.markdown if md.value.startswith("**") and "·" in md.value]


def test_search_page_shows_results_and_switching_ranker_changes_scores(app_env):
    app = run_app()
    assert app.title[0].value == "Search by image"
    assert any("cosine ranker · 12 results" in caption.value for caption in app.caption)
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
    assert not any("Cosine similarity" in caption.value for caption in app.caption)
    app.toggle(key="explain").set_value(True).run()
    assert not app.exception
    assert any("Cosine similarity" in caption.value for caption in app.caption)


def test_evaluation_page_dashboard(app_env):
    app = run_app("pages/evaluation.py")
    assert [m.label for m in app.metric] == ["mean rank", "median rank", "top-1", "top-5"]
    assert len(app.get("plotly_chart")) == 3
    categories = app.dataframe[0].value
    assert set(categories["label"]) == {"fish", "landmarks", "tools"}
    all_rows = len(list(app.get("imgs")))
    app.toggle(key="failures_only").set_value(True).run()
    assert not app.exception
    assert len(app.get("imgs")) <= all_rows
    app.selectbox(key="eval_ranker").select("random").run()
    assert not app.exception and "ranker random" in app.caption[0].value


def test_compare_page_lists_every_ranker(app_env):
    app = run_app("pages/compare.py")
    assert list(app.dataframe[0].value["ranker"]) == ["cosine", "l2", "l1", "random"]
    assert len(app.get("plotly_chart")) == 2


def test_dataset_page(app_env):
    app = run_app("pages/dataset.py")
    values = {m.label: m.value for m in app.metric}
    assert values["labels"] == "3" and values["images"] == "18"
    assert any("**fish**" in md.value for md in app.markdown)


def test_training_page_trains_a_run_that_other_pages_can_use(app_env):
    app = run_app("pages/training.py")
    assert any("No fine-tuned run yet" in info.value for info in app.info)
    app.text_input(key="run_name").input("tiny")
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

    search = run_app()
    search.selectbox(key="featurizer").select("tiny").run()
    assert not search.exception
    assert "svm" in search.selectbox(key="ranker").options
    search.selectbox(key="ranker").select("svm").run()
    assert any("svm ranker" in caption.value and "featurizer tiny" in caption.value for caption in search.caption)


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
    app = run_app("pages/explore.py")
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
    for name in ("svm", "siamese"):
        service.fit(ws, name)
        assert service.evaluation(ws, (name,), "train")[0].ranker == name
        ws.ranker_path(name).unlink()
        with pytest.raises(service.WorkbenchError, match=f"ranker '{name}' is not fitted"):  # not a stale cached result
            service.evaluation(ws, (name,), "train")
