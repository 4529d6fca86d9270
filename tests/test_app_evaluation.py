"""Evaluation, Compare and Label errors pages, headless through AppTest with the real featurizer.

The dataset is the tiny real set with one fish photo filed under tools: the Label errors page must name it.
The module shares one workdir, so the gallery is featurized and the learned rankers fitted once.
"""

import shutil

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

MISFILED = "tools/gc_fish1.jpg"


@pytest.fixture(scope="module")
def misfiled_env(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("app-evaluation")
    data = root / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "fish" / "gc_fish1.jpg").rename(data / MISFILED)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(data))
        patch.setenv("WORKBENCH_WORKDIR", str(root / "work"))
        patch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
        yield root


def open_page(page: str) -> AppTest:
    app = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    app.run()
    app.switch_page(page)
    app.run()
    assert not app.exception, app.exception
    return app


def test_label_errors_page_shows_the_misfiled_photo_with_its_neighbours(misfiled_env):
    app = open_page("pages/label_errors.py")
    assert app.title[0].value == "Likely label errors"
    lines = [md.value for md in app.markdown]
    assert lines[1] == f"`{MISFILED}`  \nlabelled **tools**"  # the most suspicious first
    assert lines[2] == "100% of its 4 neighbours are **fish**; 0% are tools."  # capped: fish has 5 images left
    listed = int(lines[0].removeprefix("**").split()[0])
    assert len(app.get("image")) == listed * 5  # each: the photo and its 4 neighbours
    assert any("Neighbourhood capped at 4" in caption.value for caption in app.caption)

    app.slider(key="label_errors_share").set_value(1.0).run()  # only unanimous neighbourhoods
    assert not app.exception
    lines = [md.value for md in app.markdown]
    assert lines[0] == "**1 likely label error(s)**, most suspicious first." and MISFILED in lines[1]

    app.selectbox(key="label_errors_ranker").select("random").run()
    assert not app.exception
    assert any("random ranker" in caption.value for caption in app.caption)
    assert not any("learned from these labels" in caption.value for caption in app.caption)


def test_label_errors_page_offers_plain_rankers_first_even_when_tune_chose_a_learned_one(misfiled_env):
    """A learned ranker agrees with the labels it was fitted on; the page starts from cosine and says why."""
    from core.artifacts import atomic_write_json
    from workbench import service

    ws = service.workspace()
    service.ensure_learned_rankers(ws)
    atomic_write_json(ws.layout.default_choice, {"featurizer": ws.run, "ranker": "projection"})  # as tune writes
    try:
        assert service.ranker_choices(ws)[0] == "projection"
        assert service.label_error_ranker_choices(ws)[:2] == ["cosine", "l2"]
        app = open_page("pages/label_errors.py")
        assert app.selectbox(key="label_errors_ranker").value == "cosine"
        app.selectbox(key="label_errors_ranker").select("projection").run()
        assert any("learned from these labels" in caption.value for caption in app.caption)
    finally:
        ws.layout.default_choice.unlink()


@pytest.mark.slow  # about 22 s: fits the svm and projection rankers for the real featurizer
def test_evaluation_and_compare_pages_fit_the_learned_rankers_and_show_full_gallery_metrics(misfiled_env):
    app = open_page("pages/evaluation.py")
    expected_rankers = ["cosine", "l2", "svm", "projection", "l1", "random"]
    assert app.sidebar.selectbox(key="eval_ranker").options == expected_rankers  # fitted on first open
    assert [m.label for m in app.metric][:4] == ["mean rank", "median rank", "top-1", "top-5"]  # then the looks
    _, summary, categories = (frame.value for frame in app.dataframe)
    assert list(summary.columns) == [
        "ranker",
        "queries",
        "recall@1",
        "recall@5",
        "recall@10",
        "MAP@R",
        "MRR",
        "R-precision",
    ]
    from workbench import service

    n_test = len(service.workspace().prepared.split.test)  # the content-hash split of the 18 photos
    assert list(summary["ranker"]) == ["cosine"] and summary["queries"][0] == n_test  # every test image
    assert set(categories["label"]) == {"fish", "landmarks", "tools"}
    assert ((summary.iloc[0, 2:] >= 0) & (summary.iloc[0, 2:] <= 1)).all()
    app.selectbox(key="eval_ranker").select("random").run()
    assert not app.exception
    random_summary = app.dataframe[1].value
    assert list(random_summary["ranker"]) == ["random"] and random_summary["MAP@R"][0] < summary["MAP@R"][0]

    app = open_page("pages/compare.py")
    comparative, full, looks = (frame.value for frame in app.dataframe)
    assert list(comparative["ranker"]) == list(full["ranker"]) == list(looks["ranker"]) == expected_rankers
    assert full.set_index("ranker")["MRR"]["random"] < full.set_index("ranker")["MRR"]["cosine"]
    recall = looks.set_index("ranker")["copy recall@1"].map(lambda cell: float(cell.split("%")[0]))
    assert recall["random"] < recall["cosine"] and "[" in looks["mean rank of original"][0]  # with its CI
