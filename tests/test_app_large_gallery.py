"""The Explore and Search pages as a gallery of 10^5-10^6 photos gets them, headless through AppTest on the tiny real
set with the limits shrunk: the map fits and draws a stratified sample, and the gallery query is picked by label and
page instead of from one menu of every name."""

import base64
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from tests.apptest import run_app
from workbench import analysis, service, views


@pytest.fixture(scope="module")
def ready_workdir(tmp_path_factory, tiny_dataset):
    """A workdir with the tiny set featurized and the quick learned rankers fitted, as `make run` leaves it."""
    from workbench.workflows import READY_RANKERS, ensure_learned
    from workbench.workspace import open_workspace, spec_from_environment

    template = tmp_path_factory.mktemp("app-large-ready")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(tiny_dataset))
        patch.setenv("WORKBENCH_WORKDIR", str(template))
        ensure_learned(open_workspace(spec_from_environment()), READY_RANKERS)
    return template


@pytest.fixture
def large_app(monkeypatch, tmp_path_factory, tiny_dataset, ready_workdir):
    """The tiny set (18 photos, 6 per label) treated as a large gallery: a map of at most 6 photos, the bounded
    picker above 5 photos, 4 names a page."""
    workdir = tmp_path_factory.mktemp("app-large-work") / "work"
    shutil.copytree(ready_workdir, workdir)
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    monkeypatch.setattr(analysis, "MAP_POINTS", 6)
    monkeypatch.setattr(service, "PICKER_LIMIT", 5)
    monkeypatch.setattr(views, "PICKER_PAGE", 4)
    return tiny_dataset


def values(array: object) -> list:
    """A figure array as plotly writes it: a list, or typed bytes (``{"dtype", "bdata"}``)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), np.dtype(array["dtype"])).tolist()
    return list(array)


def query_caption(app: AppTest) -> str:
    [caption] = [caption for image in app.get("image") for caption in image.captions if caption.startswith("query:")]
    return caption


def map_points(app: AppTest) -> list[tuple[str, str, int]]:
    """(label, name, customdata row) of every gallery point on the Explore map."""
    [chart] = app.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    return [
        (trace["name"], name, int(row))
        for trace in figure["data"]
        if trace["name"] != "query"
        for name, row in zip(values(trace["text"]), values(trace["customdata"]), strict=True)
    ]


def test_explore_draws_a_sample_at_most_the_cap_and_the_bounded_picker_picks_the_query(large_app):
    app = run_app("pages/explore.py")
    [caption] = [c.value for c in app.caption if c.value.startswith("PCA of")]
    assert caption.startswith("PCA of a sample of 6 of 18 photos")
    points = map_points(app)
    assert len(points) == 6
    assert sorted(label for label, _, _ in points) == ["fish"] * 2 + ["landmarks"] * 2 + ["tools"] * 2  # stratified
    ws = service.workspace()
    for label, name, row in points:  # each point's customdata is its record row: name and label agree with it
        record = ws.dataset.record(row)
        assert (record.label, service.gallery_name(ws, record)) == (label, name) and name.startswith(f"{label}/")
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert [trace["name"] for trace in figure["data"]][-1] == "query"  # the query is placed on the sampled map

    # the gallery query: a label, a page of at most 4 names, a name
    assert app.selectbox(key="explore_pick_label").options == ["fish", "landmarks", "tools"]
    assert len(app.selectbox(key="explore_pick").options) <= 4
    app.selectbox(key="explore_pick_label").select("tools").run()
    assert not app.exception, app.exception
    options = app.selectbox(key="explore_pick").options
    assert len(options) <= 4 + 1 and "tools/gc_hammer1.jpg" in options  # this page, beside the current pick
    app.selectbox(key="explore_pick").select("tools/gc_hammer1.jpg").run()
    assert not app.exception, app.exception
    assert app.selectbox(key="explain_hit").options[0] == "1. tools · tools/gc_hammer1.jpg"  # finds itself first
    assert len(map_points(app)) == 6  # the cached map, not a new one


def test_search_with_the_bounded_picker_pages_a_label_and_clicks_to_search(large_app):
    app = run_app()
    assert app.selectbox(key="gallery_pick_label").options == ["fish", "landmarks", "tools"]
    assert any("18 photos in 3 labels" in c.value for c in app.caption)
    app.selectbox(key="gallery_pick_label").select("landmarks").run()
    app.number_input(key="gallery_pick_page").set_value(2).run()
    assert not app.exception, app.exception
    second_page = [name for name in app.selectbox(key="gallery_pick").options if name.startswith("landmarks/")]
    assert len(second_page) == 2  # 6 landmarks, 4 a page
    app.selectbox(key="gallery_pick").select(second_page[-1]).run()
    assert not app.exception, app.exception
    lines = [md.value for md in app.markdown if md.value.startswith("**") and "·" in md.value]
    assert lines[0].startswith("**1.** landmarks") and query_caption(app) == f"query: {second_page[-1]}"

    app.button(key="search_from_3").click().run()  # click-to-search: a name from any label and page
    assert not app.exception, app.exception
    picked = app.selectbox(key="gallery_pick").value
    assert picked != second_page[-1] and picked in app.selectbox(key="gallery_pick").options
    assert query_caption(app) == f"query: {picked}"
    app.switch_page("pages/explore.py").run()
    app.switch_page("pages/search.py").run()
    assert app.selectbox(key="gallery_pick").value == picked  # kept across pages, as a small gallery's pick is
