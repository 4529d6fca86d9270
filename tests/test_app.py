"""The Streamlit app, headless through AppTest, on the tiny real set with the real featurizer."""

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


@pytest.fixture
def app_env(monkeypatch, tmp_path_factory, tiny_dataset):
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(tmp_path_factory.mktemp("app-work")))


def run_app(page: str | None = None) -> AppTest:
    app = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    return app


def test_search_page_shows_results_and_switching_ranker_changes_scores(app_env):
    app = run_app()
    assert not app.exception
    assert app.title[0].value == "Search by image"
    captions = [caption.value for caption in app.caption]
    assert any("cosine ranker" in text and "12 results" in text for text in captions)
    cosine_scores = [md.value for md in app.markdown if md.value.startswith("**1.**")]
    app.selectbox(key="ranker").select("l2").run()
    assert not app.exception
    assert any("l2 ranker" in caption.value for caption in app.caption)
    l2_scores = [md.value for md in app.markdown if md.value.startswith("**1.**")]
    assert cosine_scores and l2_scores and cosine_scores != l2_scores
    app.slider(key="k").set_value(3).run()
    assert len([md for md in app.markdown if md.value.startswith("**")]) == 3


def test_evaluation_page_shows_every_ranker(app_env):
    app = run_app("pages/evaluation.py")
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["ranker"]) == ["random", "l1", "l2", "cosine"]
