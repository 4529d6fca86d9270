"""Fusion of attribute rankers over a workspace (seed 001, part 2), in the library's workflow and in the app.

The tiny real set gets the demo's attributes by the demo's rules (setting, colour): each meaning of "similar" brings a
calibrated ranker, the sliders' weights fuse them, and moving a weight moves the results.
"""

import shutil

import numpy as np
import pytest

from core.attributes import ATTRIBUTES_FILE, DERIVED, derive_attributes, write_attributes
from core.errors import DatasetError
from core.fusion import ValueAgreementRanker
from core.images import load_image
from core.svm import SVMRanker
from tests.apptest import run_app as _run_app
from workbench import attribute_fusion
from workbench.workspace import WorkspaceSpec, configure, open_workspace


def write_derived_attributes(root, extra: dict[str, str] | None = None) -> None:
    """The demo's rules on every photo of ``root`` (and constant ``extra`` columns), as scripts/demo_attributes.py."""
    names = [*DERIVED, *(extra or {})]
    rows = []
    for path in sorted(root.glob("*/*.jpg")):
        values = derive_attributes(load_image(path)) | (extra or {})
        rows.append((path.relative_to(root).as_posix(), [values[name] for name in names]))
    write_attributes(root / ATTRIBUTES_FILE, names, rows)


@pytest.fixture
def attributed(tmp_path, tiny_dataset):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    write_derived_attributes(root)
    return root


def open_tiny(root, workdir):
    return open_workspace(WorkspaceSpec(config=configure(data={"root": root}), workdir=workdir, backend="torch"))


def test_each_meaning_brings_a_calibrated_ranker_fitted_once(attributed, tmp_path):
    ws = open_tiny(attributed, tmp_path / "work")
    assert attribute_fusion.fusion_conditions(ws.spec) == ["", "setting", "colour"]
    calls = []
    rankers = attribute_fusion.attribute_rankers(ws, lambda done, total, name: calls.append((done, total, name)))
    assert rankers.conditions == ("", "setting", "colour") and not rankers.failed
    assert isinstance(rankers.rankers[0], SVMRanker)
    assert all(isinstance(ranker, ValueAgreementRanker) for ranker in rankers.rankers[1:])
    assert calls == [(0, 3, "label folders"), (1, 3, "setting"), (2, 3, "colour"), (3, 3, "")]
    colour = attribute_fusion.agreement_path(attribute_fusion.condition_workspace(ws, "colour"))
    assert "by-colour-" in str(colour) and colour.is_file()  # in the colour condition's own workdir
    fitted_at = colour.stat().st_mtime_ns

    calls.clear()  # opened again: everything is current, nothing is fitted
    again = attribute_fusion.attribute_rankers(open_tiny(attributed, tmp_path / "work"), lambda *a: calls.append(a))
    assert calls == [(0, 0, "")] and colour.stat().st_mtime_ns == fitted_at
    assert again.rankers[2].values == rankers.rankers[2].values

    text = (attributed / ATTRIBUTES_FILE).read_text().replace(",plain,", ",scene,", 1)  # one photo relabelled
    (attributed / ATTRIBUTES_FILE).write_text(text)
    calls.clear()
    attribute_fusion.attribute_rankers(open_tiny(attributed, tmp_path / "work"), lambda *a: calls.append(a))
    assert [name for *_, name in calls] == ["setting", "colour", ""]  # the attributes' data changed, not the labels'
    assert colour.stat().st_mtime_ns != fitted_at


def test_weights_move_the_fused_ranking_and_it_evaluates_like_any_ranker(attributed, tmp_path):
    ws = open_tiny(attributed, tmp_path / "work")
    rankers = attribute_fusion.attribute_rankers(ws)
    query = ws.embeddings[:1]
    labels_only = attribute_fusion.fused_search(ws, query, rankers.fused({"": 1.0}), len(ws.embeddings))
    svm_scores = rankers.rankers[0].probability(rankers.rankers[0].score(query, ws.embeddings))[0]
    np.testing.assert_allclose([hit.score for hit in labels_only], np.sort(svm_scores)[::-1], rtol=1e-5)
    by_setting = attribute_fusion.fused_search(ws, query, rankers.fused({"": 0.2, "setting": 1.0}), len(ws.embeddings))
    assert [hit.record.path for hit in by_setting] != [hit.record.path for hit in labels_only]
    with pytest.raises(attribute_fusion.WorkbenchError, match="one above 0"):
        rankers.fused({"": 0.0, "colour": 0.0})

    model = rankers.fused({"": 1.0, "colour": 0.5})
    evaluation = attribute_fusion.evaluate_fused(ws, model)
    [svm] = ws.evaluate(["svm"])
    assert evaluation.ranker == "fusion" and evaluation.n_queries == svm.n_queries
    retrieval = attribute_fusion.retrieve_fused(ws, model)
    assert retrieval.ranker == "fusion" and 0.0 <= retrieval.metrics["recall@1"] <= 1.0


def test_an_attribute_that_cannot_be_learned_is_left_out_and_a_bad_file_is_named(attributed, tmp_path):
    write_derived_attributes(attributed, {"studio": "same"})  # one value: nothing to tell apart
    ws = open_tiny(attributed, tmp_path / "work")
    rankers = attribute_fusion.attribute_rankers(ws)
    assert rankers.conditions == ("", "setting", "colour")
    [(condition, reason)] = rankers.failed
    assert condition == "studio" and "at least 2 labels" in reason

    with open(attributed / ATTRIBUTES_FILE, "a") as handle:
        handle.write("fish/gc_fish1.jpg,scene\n")  # a short row, last line of the file
    n_lines = len((attributed / ATTRIBUTES_FILE).read_text().splitlines())
    with pytest.raises(DatasetError, match=rf"attributes.csv:{n_lines}: 2 fields where the header has 4"):
        attribute_fusion.attribute_rankers(ws)


# --- the app ---------------------------------------------------------------------------------------------------


@pytest.fixture
def app_on_attributes(monkeypatch, attributed, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA", str(attributed))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(tmp_path / "app-work"))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    return attributed


def fused_lines(app) -> list[str]:
    """The fused results' lines ("**1.** fish · `0.812`"), in rank order: the 12 after the ranker's own 12."""
    return [md.value for md in app.markdown if md.value.startswith("**") and "·" in md.value][-12:]


def test_moving_a_fusion_slider_changes_the_order_of_the_results(app_on_attributes):
    app = run_app()
    assert app.selectbox(key="condition").options == ["label folders", "setting", "colour"]
    app.toggle(key="fusion_on").set_value(True).run()
    assert not app.exception, app.exception
    sliders = {slider.label: slider for slider in app.slider if slider.key.startswith("fusion_weight:")}
    assert set(sliders) == {"same label folders", "same setting", "same colour"}
    assert [sliders[name].value for name in sliders] == [1.0, 0.0, 0.0]
    caption = next(c.value for c in app.caption if c.value.startswith("fusion ranker"))
    assert "score = 1.00 x P(same label folders)" in caption
    before = fused_lines(app)
    assert len(before) == 12

    app.slider(key="fusion_weight:setting").set_value(1.0).run()
    assert not app.exception, app.exception
    after = fused_lines(app)
    caption = next(c.value for c in app.caption if c.value.startswith("fusion ranker"))
    assert "0.50 x P(same label folders) + 0.50 x P(same setting)" in caption
    assert len(after) == 12 and after != before  # the slider moved the results
    # each fused result says its attributes, so the move can be seen for what it is
    assert any(c.value in ("plain · blue", "scene · blue", "scene · neutral", "plain · red") for c in app.caption)


def test_compare_adds_the_fused_ranker_with_the_search_pages_weights(app_on_attributes):
    app = run_app()
    app.toggle(key="fusion_on").set_value(True).run()
    app.slider(key="fusion_weight:colour").set_value(0.5).run()
    app.switch_page("pages/compare.py")
    app.run()
    assert not app.exception, app.exception
    comparative, full = (frame.value for frame in app.dataframe[:2])
    assert "fusion" not in list(comparative["ranker"]) and "fusion" not in list(full["ranker"])
    app.toggle(key="compare_fusion").set_value(True).run()
    assert not app.exception, app.exception
    comparative, full = (frame.value for frame in app.dataframe[:2])  # comparative sets, full gallery
    assert list(comparative["ranker"])[-1] == "fusion" and list(full["ranker"])[-1] == "fusion"
    assert len(comparative) == len(full) and full["queries"].iloc[-1] == full["queries"].iloc[0]
    assert any("fusion = 0.67 x P(same label folders) + 0.33 x P(same colour)" in c.value for c in app.caption)


def test_the_sidebar_condition_switches_what_similar_means(app_on_attributes):
    app = run_app()
    app.selectbox(key="condition").select("setting").run()
    assert not app.exception, app.exception
    lines = [md.value for md in app.markdown if md.value.startswith("**1.**")]
    assert lines and lines[0].split("·")[0].strip().endswith(("plain", "scene"))  # results carry setting labels


def test_cli_search_fuses_the_meanings_given_and_refuses_unknown_ones(attributed, tmp_path, capsys, caplog):
    from workbench.cli import main

    common = ["--data", str(attributed), "--workdir", str(tmp_path / "work"), "--backend", "torch", "--quiet"]
    query = str(attributed / "fish/gc_fish2.jpg")
    assert main(["search", query, "-k", "18", "--fuse", "label=1", *common]) == 0
    by_label = capsys.readouterr().out.strip().splitlines()[1:]
    assert main(["search", query, "-k", "18", "--fuse", "label=0", "--fuse", "setting=1", *common]) == 0
    by_setting = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(by_label) == len(by_setting) == 18 and by_label != by_setting  # the weights move the ranking
    assert main(["search", query, "--fuse", "sleeve=1", *common]) == 2
    assert "no meaning 'sleeve' to fuse here; choose from label, setting, colour" in caplog.text
    assert main(["search", query, "--fuse", "setting", *common]) == 2
    assert "expected MEANING=WEIGHT" in caplog.text


def run_app(page=None):
    return _run_app(page, timeout=240)  # fitting the attribute rankers takes longer
