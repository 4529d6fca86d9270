"""Every door follows the dataset folder: photos added, deleted or overwritten in place after a fit are seen by the
CLI, the REST service and the app, which all give the same "since the last fit" line (real featurizer, tiny set)."""

import io
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from workbench.cli import main

SINCE_FIT = "since the last fit"


@pytest.fixture
def folder(tmp_path, tiny_dataset) -> Path:
    root = tmp_path / "photos"
    shutil.copytree(tiny_dataset, root)
    return root


def reencoded(path: Path, quality: int = 77) -> bytes:
    """The same picture as other bytes: new content for the catalogue, nearly the same look."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def search_lines(capsys, image: Path, common: list[str]) -> list[list[str]]:
    assert main(["search", str(image), "-k", "3", *common]) == 0
    return [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]


def test_cli_sees_added_deleted_and_overwritten_photos_and_fit_missing_refits(folder, tmp_path, capsys, caplog) -> None:
    common = ["--data", str(folder), "--workdir", str(tmp_path / "work")]
    assert main(["fit", "--missing", *common, "--quiet"]) == 0
    capsys.readouterr()
    keep = tmp_path / "kept"
    keep.mkdir()

    # deleted: a copy of the deleted photo must not bring back the deleted path
    deleted = folder / "fish" / "gc_fish3.jpg"
    shutil.copy(deleted, keep / deleted.name)
    deleted.unlink()
    with caplog.at_level(logging.WARNING):
        hits = search_lines(capsys, keep / deleted.name, [*common, "--quiet"])
    assert all(not hit[3].endswith("gc_fish3.jpg") for hit in hits)
    assert f"0 new, 1 removed {SINCE_FIT}: svm, projection are stale" in caplog.text

    # added: a new photo is found, first, at score 1
    added = folder / "tools" / "new_hammer.jpg"
    added.write_bytes(reencoded(folder / "tools" / "gc_hammer1.jpg"))
    hits = search_lines(capsys, added, [*common, "--quiet"])
    assert hits[0][3] == str(added) and float(hits[0][1]) == pytest.approx(1.0, abs=1e-4)

    # overwritten in place: the old look no longer returns the overwritten path at 1.0, its new look does
    target = folder / "landmarks" / "gc_burj.jpg"
    shutil.copy(target, keep / "old_burj.jpg")
    target.write_bytes(reencoded(folder / "landmarks" / "gc_colosseum.jpg", quality=71))
    shutil.copy(target, keep / "new_burj.jpg")
    old = search_lines(capsys, keep / "old_burj.jpg", [*common, "--quiet"])
    assert not (old[0][3] == str(target) and float(old[0][1]) > 0.999)
    new = search_lines(capsys, keep / "new_burj.jpg", [*common, "--quiet"])
    assert new[0][3] == str(target) and float(new[0][1]) == pytest.approx(1.0, abs=1e-4)

    caplog.clear()
    assert main(["fit", "--missing", *common]) == 0
    out = capsys.readouterr().out
    assert "svm ranker fitted" in out and "projection ranker fitted" in out and "already fitted" not in out
    with caplog.at_level(logging.WARNING):
        search_lines(capsys, added, [*common, "--quiet"])
    assert SINCE_FIT not in caplog.text  # current again


def test_rest_service_serves_the_folder_as_it_is_now_and_says_what_changed_since_the_fit(folder, tmp_path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    common = ["--data", str(folder), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert main(["fit", "--missing", *common]) == 0
    settings = ServeSettings(WorkspaceSpec(configure(data={"root": folder}), tmp_path / "work"), folder_check_s=0.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/health").json()
        assert health["since_fit"] is None and health["gallery_size"] == 18
        added = folder / "fish" / "new_fish.jpg"
        added.write_bytes(reencoded(folder / "fish" / "gc_fish1.jpg"))
        (folder / "tools" / "gc_wrench.jpg").unlink()
        response = client.post("/search", files={"file": ("q.jpg", added.read_bytes(), "image/jpeg")}, data={"k": 2})
        assert response.status_code == 200, response.text
        top = response.json()["hits"][0]
        assert top["path"] == "fish/new_fish.jpg" and top["score"] == pytest.approx(1.0, abs=1e-4)
        health = client.get("/health").json()
        assert health["gallery_size"] == 18
        assert health["since_fit"].startswith(f"1 new, 1 removed {SINCE_FIT}: svm, projection are stale")


def test_app_reopens_a_changed_folder_and_shows_the_since_fit_line(folder, tmp_path, monkeypatch) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_DATA", str(folder))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    assert main(["fit", "--missing", "--data", str(folder), "--workdir", str(tmp_path / "work"), "--quiet"]) == 0
    app = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    app.run()
    app.switch_page("pages/explore.py")
    app.run()
    assert not app.exception, app.exception
    assert not any(SINCE_FIT in warning.value for warning in app.sidebar.warning)

    (folder / "fish" / "gc_fish2.jpg").unlink()
    app.run()
    assert not app.exception, app.exception
    assert any("1 removed since it was last opened" in info.value for info in app.sidebar.info)
    assert any(f"0 new, 1 removed {SINCE_FIT}" in warning.value for warning in app.sidebar.warning)
