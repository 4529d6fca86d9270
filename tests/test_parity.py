"""Three doors, one house: the CLI, the REST API and the app's service open the same workspace.

The same query through each front end gives the same ids and scores for every ranker of the registry, on
PyTorch and on onnxruntime, and one TOML file configures all three (its dataset folder is the tiny set,
not the bundled demo, so a front end that ignored it would search another gallery).
"""

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("streamlit")
from fastapi.testclient import TestClient

from core.rankers import list_rankers
from workbench import service
from workbench.api import ServeSettings, create_app
from workbench.cli import main
from workbench.workspace import WorkspaceSpec, configure

QUERY = "tools/gc_hammer1.jpg"
K = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dataset):
    folder = tmp_path_factory.mktemp("parity")
    config = folder / "workbench.toml"
    config.write_text(f'[data]\nroot = "{tiny_dataset}"\nseed = 5\n\n[svm]\nhard_negative_rounds = 0\n')
    workdir = folder / "work"
    common = ["--config", str(config), "--workdir", str(workdir), "--quiet"]
    assert main(["fit", *common, "--backend", "torch"]) == 0  # every learned ranker, for this featurizer
    return config, workdir, common


def cli_hits(capsys, common, backend, ranker, tiny_dataset):
    capsys.readouterr()
    query = str(tiny_dataset / QUERY)
    assert main(["search", query, "-k", str(K), "--ranker", ranker, "--backend", backend, *common]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    return [(str(Path(row[-1]).relative_to(tiny_dataset)), float(row[1])) for row in rows]  # path last, score 2nd


def api_hits(client, ranker, tiny_dataset):
    response = client.post(
        "/search",
        files={"file": ("q.jpg", (tiny_dataset / QUERY).read_bytes(), "image/jpeg")},
        data={"k": K, "ranker": ranker},
    )
    assert response.status_code == 200, response.text
    return [(hit["path"], hit["score"]) for hit in response.json()["hits"]]


def app_hits(ws, ranker, tiny_dataset):
    result = service.search(ws, (tiny_dataset / QUERY).read_bytes(), "q.jpg", ranker, K)
    return [(ws.relative_path(hit.record), hit.score) for hit in result.hits]


def assert_same(a, b):
    assert [path for path, _ in a] == [path for path, _ in b]
    assert [score for _, score in a] == pytest.approx([score for _, score in b], abs=1e-4)  # the CLI prints 4 decimals


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_api_and_app_agree_for_every_ranker(backend, setup, tiny_dataset, monkeypatch, capsys):
    config, workdir, common = setup
    monkeypatch.setenv("WORKBENCH_CONFIG", str(config))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(workdir))
    monkeypatch.setenv("WORKBENCH_BACKEND", "torch" if backend == "torch" else "auto")  # auto: onnxruntime
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    app_ws = service.workspace(spec=service.current_spec())
    api_settings = ServeSettings(WorkspaceSpec(configure(config), workdir, backend=app_ws.spec.backend))
    with TestClient(create_app(api_settings)) as client:
        health = client.get("/health").json()
        assert health["backend"] == app_ws.backend == backend
        assert health["gallery_size"] == len(app_ws.dataset) == 18  # the config's folder, not the demo
        assert health["rankers"] == app_ws.rankers_on_offer() == list_rankers()  # learned ones fitted by the CLI
        for ranker in list_rankers():
            from_cli = cli_hits(capsys, common, backend, ranker, tiny_dataset)
            from_api = api_hits(client, ranker, tiny_dataset)
            from_app = app_hits(app_ws, ranker, tiny_dataset)
            assert len(from_cli) == K
            assert_same(from_cli, from_api)
            assert_same(from_api, from_app)
            if ranker in ("cosine", "l2"):
                assert from_api[0][0] == QUERY  # the query itself comes first
