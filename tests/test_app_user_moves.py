"""Issue 22's app moves, headless through AppTest on the tiny real set: pretrained vs fine-tuned side by side on
Compare, the ONNX download, the one-epoch training chart and the upload kept across page switches."""

import shutil

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from tests.apptest import run_app
from workbench import service

RUN = "small"


@pytest.fixture(scope="module")
def ready_workdir(tmp_path_factory, tiny_dataset):
    """The tiny set featurized with the quick learned rankers fitted, and a second featurizer: run ``small``, the
    pretrained body kept (0 epochs, which the app refuses but the library allows) at a 128-pixel input, so its
    embeddings, and so its metrics, differ from the pretrained model's at no training cost."""
    from core.config import TrainConfig
    from core.train import fine_tune
    from workbench.workflows import READY_RANKERS, ensure_learned
    from workbench.workspace import open_workspace, spec_from_environment

    template = tmp_path_factory.mktemp("app-side-by-side")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(tiny_dataset))
        patch.setenv("WORKBENCH_WORKDIR", str(template))
        ws = open_workspace(spec_from_environment())
        ensure_learned(ws, READY_RANKERS)
        fine_tune(ws.dataset.records, ws.prepared.split, TrainConfig(epochs=0, input_size=128), ws.layout.run(RUN))
    return template


@pytest.fixture
def app_env(monkeypatch, tmp_path_factory, tiny_dataset, ready_workdir):
    workdir = tmp_path_factory.mktemp("app-side-by-side-work") / "work"
    shutil.copytree(ready_workdir, workdir)
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    return workdir


def side_by_side_table(app: AppTest):
    [table] = [frame.value for frame in app.dataframe if "featurizer" in frame.value.columns]
    return table


def test_compare_sets_a_fine_tuned_run_beside_the_pretrained_model_on_the_same_queries(app_env):
    app = run_app("pages/compare.py")
    beside = app.selectbox(key="compare_with")
    assert beside.options == [RUN] and beside.value == RUN  # the fine-tuned run, as soon as one exists
    table = side_by_side_table(app)
    assert list(table.columns) == ["ranker", "featurizer", "top-1", "mean rank", "recall@1", "MAP@R"]
    rankers = list(dict.fromkeys(table["ranker"]))
    assert {"cosine", "l2", "svm", "projection"} <= set(rankers)  # the run's learned rankers were fitted too
    for ranker in rankers:  # the two featurizers of a ranker next to each other
        assert list(table[table["ranker"] == ranker]["featurizer"]) == ["pretrained", RUN]
    assert all("[" in cell for cell in table["MAP@R"])  # each figure with its interval
    cosine = table[table["ranker"] == "cosine"].set_index("featurizer")
    assert cosine["MAP@R"]["pretrained"] != cosine["MAP@R"][RUN]  # two featurizers, two sets of figures
    [caption] = [c.value for c in app.caption if c.value.startswith("The same ")]
    n_test = len(service.workspace().prepared.split.test)
    assert f"The same {n_test} test queries for both featurizers" in caption
    chart = app.get("plotly_chart")[-1].proto.spec
    assert '"name":"pretrained"' in chart and f'"name":"{RUN}"' in chart

    app.sidebar.selectbox(key="featurizer").select(RUN).run()  # the run in the sidebar: the pretrained beside it
    assert not app.exception, app.exception
    assert app.selectbox(key="compare_with").options == ["pretrained"]
    table = side_by_side_table(app)
    assert list(table[table["ranker"] == "cosine"]["featurizer"]) == [RUN, "pretrained"]


def test_a_one_epoch_run_is_drawn_as_labelled_bars_not_two_lone_dots(app_env):
    import json

    from core.artifacts import SCHEMA_VERSION
    from workbench.workspace import spec_from_environment

    run = spec_from_environment().layout.run("one")
    run.mkdir(parents=True)
    epoch = {"epoch": 1, "train_loss": 1.05, "train_accuracy": 0.5, "test_loss": 0.9, "test_accuracy": 0.667}
    manifest = {"schema_version": SCHEMA_VERSION, "status": "complete", "history": [{**epoch, "seconds": 4.0}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    app = run_app("pages/training.py")
    [chart] = [chart.proto.spec for chart in app.get("plotly_chart")]  # under "Finished runs", run "one"
    figure = json.loads(chart)
    assert [trace["type"] for trace in figure["data"]] == ["bar"] * 4
    assert [trace["text"] for trace in figure["data"]] == [["1.050"], ["50.0%"], ["0.900"], ["66.7%"]]
    assert "the only one" in figure["layout"]["xaxis"]["title"]["text"]


def query_caption(app: AppTest) -> str:
    [caption] = [caption for image in app.get("image") for caption in image.captions if caption.startswith("query:")]
    return caption


def test_the_last_upload_stays_the_query_across_page_switches_until_cleared(app_env, tiny_dataset):
    app = run_app()
    photo = (tiny_dataset / "tools" / "gc_hammer1.jpg").read_bytes()
    app.get("file_uploader")[0].upload("my_hammer.jpg", photo, "image/jpeg").run()
    assert not app.exception, app.exception
    assert "query: my_hammer.jpg" in query_caption(app)
    uploaded = [md.value for md in app.markdown if md.value.startswith("**")]
    assert uploaded[0].startswith("**1.** tools")

    app.switch_page("pages/evaluation.py").run()
    app.switch_page("pages/search.py").run()  # Streamlit has dropped the uploader's file by now
    assert not app.exception, app.exception
    assert "query: my_hammer.jpg" in query_caption(app)
    assert [md.value for md in app.markdown if md.value.startswith("**")] == uploaded
    assert app.selectbox(key="gallery_pick").disabled
    clear = app.button(key="clear_upload")
    assert "my_hammer.jpg" in clear.label

    clear.click().run()  # back to the gallery pick
    assert not app.exception, app.exception
    assert "query: fish/gc_fish1.jpg" in query_caption(app) and not app.selectbox(key="gallery_pick").disabled
    app.switch_page("pages/explore.py").run()
    app.switch_page("pages/search.py").run()
    assert "query: fish/gc_fish1.jpg" in query_caption(app)  # a cleared upload does not come back


def test_the_onnx_model_is_exported_on_demand_and_offered_with_or_without_the_projection(
    app_env, monkeypatch, tmp_path, tiny_dataset
):
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from core.preprocessing import resize_crop
    from export.onnx_featurizer import OnnxFeaturizer

    monkeypatch.setenv("WORKBENCH_BACKEND", "torch")  # so no export exists yet: the app must not make one unasked
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    app = run_app("pages/evaluation.py")
    ws = service.workspace()

    def model_buttons():
        return [
            b.proto.label for b in app.get("download_button") if b.proto.label.startswith(f"Download {ws.fingerprint}")
        ]

    assert list((tmp_path / "cache").rglob("*.onnx")) == list(app_env.rglob("*.onnx")) == []  # nothing at page load
    assert model_buttons() == [] and app.button(key="onnx_export")
    assert app.radio(key="onnx_kind").options == [service.ONNX_PLAIN, service.ONNX_PROJECTION]

    app.button(key="onnx_export").click().run()
    assert not app.exception, app.exception
    [plain] = model_buttons()
    assert plain.startswith(f"Download {ws.fingerprint}.onnx (") and plain.endswith(" MB)")

    app.radio(key="onnx_kind").set_value(service.ONNX_PROJECTION).run()
    assert model_buttons() == []  # the plain model is no help here: bake on demand
    app.button(key="onnx_export").click().run()
    assert not app.exception, app.exception
    [baked] = model_buttons()
    assert baked.startswith(f"Download {ws.fingerprint}-projection.onnx (")
    app.run()  # kept: offered again without another export
    assert not app.exception and "onnx_export" not in [b.key for b in app.button]

    model = service.ready_onnx(ws, with_projection=True)  # what the button serves: the projection's vectors
    photos = [Image.open(path).convert("RGB") for path in sorted(tiny_dataset.glob("*/*.jpg"))[:3]]
    plain_model = OnnxFeaturizer(service.ready_onnx(ws).path)
    pixels = np.stack([resize_crop(photo, plain_model.preprocessing) for photo in photos])
    session = ort.InferenceSession(model.read(), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"pixels": pixels})[0]
    np.testing.assert_allclose(got, ws.ranker("projection").transform(plain_model.embed(photos)), atol=1e-5)


def test_the_per_category_table_has_a_row_of_its_own(app_env):
    """Beside the bar chart (a 2:3 column) the table scrolled, its last column cut, on a 1280-pixel screen (the
    browser test measures it); on a row of its own it fits."""
    app = run_app("pages/evaluation.py")
    frames = [child for child in app.main.children.values() if getattr(child, "type", "") == "dataframe"]
    assert any(list(frame.value.columns)[-1] == "top-5" for frame in frames)
