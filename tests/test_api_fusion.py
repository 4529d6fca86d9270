"""Fused search over the REST service (``POST /search`` with ``fuse``), on the tiny real set with the demo's attribute
rules and a constant column no ranker can learn.

The service never fits a ranker on a request: before ``fit --fusion`` a fused search is refused; after it, the
service answers what :func:`workbench.attribute_fusion.fused_search` answers for the same query and weights.
Skipped when the serve requirements (requirements-serve.txt) are not installed.
"""

import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from tests.test_api import assert_error, upload
from tests.test_attribute_fusion import write_derived_attributes
from workbench import attribute_fusion
from workbench.api import ServeSettings, create_app
from workbench.workspace import WorkspaceSpec, configure, open_workspace

QUERY = "fish/gc_fish2.jpg"
#: Scores are float32 probabilities computed by the same code on the same embedding: only rounding may differ.
SCORE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("fusion-data") / "data"
    shutil.copytree(tiny_dataset, root)
    write_derived_attributes(root, {"studio": "same"})  # setting, colour, and one value only: nothing to learn
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory, attributed) -> ServeSettings:
    spec = WorkspaceSpec(configure(data={"root": attributed}), tmp_path_factory.mktemp("fusion-work"), backend="torch")
    return ServeSettings(spec, refusal_burst=100_000)  # refused requests on purpose, all from one test client


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def fused(client: TestClient, attributed, *weights: str, **fields: str):
    data = {"fuse": list(weights), **fields}
    return client.post("/search", files=upload((attributed / QUERY).read_bytes()), data=data)


@pytest.fixture(scope="module")
def fitted(client, settings, attributed):
    """The fusion's rankers fitted by the CLI (`fit --fusion`), after the refusal a request gets before."""
    from workbench.cli import main

    refused = fused(client, attributed, "label=1", "setting=1")
    message = assert_error(refused, 422, "ranker_unavailable")["message"]
    assert message == (
        "fuse: the label folders, setting rankers are not fitted for this featurizer and data; "
        "run `python -m workbench fit --fusion`"
    )
    ws = open_workspace(settings.workspace)
    setting = attribute_fusion.agreement_path(attribute_fusion.condition_workspace(ws, "setting"))
    assert not setting.exists() and not ws.ranker_path("svm").exists()  # the request fitted nothing
    not_an_image = client.post("/search", files=upload(b"plain text\n" * 50), data={"fuse": ["setting=1"]})
    assert_error(not_an_image, 422, "ranker_unavailable")  # refused before the upload is even read as an image

    workdir = str(settings.workspace.workdir)
    assert (
        main(["fit", "--fusion", "--data", str(attributed), "--workdir", workdir, "--backend", "torch", "--quiet"]) == 0
    )
    assert setting.is_file() and ws.ranker_path("svm").is_file()
    return open_workspace(settings.workspace)


def test_a_fused_search_answers_what_the_library_answers(client, fitted, attributed):
    query = np.asarray([client.post("/embed", files=upload((attributed / QUERY).read_bytes())).json()["embedding"]])
    response = fused(client, attributed, "label=0.3", "setting=1", "colour=0.5", k="18")
    assert response.status_code == 200, response.text
    body = response.json()

    rankers = attribute_fusion.attribute_rankers(fitted)  # the CLI's path: nothing left to fit
    assert not rankers.unfitted and rankers.conditions == ("", "setting", "colour")
    model = attribute_fusion.fusion_model(rankers, {"": 0.3, "setting": 1.0, "colour": 0.5})
    expected = attribute_fusion.fused_search(fitted, query.astype(np.float32), model, 18)
    assert [hit["path"] for hit in body["hits"]] == [fitted.relative_path(hit.record) for hit in expected]
    served = np.array([hit["score"] for hit in body["hits"]])
    assert np.abs(served - [hit.score for hit in expected]).max() <= SCORE_TOLERANCE
    assert [hit["rank"] for hit in body["hits"]] == list(range(1, 19)) and len(expected) == 18

    assert body["ranker"] == "fusion"
    assert body["score_meaning"] == (
        "(0.3 x P(same label folders) + 1 x P(same setting) + 0.5 x P(same colour)) / sum of weights: "
        'the fused probability of "same", 0..1; higher = more alike'
    )
    assert body["fusion_weights"] == pytest.approx({"label": 0.3 / 1.8, "setting": 1 / 1.8, "colour": 0.5 / 1.8})
    assert all(0.0 <= score <= 1.0 for score in served) and list(served) == sorted(served, reverse=True)
    assert all(hit["agreement"] is None and hit["probability"] is None for hit in body["hits"])


def test_the_weights_change_the_order(client, fitted, attributed):
    by_label = fused(client, attributed, "label=1", k="18").json()["hits"]
    by_setting = fused(client, attributed, "label=0", "setting=1", k="18").json()["hits"]
    assert len(by_label) == len(by_setting) == 18
    assert [hit["path"] for hit in by_label] != [hit["path"] for hit in by_setting]
    plain = client.post("/search", files=upload((attributed / QUERY).read_bytes()), data={"k": "18"}).json()
    assert plain["ranker"] == "cosine" and plain["fusion_weights"] is None  # no fuse: the ranker as before


@pytest.mark.parametrize(
    ("weights", "fields", "code", "message"),
    [
        (
            ["sleeve=1"],
            {},
            "invalid_request",
            "fuse: no meaning 'sleeve' to fuse here; choose from label, setting, colour",
        ),
        (["setting"], {}, "invalid_request", "fuse setting: expected MEANING=WEIGHT, e.g. setting=1"),
        (["setting=much"], {}, "invalid_request", "fuse setting=much: expected MEANING=WEIGHT, e.g. setting=1"),
        (["setting=inf"], {}, "invalid_request", "fuse setting=inf: expected MEANING=WEIGHT, e.g. setting=1"),
        (["=1"], {}, "invalid_request", "fuse =1: expected MEANING=WEIGHT, e.g. setting=1"),
        (["label=1", "label=2"], {}, "invalid_request", "fuse label=2: label is weighted twice"),
        (
            ["label=-1", "setting=2"],
            {},
            "invalid_request",
            "fusion weights must be non-negative with one above 0, got label folders -1, setting 2, colour 0, studio 0",
        ),
        (
            ["label=0", "colour=0"],
            {},
            "invalid_request",
            "fusion weights must be non-negative with one above 0, got label folders 0, setting 0, colour 0, studio 0",
        ),
        (
            ["setting=1"],
            {"ranker": "l2"},
            "invalid_request",
            "fuse ranks by the fused meanings; leave out ranker and look_weight",
        ),
        (
            ["setting=1"],
            {"look_weight": "0.5"},
            "invalid_request",
            "fuse ranks by the fused meanings; leave out ranker and look_weight",
        ),
        (["label=1", "studio=1"], {}, "fusion_unavailable", "fuse: no studio ranker to fuse: "),
    ],
    ids=[
        "unknown",
        "no-weight",
        "not-a-number",
        "infinite",
        "no-meaning",
        "twice",
        "negative",
        "all-zero",
        "with-ranker",
        "with-look-weight",
        "cannot-be-fitted",
    ],
)
def test_bad_fusion_input_gets_a_422_naming_the_problem(client, fitted, attributed, weights, fields, code, message):
    error = assert_error(fused(client, attributed, *weights, **fields), 422, code)
    assert error["message"].startswith(message), error["message"]
    assert "\n" not in error["message"]


def test_the_cli_and_the_service_parse_fuse_the_same_way(client, fitted, attributed, caplog):
    from workbench.cli import main

    common = ["--data", str(attributed), "--workdir", str(fitted.spec.workdir), "--backend", "torch", "--quiet"]
    for bad in ("setting", "label=-1", "sleeve=1"):
        caplog.clear()
        assert main(["search", str(attributed / QUERY), "--fuse", bad, *common]) == 2
        served = assert_error(fused(client, attributed, bad), 422, "invalid_request")["message"]
        printed = "--" + served if served.startswith("fuse") else served  # the option's name: --fuse, fuse
        assert printed in caplog.text, (printed, caplog.text)


def test_an_unusable_attributes_file_is_a_422_without_the_servers_paths(client, fitted, attributed):
    path = attributed / "attributes.csv"
    kept = path.read_text()
    try:
        path.write_text(kept + "fish/gc_fish1.jpg,scene\n")  # a short row
        error = assert_error(fused(client, attributed, "label=1"), 422, "fusion_unavailable")
        assert (
            error["message"]
            == "fuse: this dataset's attributes.csv is unusable; the server log names the file and the row"
        )
    finally:
        path.write_text(kept)
    assert fused(client, attributed, "label=1").status_code == 200
