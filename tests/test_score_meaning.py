"""Scores with meaning and the in-sample warning (issue 21, parts 3 and 5), through every door.

* What a score means has one home, the ranker registry (``RankerSpec.score_meaning``); the CLI's ``--ranker``
  help, the REST API's OpenAPI text and search answer, and the app's Search page all show that line.
* The Explain heatmaps say what they explain: the cosine similarity, which is the look part of a learned ranker's
  score.
* Train-split figures of learned rankers carry the in-sample warning: the CLI's evaluate line, the report JSON,
  the Evaluation and Compare pages.
"""

import json
import re
import shutil

import pytest

from core.rankers import CosineRanker, RankerSpec, list_rankers, ranker_spec, register_ranker
from tests.apptest import run_app
from workbench.cli import main
from workbench.workflows import in_sample_rankers, in_sample_warning


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_registered_ranker_says_what_its_score_means():
    meanings = {name: ranker_spec(name).score_meaning for name in list_rankers()}
    assert all(len(meaning) > 20 for meaning in meanings.values()), meanings
    assert "-1..1" in meanings["cosine"] and "0 = identical" in meanings["l2"] and "noise" in meanings["random"]
    assert "P(same label)" in meanings["svm"] and "unbounded" in meanings["svm"]
    assert "look weight" in meanings["projection"] and "label agreement" in meanings["projection"]
    with pytest.raises(ValueError, match="'mute': say what its score means"):
        register_ranker(RankerSpec("mute", "no meaning", lambda rng: CosineRanker()))
    assert "mute" not in list_rankers()


@pytest.mark.parametrize("command", [["search"], ["evaluate"], ["index", "search"]])
def test_cli_ranker_help_lists_each_ranker_with_its_score_line(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    ranker_help = text[text.index("--ranker ") :]
    for name in list_rankers():
        # each ranker starts a line of the help, followed by its meaning (wrapped lines joined)
        assert re.search(rf"^\s+{name}: ", ranker_help, re.MULTILINE), name
        assert f"{name}: {ranker_spec(name).score_meaning}" in flat(ranker_help), name


def test_openapi_and_the_search_answer_say_what_scores_mean(tmp_path, tiny_dataset):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    settings = ServeSettings(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path / "work"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        schema = client.get("/openapi.json").json()
        photo = (tiny_dataset / "fish" / "gc_fish1.jpg").read_bytes()
        answers = {
            ranker: client.post(
                "/search", files={"file": ("q.jpg", photo, "image/jpeg")}, data={"k": 2, "ranker": ranker}
            ).json()
            for ranker in ("cosine", "l2")
        }
    [body] = [s for name, s in schema["components"]["schemas"].items() if name.startswith("Body_search")]
    description = body["properties"]["ranker"]["description"]
    for name in list_rankers():
        assert f"- `{name}`: {ranker_spec(name).score_meaning}" in description
    response = schema["components"]["schemas"]["SearchResponse"]["properties"]
    assert "score_meaning" in response and "what the ranker's scores are" in response["score_meaning"]["description"]
    for ranker, answer in answers.items():
        assert answer["score_meaning"] == ranker_spec(ranker).score_meaning
    assert answers["l2"]["hits"][0]["score"] == pytest.approx(0.0, abs=1e-3)  # "0 = identical", as it says


def test_in_sample_rankers_and_warning_by_hand():
    assert in_sample_rankers(["cosine", "svm", "projection", "random"], "train") == ["svm", "projection"]
    assert in_sample_rankers(["cosine", "svm", "projection"], "test") == []
    assert in_sample_warning(["cosine", "l2"], "train") is None and in_sample_warning(["svm"], "test") is None
    assert in_sample_warning(["svm"], "train") == (
        "In-sample: svm was fitted on the train split, so its train-split figures rank images and labels already "
        "learned and overstate how new photos are ranked; judge learned rankers on the test split."
    )
    assert in_sample_warning(["svm", "projection"], "train").startswith("In-sample: svm, projection were fitted")
    with pytest.raises(ValueError, match="unknown ranker 'nope'"):
        in_sample_warning(["nope"], "train")


@pytest.fixture(scope="module")
def fitted_workdir(tmp_path_factory, tiny_dataset):
    """The tiny set featurized, with svm and projection fitted (as `make run` leaves a workdir)."""
    workdir = tmp_path_factory.mktemp("score-meaning") / "work"
    assert main(["fit", "--data", str(tiny_dataset), "--workdir", str(workdir), "--quiet", "--ranker", "all"]) == 0
    return workdir


def test_cli_evaluate_warns_on_the_train_split_and_the_report_says_so(fitted_workdir, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(fitted_workdir), "--quiet"]

    def evaluate(split, *rankers):
        capsys.readouterr()
        assert main(["evaluate", *common, "--split", split, "--ranker", *rankers]) == 0
        out = capsys.readouterr().out
        [report] = fitted_workdir.rglob("reports/*.json")  # one featurizer: one report, rewritten
        return out.splitlines(), json.loads(report.read_text())

    lines, report = evaluate("train", "cosine", "svm", "projection")
    assert lines[1].startswith("In-sample: svm, projection were fitted on the train split")
    assert report["in_sample"] == ["svm", "projection"] and report["in_sample_warning"] == lines[1]
    lines, report = evaluate("test", "cosine", "svm", "projection")
    assert not any("In-sample" in line for line in lines)
    assert report["in_sample"] == [] and report["in_sample_warning"] is None
    lines, report = evaluate("train", "cosine", "l2")  # plain rankers learn nothing: nothing is in-sample
    assert not any("In-sample" in line for line in lines) and report["in_sample"] == []


# --- the app -------------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(monkeypatch, tmp_path, fitted_workdir, tiny_dataset):
    pytest.importorskip("streamlit")
    workdir = tmp_path / "work"
    shutil.copytree(fitted_workdir, workdir)
    monkeypatch.setenv("WORKBENCH_DATA", str(tiny_dataset))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    return workdir


def test_search_page_says_what_scores_mean_and_what_the_heatmap_explains(app_env):
    from workbench import service

    app = run_app()
    menu = app.selectbox(key="ranker")
    for name in menu.options:
        assert f"**{name}**: {ranker_spec(name).score_meaning}" in menu.help
    assert f"Score: {ranker_spec('cosine').score_meaning}." in [c.value for c in app.caption]
    app.toggle(key="explain").set_value(True).run()
    [explained] = [c.value for c in app.caption if "heatmaps explain" in c.value]
    assert explained.startswith("The heatmaps explain the cosine similarity ")
    assert "the cosine score of this result is " in explained

    menu.select("projection").run()  # a blend: the heatmaps explain its look part, with the weights
    assert not app.exception
    assert f"Score: {ranker_spec('projection').score_meaning}." in [c.value for c in app.caption]
    [explained] = [c.value for c in app.caption if "heatmaps explain" in c.value]
    weight = service.workspace().ranker("projection").look_weight
    assert explained.startswith(f"The heatmaps explain the look part of this score, weighted {weight:.2f}: ")
    assert f"the label part, weighted {1 - weight:.2f}, has no regions to show" in explained
    assert "the projection score of this result is " in explained
    [note] = [c.value for c in app.caption if c.value.startswith("score = ")]
    assert f"+ {weight:.2f} x look (cosine of the raw embeddings)" in note
    app.slider(key="look_weight").set_value(0.3).run()  # this search's weight, not the fitted one
    [explained] = [c.value for c in app.caption if "heatmaps explain" in c.value]
    assert explained.startswith("The heatmaps explain the look part of this score, weighted 0.30: ")
    assert "the label part, weighted 0.70, has no regions to show" in explained
    [note] = [c.value for c in app.caption if c.value.startswith("score = ")]
    assert note.startswith("score = 0.70 x label agreement (") and "+ 0.30 x look" in note

    menu.select("svm").run()
    assert not app.exception
    assert f"Score: {ranker_spec('svm').score_meaning}." in [c.value for c in app.caption]
    [explained] = [c.value for c in app.caption if "heatmaps explain" in c.value]
    assert "the svm score of this result is " in explained


def test_evaluation_and_compare_pages_warn_on_in_sample_figures(app_env):
    evaluation = run_app("pages/evaluation.py")
    assert not evaluation.warning  # test split, cosine
    evaluation.sidebar.selectbox(key="eval_ranker").select("svm").run()
    assert not evaluation.warning  # test split: out of sample
    evaluation.sidebar.radio(key="split").set_value("train").run()
    assert [w.value for w in evaluation.warning] == [in_sample_warning(["svm"], "train")]
    evaluation.sidebar.selectbox(key="eval_ranker").select("cosine").run()
    assert not evaluation.warning  # a plain ranker learned nothing

    compare = run_app("pages/compare.py")
    assert not compare.warning
    compare.sidebar.radio(key="compare_split").set_value("train").run()
    assert not compare.exception
    assert [w.value for w in compare.warning] == [in_sample_warning(["svm", "projection"], "train")]
