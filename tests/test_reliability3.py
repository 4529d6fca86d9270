"""Reliability round 3 (issue 23): damaged and mismatched artifacts, symlinks out of the allowed roots, NFC/NFD
labels, floods of refused requests. One test (or more) per case of the probe; each fails on the code before it.

Cases: 1 truncated ranker file read for its metadata; 2 a ranker of another width; 3 a ranker damaged under a
running server; 4 an edited index manifest; 5 NaN SVM weights; 6 an exact index built for a learned ranker;
7 symlinks out of the dataset / allowed roots; 8 a garbage or stale ``default.json``; 9 refused-request floods,
killed featurize and index builds; 10 labels differing only in Unicode normalisation, escaped REST paths.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.data import ImageRecord, label_of, scan_folder
from core.errors import ArtifactError, DatasetError
from core.images import content_hash
from core.index import create_index, load_index, read_manifest
from core.metric_learning import ProjectionRanker
from core.rankers import CosineRanker
from core.svm import SVMRanker

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def svm_file(path: Path, dim: int = 8, **changes) -> Path:
    weights = -np.linspace(0.1, 1.0, dim).astype(np.float32)
    ranker = SVMRanker(weights=changes.get("weights", weights), bias=changes.get("bias", 0.5))
    ranker.save(path)
    return path


def projection(dim: int, out: int = 4, seed: int = 0) -> ProjectionRanker:
    return ProjectionRanker(matrix=np.random.default_rng(seed).normal(size=(dim, out)).astype(np.float32))


# -- 1. a truncated ranker file read for its metadata ---------------------------------------------------------------


def test_truncated_ranker_metadata_is_unreadable_not_a_traceback(tmp_path):
    from core.artifacts import read_npz_header
    from workbench.workflows import saved_metadata

    path = tmp_path / "projection.npz"
    projection(64, 16).save(path, {"featurizer": "f"})
    assert saved_metadata(path) == {"featurizer": "f"}
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # `head -c`: BadZipFile on read
    assert saved_metadata(path) is None  # stale: refitted by `fit --missing` and the app's pages
    with pytest.raises(ArtifactError) as caught:
        read_npz_header(path, "projection ranker", "run `python -m workbench fit --ranker projection`")
    message = one_line(caught.value)
    assert message.startswith(str(path)) and "BadZipFile" in message and "fit --ranker projection" in message


# -- 5. NaN weights -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"weights": np.array([-1.0, np.nan, -0.5, np.nan], np.float32)},
            "weights holds 2 NaN or infinite value(s) of 4",
        ),
        ({"bias": float("inf")}, "bias holds 1 NaN or infinite value(s) of 1"),
    ],
)
def test_svm_file_with_non_finite_values_is_refused_on_load(tmp_path, changes, expected):
    path = svm_file(tmp_path / "svm.npz", 4, **changes)
    with pytest.raises(ArtifactError) as caught:
        SVMRanker.load(path)
    message = one_line(caught.value)
    assert message.startswith(str(path)) and expected in message and "fit --ranker svm" in message


def test_projection_file_with_an_impossible_mix_weight_is_refused(tmp_path):
    path = tmp_path / "projection.npz"
    ranker = projection(8)
    ranker.identity_weight = float("nan")
    ranker.save(path)
    with pytest.raises(ArtifactError, match="identity weight must be in"):
        ProjectionRanker.load(path)


# -- 2. a ranker fitted for another width ---------------------------------------------------------------------------


def test_loaded_ranker_of_another_width_is_refused_naming_the_file_and_the_fix(tmp_path):
    from workbench.workspace import check_loaded_ranker

    embeddings = np.eye(6, 12, dtype=np.float32)
    path = tmp_path / "projection.npz"
    with pytest.raises(ArtifactError) as caught:
        check_loaded_ranker(projection(8), "projection", path, embeddings)  # 8 vs 12, as 640 vs 1280
    message = one_line(caught.value)
    assert message == (
        f"{path}: projection ranker scores 8-d embeddings, this featurizer gives 12-d; "
        "run `python -m workbench fit --ranker projection`"
    )
    assert check_loaded_ranker(projection(12), "projection", path, embeddings).input_dim == 12


# -- 4. an edited index manifest ------------------------------------------------------------------------------------


def small_index(kind: str, dim: int = 8):
    from core.index.exact import ExactConfig
    from core.index.faiss_backend import FaissConfig

    config = ExactConfig() if kind == "exact" else FaissConfig(kind="flat")
    index = create_index(config, "model-a", dim)
    index.add(np.arange(5), np.random.default_rng(1).normal(size=(5, dim)).astype(np.float32))
    return index


def edit_manifest(folder: Path, **fields) -> Path:
    from core.index import current_version

    file = current_version(folder) / "manifest.json"
    manifest = json.loads(file.read_text())
    file.write_text(json.dumps({**manifest, **fields}))
    return file


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_manifest_edited_after_save_is_refused_by_its_checksum(tmp_path, kind):
    if kind == "faiss":
        pytest.importorskip("faiss")
    small_index(kind).save(tmp_path / "index")
    edit_manifest(tmp_path / "index", dim=7)
    with pytest.raises(ArtifactError) as caught:
        load_index(tmp_path / "index")
    message = one_line(caught.value)
    assert "manifest was changed after it was saved" in message and "index build" in message


def test_manifest_of_an_older_save_is_checked_against_its_files(tmp_path):
    """Before CURRENT held the manifest's checksum, an edited dim loaded and searches raised ValueError."""
    pytest.importorskip("faiss")
    folder = tmp_path / "index"
    small_index("faiss").save(folder)
    pointer = folder / "CURRENT"
    pointer.write_text(pointer.read_text().splitlines()[0] + "\n")  # as written before checksums
    assert len(load_index(folder)) == 5
    edit_manifest(folder, dim=7)
    with pytest.raises(ArtifactError, match="index.faiss holds 8-d vectors, the manifest's dim and space give 7-d"):
        load_index(folder)
    edit_manifest(folder, dim="7")
    with pytest.raises(ArtifactError, match="dim must be a positive integer, got '7'"):
        read_manifest(folder)


# -- 6. the exact index remembers the ranker it was built for -------------------------------------------------------


def test_exact_index_built_for_a_ranker_searches_with_it_by_default(tmp_path, tiny_dataset):
    from core.index.exact import ExactConfig
    from workbench.workflows import index_build, index_search

    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:6]
    records = tuple(ImageRecord(p, p.parent.name, content_hash(p.read_bytes())) for p in paths)
    embeddings = np.random.default_rng(2).normal(size=(6, 12)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    learned = projection(12, 3, seed=5)
    rankers = {"projection": learned, "cosine": CosineRanker()}
    from core.index import content_ids

    ids = content_ids([record.sha256 for record in records])
    ws = SimpleNamespace(  # the parts of a Workspace that index_build and index_search use
        fingerprint="model-a",
        embeddings=embeddings,
        ranker=lambda name: rankers[name],
        embed=lambda images: embeddings[:1],
        dataset=SimpleNamespace(records=records, record=lambda row: records[row]),
        relative_path=lambda record: record.path.name,
        index_ids=lambda: ids,
        rows_of=lambda found: np.array([ids.tolist().index(i) if i in ids else -1 for i in found.tolist()]),
    )
    index = index_build(ws, tmp_path / "index", ExactConfig(), "projection")  # type: ignore[arg-type]
    assert index.ranker_name == "projection" and read_manifest(tmp_path / "index")["ranker"] == "projection"
    assert load_index(tmp_path / "index").ranker_name == "projection"
    hits = index_search(ws, tmp_path / "index", paths[0], 6)  # type: ignore[arg-type]
    expected = learned.score(embeddings[:1], embeddings)[0]  # what the projection ranks by, not cosine
    position = {record.path.name: i for i, record in enumerate(records)}
    got = {hit.path: hit.score for hit in hits}
    assert len(got) == 6
    for name, score in got.items():
        assert score == pytest.approx(float(expected[position[name]]), abs=1e-5)
    assert [hit.score for hit in hits] == sorted(got.values(), reverse=True)


def test_index_of_a_ranker_of_another_width_is_refused():
    from core.index import ModelMismatchError
    from core.index.exact import ExactConfig

    with pytest.raises(ModelMismatchError, match="scores 8-d embeddings, the index holds 12-d"):
        create_index(ExactConfig(), "model-a", 12, projection(8))


# -- 9. killed index builds and featurize runs ----------------------------------------------------------------------


def test_versions_left_by_a_killed_save_are_removed_on_the_next_load(tmp_path):
    from core.index import remove_orphans

    folder = tmp_path / "index"
    small_index("exact").save(folder)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)  # a process that has exited: its half-written version is an orphan
    orphan = folder / f"v-20260101T000000-p{dead_pid}-deadbeef"
    orphan.mkdir()
    (orphan / "vectors.npy").write_bytes(b"half")
    running = folder / f"v-20260101T000000-p{os.getpid()}-0badcafe"  # a save still running: left alone
    running.mkdir()
    legacy = folder / "v-20250101T000000-1234abcd"  # named before pids were: left to the next save
    legacy.mkdir()
    assert len(load_index(folder)) == 5
    assert not orphan.exists() and running.exists() and legacy.exists()
    assert remove_orphans(folder) == []


KILLED_AFTER_FIRST_BATCH = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    from pathlib import Path
    from core.data import ImageRecord
    from core.featurize import FeatureCache
    from core.images import content_hash
    from core.preprocessing import Preprocessing

    class Slow:
        preprocessing = Preprocessing(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        fingerprint = "slow-test"
        def embed_pixels(self, pixels):
            time.sleep(0.2)
            return pixels.astype(np.float32).mean((2, 3)) + 1.0

    paths = [Path(line) for line in sys.argv[2:]]
    records = [ImageRecord(p, p.parent.name, content_hash(p.read_bytes())) for p in paths]
    progress = lambda done, total: print(done, flush=True)
    FeatureCache(sys.argv[1]).embed(Slow(), records, batch_size=2, progress=progress)  # default: parts every 10 s
    """
)


def test_featurize_killed_after_its_first_batch_keeps_that_batch(tmp_path, tiny_dataset):
    from core.featurize import FeatureCache

    paths = sorted(tiny_dataset.glob("*/*.jpg"))[:8]
    directory = tmp_path / "features"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_AFTER_FIRST_BATCH.format(root=str(ROOT)), str(directory), *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "2", child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no clean-up runs: only what was saved survives
        child.wait(timeout=10)
    assert len(FeatureCache(directory).load("slow-test")) >= 2


def test_feature_parts_with_nan_or_another_width_are_ignored(tmp_path, caplog):
    from core.artifacts import atomic_save_npz
    from core.featurize import FeatureCache

    cache = FeatureCache(tmp_path)
    atomic_save_npz(cache.path_for("f"), sha256=np.array(["a", "b"]), embeddings=np.ones((2, 4), np.float32))
    atomic_save_npz(tmp_path / "f.part-1.npz", sha256=np.array(["c"]), embeddings=np.full((1, 4), np.nan, np.float32))
    atomic_save_npz(tmp_path / "f.part-2.npz", sha256=np.array(["d"]), embeddings=np.ones((1, 3), np.float32))
    with caplog.at_level(logging.WARNING, logger="core.featurize"):
        assert sorted(cache.load("f")) == ["a", "b"]
    assert any("f.part-1.npz" in line and "NaN" in line for line in caplog.messages)
    assert any("f.part-2.npz" in line and "3-d vectors beside 4-d" in line for line in caplog.messages)


# -- 7. symbolic links out of the dataset / the allowed roots -------------------------------------------------------


def png(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


def linked_dataset(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    dataset = allowed / "ds"
    for index, label in enumerate(("a", "b")):
        for shade in range(3):
            png(dataset / label / f"{shade}.png", (100 * index, 60 * shade, 9))
    png(outside / "secret" / "s.png", (1, 2, 3))
    png(outside / "other.png", (4, 5, 6))
    (dataset / "secret").symlink_to(outside / "secret", target_is_directory=True)
    (dataset / "a" / "leak.png").symlink_to(outside / "other.png")
    (dataset / "b" / "inside.png").symlink_to(dataset / "a" / "0.png")  # stays inside: fine (an exact duplicate)
    return allowed, dataset


def test_scan_skips_links_that_leave_the_dataset_in_one_line_each(tmp_path):
    _, dataset = linked_dataset(tmp_path)
    report = scan_folder(dataset, perceptual_hashes=False)
    assert report.dataset.label_counts() == {"a": 3, "b": 3}
    assert all("outside" not in str(record.path) for record in report.dataset.records)
    reasons = {item.path.name: item.reason for item in report.skipped}
    assert reasons["secret"].startswith(f"{dataset / 'secret'}: a link to {tmp_path / 'outside' / 'secret'}, outside")
    assert "leak.png" in reasons and "a link may not leave them" in reasons["leak.png"]
    assert "exact duplicate" in reasons["inside.png"]  # followed: it stays inside


def test_cli_prepare_leaves_out_links_that_leave_the_dataset(tmp_path, capsys):
    from workbench.cli import main

    _, dataset = linked_dataset(tmp_path)
    assert main(["prepare", "--data", str(dataset), "--workdir", str(tmp_path / "work"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 images in 2 labels: a=3, b=3" in out and "secret=" not in out  # left out, and said so


def test_check_within_roots_resolves_links_on_both_sides(tmp_path):
    from core.data import check_within_roots

    real = tmp_path / "real"
    (real / "x").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert check_within_roots(tmp_path / "alias" / "x", [real]) == real / "x"
    assert check_within_roots(real / "x", [tmp_path / "alias"]) == real / "x"
    with pytest.raises(DatasetError, match="outside the folders that may be opened"):
        check_within_roots(tmp_path, [real])


def test_app_refuses_a_dataset_whose_label_folder_links_out(tmp_path, monkeypatch):
    from workbench import service

    allowed, dataset = linked_dataset(tmp_path)
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(allowed))
    with pytest.raises(DatasetError) as caught:
        service.use_dataset(str(dataset))
    message = one_line(caught.value)
    assert message.startswith(f"{dataset / 'secret'}: a link to {tmp_path / 'outside' / 'secret'}")
    (allowed / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DatasetError, match="outside the folders this app may open"):
        service.use_dataset(str(allowed / "elsewhere"))  # resolved before the roots check


# -- 10. labels that differ only in Unicode normalisation -----------------------------------------------------------


def test_nfc_and_nfd_label_folders_are_refused_in_one_line(tmp_path):
    for index, form in enumerate(("NFC", "NFD")):
        png(tmp_path / unicodedata.normalize(form, "café") / "x.png", (index * 90, 3, 3))
    png(tmp_path / "tea" / "t.png", (9, 9, 9))
    with pytest.raises(DatasetError) as caught:
        scan_folder(tmp_path, perceptual_hashes=False)
    message = one_line(caught.value)
    assert "(NFC)" in message and "(NFD)" in message and "differ only in Unicode normalisation" in message
    assert label_of(unicodedata.normalize("NFD", "café")) == "café" == label_of("café")


# -- 8. a garbage or stale default.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{garbage", "unreadable JSON"),
        ('["pretrained", "svm"]', "not a choice of tune"),
        ('{"featurizer": "pretrained", "ranker": "nope"}', "not a choice of tune"),
    ],
)
def test_garbage_default_choice_is_ignored_with_one_warning(tmp_path, caplog, text, expected):
    from core.workdir import WorkDir
    from workbench.tuning import default_choice

    layout = WorkDir(tmp_path, tmp_path / "data", "")
    layout.default_choice.parent.mkdir(parents=True, exist_ok=True)
    layout.default_choice.write_text(text)
    with caplog.at_level(logging.WARNING, logger="workbench.tuning"):
        assert default_choice(layout) is None
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(layout.default_choice) in warnings[0] and expected in warnings[0]
    assert "tune" in warnings[0]


# -- 2, 3, 8, 10 through the REST API and the CLI, on the tiny real set ---------------------------------------------

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dataset):
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    data = tmp_path_factory.mktemp("data") / "tiny"
    shutil.copytree(tiny_dataset, data)
    first = sorted(data.glob("tools/*.jpg"))[0]
    first.rename(first.with_name("odd\x1bname.jpg"))  # a control character in a file name
    spec = WorkspaceSpec(configure(data={"root": data}), tmp_path_factory.mktemp("work"), backend="torch")
    with TestClient(create_app(ServeSettings(spec)), raise_server_exceptions=False) as client:
        yield SimpleNamespace(client=client, ws=client.app.state.workspace, data=data, spec=spec)


def search(served, ranker: str = "cosine", k: int = 3):
    query = sorted(served.data.glob("fish/*.jpg"))[0]
    return served.client.post(
        "/search", files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")}, data={"k": str(k), "ranker": ranker}
    )


def assert_refused(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and "Traceback" not in body["message"] and "/tmp" not in body["message"], body
    return body["message"]


def test_api_ranker_of_another_width_is_422_and_the_service_keeps_serving(served):
    path = served.ws.ranker_path("projection")
    path.parent.mkdir(parents=True, exist_ok=True)
    projection(640, 8).save(path)  # fitted for 640-d embeddings; this featurizer gives 1280-d
    message = assert_refused(search(served, "projection"), 422, "ranker_unavailable")
    assert "fit --ranker projection" in message
    assert search(served).status_code == 200  # the next request is served


def test_api_ranker_damaged_under_a_running_server_is_422_not_500(served):
    path = served.ws.ranker_path("projection")
    path.parent.mkdir(parents=True, exist_ok=True)
    projection(1280, 8).save(path)
    assert search(served, "projection").status_code == 200
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, (1, 1))  # another mtime: the server reads it again
    assert_refused(search(served, "projection"), 422, "ranker_unavailable")
    svm_path = served.ws.ranker_path("svm")
    svm_file(svm_path, 1280, weights=np.full(1280, np.nan, np.float32))
    assert_refused(search(served, "svm"), 422, "ranker_unavailable")
    path.unlink()
    svm_path.unlink()
    assert_refused(search(served, "projection"), 422, "ranker_unavailable")


def test_api_paths_are_escaped_like_labels(served):
    response = search(served, k=30)
    assert response.status_code == 200, response.text
    paths = [hit["path"] for hit in response.json()["hits"]]
    assert "tools/odd\\x1bname.jpg" in paths and not any("\x1b" in path for path in paths)


def test_api_flood_of_refused_uploads_is_answered_429_after_a_budget():
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    settings = ServeSettings(
        WorkspaceSpec(configure(uploads={"max_file_bytes": 1000})), refusal_burst=3, refusal_delay_s=0.0
    )
    app = create_app(settings)  # no lifespan: nothing here needs the workspace
    hostile = TestClient(app, client=("10.0.0.2", 4000))
    good = TestClient(app, client=("10.0.0.1", 4000))
    too_big = {"file": ("big.jpg", b"\xff" * 200_000, "image/jpeg")}
    answers = [hostile.post("/search", files=too_big) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [413, 413, 413, 429, 429]
    assert answers[0].json()["error"]["code"] == "upload_too_large"
    assert answers[0].headers["connection"] == "close"  # refused from the head: the body is never read
    assert answers[3].json()["error"]["code"] == "too_many_refusals" and int(answers[3].headers["retry-after"]) >= 1
    assert hostile.get("/openapi.json").status_code == 429  # the budget is per client, whatever it asks
    assert good.get("/openapi.json").status_code == 200  # another client is not affected


def test_cli_search_falls_back_when_tune_chose_a_ranker_that_is_gone(served, caplog, capsys):
    from workbench.cli import main

    ws = served.ws
    for name in ("svm", "projection"):
        ws.ranker_path(name).unlink(missing_ok=True)
    ws.layout.default_choice.write_text(json.dumps({"featurizer": "pretrained", "ranker": "projection"}))
    query = sorted(served.data.glob("fish/*.jpg"))[0]
    common = ["--data", str(served.data), "--workdir", str(served.spec.workdir), "--backend", "torch", "--quiet"]
    with caplog.at_level(logging.WARNING):
        assert main(["search", str(query), "-k", "2", *common]) == 0
    assert "tune chose the projection ranker, which cannot be used" in caplog.text
    assert "searching with cosine" in caplog.text
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    ws.layout.default_choice.unlink()


def test_search_page_refits_a_truncated_ranker_instead_of_showing_a_traceback(served, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from workbench.workflows import ensure_learned

    ensure_learned(served.ws, ("projection",))
    path = served.ws.ranker_path("projection")
    path.write_bytes(path.read_bytes()[:2000])  # `head -c`: BadZipFile when its metadata is read
    monkeypatch.setenv("WORKBENCH_DATA", str(served.data))
    monkeypatch.setenv("WORKBENCH_WORKDIR", str(served.spec.workdir))
    monkeypatch.setenv("WORKBENCH_BACKEND", "torch")
    monkeypatch.delenv("WORKBENCH_DATA_ROOTS", raising=False)
    app = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    app.run()
    assert not app.exception, app.exception
    assert "projection" in app.selectbox(key="ranker").options  # refitted on load, as a stale ranker is
    assert ProjectionRanker.load(path).input_dim == 1280
