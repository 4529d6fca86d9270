"""Hostile input and faults through the library (issue 13): one test per defect class, each failing on the code
before the fix. Every case must end in a clear one-line error or correct data, never a crash, a hang or lost data.

The case -> outcome table is written to ``test-artifacts/hardening.md``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from http_fixture import ServerState, serve
from PIL import Image

from core.errors import ArtifactError, ImageLoadError, WorkbenchError
from core.images import decode_image, load_image

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "test-artifacts" / "hardening.md"
OUTCOMES: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def outcome_table():
    yield
    if OUTCOMES:
        TABLE.parent.mkdir(exist_ok=True)
        lines = ["| case | defect | outcome |", "|---|---|---|"]
        lines += [f"| {case} | {defect} | {text.replace('|', '/')} |" for case, (defect, text) in OUTCOMES.items()]
        TABLE.write_text("\n".join(lines) + "\n", encoding="utf-8")


def record(case: str, defect: str, text: str) -> None:
    OUTCOMES[case] = (defect, text)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def one_line_error(run: Callable[[], object], error: type[Exception] = WorkbenchError, seconds: float = 2.0) -> str:
    """Run ``run`` in a thread; it must raise ``error`` with a one-line message within ``seconds`` (no hang)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = run()
        except BaseException as err:
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (hang)"
    elapsed = time.perf_counter() - start
    err = result.get("error")
    assert isinstance(err, error), f"expected {error.__name__}, got {err!r} / {result.get('value')!r}"
    message = str(err)
    assert message and "\n" not in message and "\r" not in message and "Traceback" not in message, message
    assert elapsed < seconds
    return message


# -- 1. decoder allow-list -------------------------------------------------------------------------------------

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
    b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"
)
#: A minimal 16x16 RGB Photoshop file: header, three empty sections, raw image data.
PSD = (
    b"8BPS"
    + (1).to_bytes(2, "big")
    + bytes(6)
    + (3).to_bytes(2, "big")
    + (16).to_bytes(4, "big") * 2
    + (8).to_bytes(2, "big")
    + (3).to_bytes(2, "big")
    + bytes(12)
    + bytes(2)
    + bytes(16 * 16 * 3)
)
DOS_EPS = b"\xc5\xd0\xd3\xc6" + (32).to_bytes(4, "little") + len(EPS).to_bytes(4, "little") + bytes(20) + EPS


@pytest.fixture
def no_ghostscript(monkeypatch):
    """Fail the test if anything tries to start Ghostscript (or any other process)."""
    from PIL import EpsImagePlugin

    def refuse(*args, **kwargs):
        raise AssertionError("a foreign decoder was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as if installed
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.mark.parametrize(
    "case, filename, data, shown",
    [
        ("PostScript named .jpg", "upload.jpg", EPS, "EPS"),
        ("DOS EPS named .png", "upload.png", DOS_EPS, "EPS"),
        ("PDF named .jpg", "doc.jpg", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        ("PPM named .png", "netpbm.png", b"P6\n16 16\n255\n" + bytes(16 * 16 * 3), "PPM"),
        ("Photoshop PSD named .jpg", "layers.jpg", PSD, "PSD"),
        ("ICO named .png", "favicon.png", encode(Image.new("RGB", (16, 16), (9, 9, 9)), "ICO"), "ICO"),
    ],
)
def test_only_allowed_formats_are_decoded(tmp_path, no_ghostscript, case, filename, data, shown):
    path = tmp_path / filename
    path.write_bytes(data)
    for run in (lambda: decode_image(data, name=filename), lambda: load_image(path)):
        message = one_line_error(run, ImageLoadError)
        assert message.startswith(str(path) if "tmp" in message else filename)
        assert f"not a supported image format ({shown}" in message, message
    record(case, "1 any Pillow format decoded", f"one-line error: {message.split(': ', 1)[1]}")


def test_dataset_scan_refuses_foreign_formats(tmp_path, no_ghostscript):
    from core.data import scan_folder

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for index, colour in enumerate(((200, 10, 10), (10, 200, 10))):
            (tmp_path / label / f"{index}.png").write_bytes(
                encode(Image.new("RGB", (32, 32), tuple(c + 40 * (label == "b") for c in colour)), "PNG")
            )
    (tmp_path / "a" / "evil.jpg").write_bytes(EPS)
    report = scan_folder(tmp_path)
    assert len(report.dataset) == 4
    [skipped] = report.skipped
    assert skipped.path.name == "evil.jpg" and "not a supported image format (EPS" in skipped.reason


def test_probe_reads_the_header_and_says_which_failure():
    from core.config import UPLOAD_LIMITS
    from core.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
    from core.images import ImageHeader, probe_image

    png = encode(Image.new("RGB", (40, 30)), "PNG")
    assert probe_image(png, "a.png") == ImageHeader("PNG", 40, 30)
    assert probe_image(encode(Image.new("RGB", (40, 30)), "JPEG"), "a.jpg").format == "JPEG"
    with pytest.raises(UnsupportedImageError, match="x.jpg: not a supported image format"):
        probe_image(EPS, "x.jpg", UPLOAD_LIMITS)
    with pytest.raises(UnsupportedImageError, match="not a recognised image format"):
        probe_image(b"hello world", "x.jpg", UPLOAD_LIMITS)
    with pytest.raises(CorruptImageError, match="x.png: corrupt"):
        probe_image(png[:20], "x.png", UPLOAD_LIMITS)
    with pytest.raises(CorruptImageError, match="empty file"):
        probe_image(b"", "x.png", UPLOAD_LIMITS)
    bomb = encode(Image.new("1", (6300, 6300)), "PNG")
    assert len(bomb) < 10_000
    with pytest.raises(ImageTooLargeError, match="6300x6300"):
        probe_image(bomb, "bomb.png", UPLOAD_LIMITS)


# -- 2. decode cost bounded before decoding -------------------------------------------------------------------


def test_cheap_to_send_costly_to_decode_is_refused_from_the_header(tmp_path):
    from core.config import UPLOAD_LIMITS

    big = encode(Image.new("1", (8000, 8000)), "PNG")  # 64 Mpx in a few kB
    path = tmp_path / "huge.png"
    path.write_bytes(big)
    start = time.perf_counter()
    message = one_line_error(lambda: load_image(path), ImageLoadError, seconds=5)
    assert "image too large, refusing to decode (8000x8000" in message and time.perf_counter() - start < 0.5
    upload = encode(Image.new("1", (6300, 6300)), "PNG")
    message = one_line_error(lambda: decode_image(upload, "up.png", limits=UPLOAD_LIMITS), ImageLoadError)
    assert "6300x6300" in message
    record("8000x8000 PNG of 8 kB (file)", "2 costly decode", "one-line error from the header, < 0.5 s")
    record("6300x6300 PNG of 5 kB (upload)", "2 costly decode", "one-line error from the header")


def test_large_jpeg_is_decoded_reduced_within_the_ceiling():
    from core.config import ImageLimits

    data = encode(Image.new("RGB", (2000, 1500), (30, 60, 90)), "JPEG", quality=80)
    limits = ImageLimits(max_pixels=4_000_000, max_pixels_full=1_000_000)
    image = decode_image(data, "photo.jpg", limits=limits)
    assert image.size == (1000, 750) and image.getpixel((500, 300)) == pytest.approx((30, 60, 90), abs=3)
    assert decode_image(data, "photo.jpg", draft_size=300, limits=limits).size == (500, 375)  # as small as allowed
    png = encode(Image.new("RGB", (2000, 1500)), "PNG")  # PNG cannot be reduced: its ceiling is the decoded size
    with pytest.raises(ImageLoadError, match="2000x1500 = 3,000,000 px, limit 1,000,000 for PNG"):
        decode_image(png, "big.png", limits=limits)
    with pytest.raises(ImageLoadError, match="limit 4,000,000 for JPEG"):
        decode_image(encode(Image.new("L", (2500, 2000)), "JPEG"), "huge.jpg", limits=limits)


@pytest.mark.slow
def test_48_megapixel_phone_photo_passes_upload_limits():
    from core.config import UPLOAD_LIMITS

    data = encode(Image.linear_gradient("L").resize((8000, 6000)).convert("RGB"), "JPEG", quality=85)
    start = time.perf_counter()
    image = decode_image(data, "phone.jpg", draft_size=256, limits=UPLOAD_LIMITS)
    assert image.size == (1000, 750) and time.perf_counter() - start < 2


# -- 4. transactional index writes ---------------------------------------------------------------------------

MODEL = "test-model"


def small_index(ids, value: float):
    from core.index.exact import ExactIndex

    index = ExactIndex(MODEL, 4)
    index.add(np.asarray(ids), np.full((len(ids), 4), value, np.float32))
    return index


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from core.index import load_index
    from core.index.exact import ExactIndex

    real_save, calls = np.save, []
    def slow_save(file, array, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # between the two files of the exact index: vectors written, ids not yet
            print("BETWEEN", flush=True)
            time.sleep(60)
        return real_save(file, array, **kwargs)
    np.save = slow_save
    kind, folder = sys.argv[1], sys.argv[2]
    if kind == "add":
        index = load_index(folder)
        index.add(np.arange(1000, 1005), np.ones((5, 4), np.float32))
    else:
        index = ExactIndex("test-model", 4)
        index.add(np.arange(500, 600), np.full((100, 4), 9.0, np.float32))
    index.save(folder)
    """
)


@pytest.mark.parametrize("kind", ["build", "add"])
def test_sigkill_during_index_save_leaves_the_old_index(tmp_path, kind):
    from core.index import load_index

    folder = tmp_path / "index"
    small_index(np.arange(270), 1.0).save(folder)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT)), kind, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "BETWEEN", child.stderr.read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    loaded = load_index(folder)
    assert sorted(loaded.ids().tolist()) == list(range(270))
    np.testing.assert_array_equal(loaded.vectors()[1], np.ones((270, 4), np.float32))
    # the next save works and clears what the killed one left
    small_index(np.arange(3), 2.0).save(folder)
    assert sorted(load_index(folder).ids().tolist()) == [0, 1, 2]
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1
    record(f"SIGKILL during index {kind}", "4 index lost / inconsistent", "old index loads, nothing lost")


def test_full_disk_during_index_save_keeps_the_old_index(tmp_path, monkeypatch):
    from core.index import load_index

    folder = tmp_path / "index"
    small_index(np.arange(10), 1.0).save(folder)
    before = sorted(p.name for p in folder.iterdir())
    real_save, calls = np.save, []

    def full_disk(file, array, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(file, array, **kwargs)

    monkeypatch.setattr(np, "save", full_disk)
    bigger = small_index(np.arange(20), 3.0)
    message = one_line_error(lambda: bigger.save(folder), ArtifactError)
    assert message.startswith(str(folder)) and "no space left on device" in message
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == before  # the half-written version is gone
    assert sorted(load_index(folder).ids().tolist()) == list(range(10))
    record("disk full during index save", "4 index lost", f"one-line error ({message.split(': ', 1)[1]}); old kept")


def test_damaged_index_is_refused_in_one_line(tmp_path):
    from core.index import current_version, load_index

    folder = tmp_path / "index"
    small_index(np.arange(50), 1.0).save(folder)
    vectors = current_version(folder) / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-3] ^= 0x40  # one flipped bit in the data: np.load would not notice
    vectors.write_bytes(bytes(data))
    message = one_line_error(lambda: load_index(folder), ArtifactError)
    assert message.startswith(str(folder)) and "damaged index (vectors.npy" in message
    ids = current_version(folder) / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:-8])
    assert "damaged index" in one_line_error(lambda: load_index(folder, verify=False), ArtifactError)
    record("bit flip / truncation in a saved index", "4 index verified", "one-line error naming the folder")


def test_index_saved_before_versions_still_loads_and_is_replaced(tmp_path):
    from core.index import CURRENT_NAME, load_index

    folder = tmp_path / "legacy"
    folder.mkdir()
    index = small_index(np.arange(5), 1.0)
    np.save(folder / "vectors.npy", index.vectors()[1])
    np.save(folder / "ids.npy", index.ids())
    manifest = {**index.manifest(), "config": {"dtype": "float32", "block_rows": 0, "compact_fraction": 0.25}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": ["vectors.npy", "ids.npy"]}))
    loaded = load_index(folder)
    assert len(loaded) == 5
    loaded.add([7], np.ones((1, 4), np.float32))
    loaded.save(folder)
    assert (folder / CURRENT_NAME).is_file() and not (folder / "vectors.npy").exists()
    assert len(load_index(folder)) == 6


# -- 6. regular files only, size checked before reading ------------------------------------------------------


def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(40 * 1024**3)  # 40 GiB, no disk used
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    return {"FIFO": fifo, "folder": folder, "40 GiB sparse file": sparse, "/dev/zero": zero}


def test_special_and_huge_files_are_refused_quickly(tmp_path):
    expected = {
        "FIFO": "not a regular file (a named pipe (FIFO))",
        "folder": "not a regular file (a folder)",
        "40 GiB sparse file": "file too large (42,949,672,960 bytes",
        "/dev/zero": "not a regular file (a character device)",
    }
    for kind, path in special_files(tmp_path).items():
        message = one_line_error(lambda path=path: load_image(path), ImageLoadError, seconds=1.0)
        assert message.startswith(str(path)) and expected[kind] in message, message
        record(f"{kind} named .jpg", "6 special / huge files", f"one-line error < 1 s: {expected[kind]}")


def test_scan_skips_and_reports_special_files(tmp_path):
    from core.data import scan_folder

    for label in ("a", "b"):
        for index in range(2):
            path = tmp_path / label / f"{index}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(encode(Image.new("RGB", (32, 32), (90 * index, 100 if label == "a" else 0, 7)), "PNG"))
    specials = special_files(tmp_path / "a")
    specials["folder"].rmdir()  # a folder inside a label is walked, not a file
    start = time.perf_counter()
    report = scan_folder(tmp_path)
    assert time.perf_counter() - start < 2
    assert len(report.dataset) == 4
    reasons = {item.path.name: item.reason for item in report.skipped}
    assert set(reasons) == {"pipe.jpg", "sparse.jpg", "zero.jpg"}
    assert "named pipe" in reasons["pipe.jpg"] and "file too large" in reasons["sparse.jpg"]
    assert "a link to /dev/zero, outside" in reasons["zero.jpg"]  # a link out of the dataset: never opened


# -- 7. a folder of 2 labels x 3 images prepares -------------------------------------------------------------


def test_two_labels_of_three_images_give_queries_on_both_sides():
    from core.data import make_comparative_sets, stratified_split

    labels = np.array(["cat"] * 3 + ["dog"] * 3, dtype=object)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        split = stratified_split(labels, 0.75, rng)
        assert len(split.train) + len(split.test) == 6 and not set(split.train) & set(split.test)
        for side in (split.train, split.test):
            sets = make_comparative_sets(labels[side], 20, 99, rng)
            assert len(sets) >= 1
            query_labels, positive_labels = labels[side][sets.queries], labels[side][sets.references[:, 0]]
            assert (query_labels == positive_labels).all()
    record("2 labels x 3 images", "7 dataset refused", "prepares: queries on both sides")


def test_split_is_unchanged_where_it_already_worked():
    from core.data import stratified_split

    labels = np.array(["a"] * 8 + ["b"] * 5 + ["c"] * 1, dtype=object)
    split = stratified_split(labels, 0.75, np.random.default_rng(3))
    counts = {label: int(np.sum(labels[split.test] == label)) for label in "abc"}
    assert counts == {"a": 2, "b": 1, "c": 0}  # round(0.75 * n) per label, as before


# -- 8. labels never merge silently --------------------------------------------------------------------------


def test_undecodable_folder_names_stay_distinct_labels(tmp_path):
    from core.data import scan_folder

    names = [os.fsdecode(b"caf\xe9"), os.fsdecode(b"caf\xff")]
    for index, name in enumerate(names):
        for shade in range(2):
            path = tmp_path / name / f"{shade}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(encode(Image.new("RGB", (32, 32), (100 * index, 50 * shade, 9)), "PNG"))
    report = scan_folder(tmp_path)
    assert report.dataset.label_counts() == {"caf\\xe9": 2, "caf\\xff": 2}
    for label in report.dataset.labels:
        label.encode("utf-8")  # printable
    record("two invalid-UTF-8 folder names", "8 labels merged", "two labels: caf\\xe9, caf\\xff")


@pytest.fixture
def fixture_server(tiny_dataset):
    images = {path.name: path.read_bytes() for path in sorted(tiny_dataset.glob("*/*.jpg"))}
    served = dict(images)
    served["caf%C3%A9-%E5%86%99%E7%9C%9F.jpg"] = images[sorted(images)[-1]]  # used by no other line
    with serve(ServerState(served)) as base:
        yield base, images


def test_sanitised_labels_never_collide_and_urls_may_be_non_ascii(tmp_path, fixture_server, monkeypatch):
    from core.ingest import REPORT_NAME, IngestConfig, import_urls

    base, images = fixture_server
    port = base.rsplit(":", 1)[1]
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host, *args, **kwargs):  # the IDN host, IDNA-encoded, is this machine
        if host in ("xn--bcher-kva.localhost", b"xn--bcher-kva.localhost"):
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    long_a, long_b = "x" * 100 + "-one", "x" * 100 + "-two"
    multibyte = "é" * 200  # 400 UTF-8 bytes: more than a path component may hold
    names = sorted(images)
    labels = ["a/b", "a_b", "../x", "x", ".", "..", long_a, long_b, multibyte]
    lines = [f"{label}\t{base}/img/{names[i]}" for i, label in enumerate(labels)]
    lines.append(f"nonascii\t{base}/img/café-写真.jpg")
    lines.append(f"idn\thttp://bücher.localhost:{port}/img/{names[len(labels)]}")
    url_list = tmp_path / "list.tsv"
    url_list.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    report = import_urls(url_list, out, IngestConfig(workers=4, timeout=5, retries=0))
    assert report.counts()["downloaded"] == len(lines), [i.reason for i in report.items if i.status == "failed"]
    folders = {item.label: item.path.split("/")[0] for item in report.items}
    assert len(set(folders.values())) == len(folders)  # every label its own folder
    assert folders["a_b"] == "a_b" and folders["x"] == "x" and folders["a/b"] != "a_b"
    for folder in folders.values():
        assert len(folder.encode("utf-8")) <= 255 and not folder.startswith(".")
    for item in report.items:
        assert len(Path(item.path).name.encode("utf-8")) <= 255 and (out / item.path).is_file()
    saved = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert saved["label_folders"] == folders
    record("colliding / long / non-ASCII labels and URLs", "8 labels merged", "distinct folders, mapping in report")


# -- 9. one line, never a traceback --------------------------------------------------------------------------


def test_full_disk_while_writing_an_artifact_is_one_line(tmp_path, monkeypatch):
    import core.artifacts as artifacts

    target = tmp_path / "run" / "manifest.json"
    artifacts.atomic_write_json(target, {"status": "complete"})

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    message = one_line_error(lambda: artifacts.atomic_write_json(target, {"status": "new"}), ArtifactError)
    assert message == f"{target}: cannot write (no space left on device)"
    monkeypatch.undo()
    assert artifacts.read_json(target) == {"status": "complete"} and os.listdir(target.parent) == ["manifest.json"]
    record("disk full writing a JSON artifact", "9 traceback", message.split(": ", 1)[1])


class _FullDisk(io.FileIO):
    """A file whose writes fail with ENOSPC once ``limit`` bytes are written."""

    limit = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import core.artifacts as artifacts
    from core.train import _save_checkpoint

    model = torch.nn.Linear(64, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    args = (model, optimizer, scheduler, torch.Generator(), [], {"config": {}, "data_hash": "x"})
    path = tmp_path / "checkpoint.pt"
    _save_checkpoint(path, *args)
    before = path.read_bytes()
    monkeypatch.setattr(artifacts, "open", lambda file, mode="r": _FullDisk(file, mode.replace("b", "")), raising=False)
    message = one_line_error(lambda: _save_checkpoint(path, *args), ArtifactError, seconds=10)
    assert message == f"{path}: cannot write (no space left on device)"
    assert path.read_bytes() == before
    record("disk full saving a training checkpoint", "9 traceback", message.split(": ", 1)[1])


@pytest.mark.parametrize(
    "text, key, wanted",
    [
        ("[data]\ntrain_fraction = 7\n", "data]: train_fraction", "in (0, 1)"),
        ("[data]\ntrain_fraction = 1\n", "data]: train_fraction", "in (0, 1)"),
        ("[data]\nn_negatives = -3\n", "data]: n_negatives", ">= 1"),
        ("[data]\nseed = -1\n", "data]: seed", ">= 0"),
        ("[featurizer]\nbatch_size = 0\n", "featurizer]: batch_size", ">= 1"),
        ("[train]\nepochs = -1\n", "train]: epochs", ">= 0"),
        ("[train]\nbatch_size = 0\n", "train]: batch_size", ">= 1"),
        ("[train]\nlearning_rate = nan\n", "train]: learning_rate", "> 0"),
        ("[train]\nschedule = 'linear'\n", "train]: schedule", "one of 'cosine', 'constant'"),
        ("[svm]\nC = 0\n", "svm]: C", "> 0"),
        ("[uploads]\nmax_pixels_full = 0\n", "uploads]: max_pixels_full", ">= 1"),
        ("data = 3\n", "data must be a table", ""),
    ],
)
def test_config_values_are_validated_at_the_edge(tmp_path, text, key, wanted):
    from core.config import load_config

    path = tmp_path / "bad.toml"
    path.write_text(text)
    message = one_line_error(lambda: load_config(path), WorkbenchError)
    assert message.startswith(f"{path} [") or message.startswith(f"{path}: ")
    assert key in message and wanted in message, message
    record(f"config: {' '.join(text.split())}", "9 traceback / silent", message.split(" ", 1)[1])


def test_config_dataclasses_refuse_bad_values_when_built_in_code():
    from core.config import DataConfig, ImageLimits, TrainConfig

    with pytest.raises(WorkbenchError, match=r"TrainConfig.epochs must be >= 0, got -1"):
        TrainConfig(epochs=-1)
    with pytest.raises(WorkbenchError, match=r"DataConfig.n_negatives must be >= 1"):
        DataConfig(n_negatives=0)
    with pytest.raises(WorkbenchError, match=r"ImageLimits.max_pixels_full must be <= max_pixels"):
        ImageLimits(max_pixels=10, max_pixels_full=20)


def test_control_characters_in_names_cannot_forge_log_lines(tmp_path):
    from core.images import printable

    path = tmp_path / "x.jpg\nERROR: forged line\x1b[31m.jpg"
    path.write_bytes(b"not an image")
    message = one_line_error(lambda: load_image(path), ImageLoadError)
    assert "x.jpg\\nERROR: forged line\\x1b[31m.jpg: not a recognised image format" in message
    assert printable("a\r\nb\u202ec\udce9") == "a\\r\\nb\\u202ec\\xe9"
    record("newline / escape in a file name", "9 forged log line", "escaped: one line")


# -- 10. transparent colour (tRNS) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, colour",
    [("RGB", (255, 0, 0)), ("L", 7), ("I;16", 300)],
)
def test_transparent_colour_is_flattened_on_white_like_alpha(mode, colour):
    image = Image.new(mode, (16, 16), colour)
    image.paste(Image.new(mode, (8, 16), 0 if mode != "RGB" else (0, 0, 0)), (0, 0))  # left half opaque black
    decoded = decode_image(encode(image, "PNG", transparency=colour), "t.png")
    assert decoded.getpixel((12, 5)) == (255, 255, 255)  # the transparent colour -> white
    assert decoded.getpixel((2, 5)) == (0, 0, 0)
    record(f"tRNS in a {mode} PNG", "10 transparency", "flattened on white")
