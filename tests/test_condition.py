"""Conditional similarity: an attribute column, not the folder, defines which images are "similar"."""

import shutil

import pytest

from core.config import DataConfig
from core.data import apply_condition, scan_folder
from core.errors import DatasetError
from core.pipeline import prepare
from workbench.cli import main


@pytest.fixture
def attributed(tmp_path, tiny_dataset):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    rows = ["path,habitat,shape"]
    for path in sorted(root.glob("*/*.jpg")):
        habitat = {"fish": "water", "tools": "workshop", "landmarks": "city"}[path.parent.name]
        shape = "tall" if path.stem in ("gc_eiffel_tower", "gc_burj", "gc_plier2") else "wide"
        if path.name != "gc_fish6.jpg":  # one image without attributes
            rows.append(f"{path.relative_to(root)},{habitat},{shape}")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_condition_relabels_records_and_reports_missing_ones(attributed):
    report = apply_condition(scan_folder(attributed), "shape")
    assert report.dataset.label_counts() == {"tall": 3, "wide": 14}
    assert any("gc_fish6.jpg: no 'shape' value" in item.reason for item in report.skipped)
    assert report.dhashes.shape[0] == 17
    by_name = {r.path.name: r.label for r in report.dataset.records}
    assert by_name["gc_burj.jpg"] == "tall" and by_name["gc_colosseum.jpg"] == "wide"


def test_prepare_follows_the_condition(attributed):
    prepared = prepare(DataConfig(root=attributed, condition="habitat", n_negatives=5))
    assert set(prepared.dataset.labels) == {"water", "workshop", "city"}
    labels = prepared.dataset.label_array
    for query, refs in zip(prepared.test_sets.queries, prepared.test_sets.references, strict=True):
        assert labels[refs[0]] == labels[query] and all(labels[n] != labels[query] for n in refs[1:])


def test_bad_conditions_are_named(attributed, tmp_path):
    with pytest.raises(DatasetError, match="no attribute 'colour'; choose one of habitat, shape"):
        apply_condition(scan_folder(attributed), "colour")
    with pytest.raises(DatasetError, match="attributes file not found"):
        apply_condition(scan_folder(attributed), "shape", tmp_path / "none.csv")
    broken = tmp_path / "broken.csv"
    broken.write_text("file,shape\nx.jpg,tall\n")
    with pytest.raises(DatasetError, match="broken.csv: needs a 'path' column"):
        apply_condition(scan_folder(attributed), "shape", broken)


def test_cli_evaluates_under_a_condition(attributed, tmp_path, capsys):
    common = ["--data", str(attributed), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(["prepare", *common, "--condition", "habitat"]) == 0
    assert "city=6, water=5, workshop=6" in capsys.readouterr().out
    assert main(["evaluate", *common, "--condition", "habitat", "--ranker", "cosine"]) == 0
    assert "\ncosine " in capsys.readouterr().out
    assert main(["prepare", *common, "--condition", "colour"]) == 2


def test_learned_rankers_belong_to_their_condition(attributed, tmp_path, caplog):
    common = ["--data", str(attributed), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(["fit", *common, "--condition", "habitat", "--ranker", "svm", "--rounds", "0"]) == 0
    assert main(["evaluate", *common, "--condition", "habitat", "--ranker", "svm"]) == 0
    caplog.clear()
    # same featurizer, another meaning of "similar": the habitat SVM must not serve it
    assert main(["evaluate", *common, "--condition", "shape", "--ranker", "svm"]) == 2
    assert "ranker 'svm' is not fitted" in caplog.text
    assert main(["evaluate", *common, "--ranker", "svm"]) == 2  # nor the label folders


def test_app_switches_the_condition_for_this_session_only(monkeypatch, attributed, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_DATA", str(attributed))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(tmp_path / "app-work"))
    app = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    app.run()
    app.switch_page("pages/dataset.py")
    app.run()
    assert app.selectbox(key="condition").options == ["label folders", "habitat", "shape"]
    app.selectbox(key="condition").select("shape").run()
    assert not app.exception
    values = {m.label: m.value for m in app.metric}
    assert values["labels"] == "2" and values["images"] == "17"
    other = AppTest.from_file("../streamlit_app.py", default_timeout=180)  # another visitor
    other.run()
    other.switch_page("pages/dataset.py")
    other.run()
    assert other.selectbox(key="condition").value == "label folders"
    assert {m.label: m.value for m in other.metric}["labels"] == "3"
