"""URL-list import against a local HTTP server on 127.0.0.1: good, broken, slow, oversize, non-image."""

import json
from pathlib import Path

import pytest
from http_fixture import ServerState, serve

from core.errors import DatasetError
from core.ingest import MANIFEST_NAME, REPORT_NAME, IngestConfig, file_stem, import_urls, parse_url_list, safe_name
from workbench.cli import main

FAST = IngestConfig(workers=6, timeout=0.5, retries=1, backoff=0.01, max_bytes=512 * 1024)


@pytest.fixture(scope="module")
def images(tiny_dataset):
    return {path.name: path.read_bytes() for path in sorted(tiny_dataset.glob("*/*.jpg"))}


@pytest.fixture
def server(images):
    state = ServerState(
        dict(images, **{"..%2F..%2Fpwned.jpg": images["gc_colosseum.jpg"]}), slow_seconds=1.2, big_bytes=1024 * 1024
    )
    with serve(state) as base:
        yield base, state


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_parse_url_list_reports_malformed_lines_with_numbers(tmp_path):
    raw = (
        "\ufeff# a comment\n"
        "\n"
        "fish\thttp://example.invalid/a.jpg\n"
        "   # indented comment\n"
        "no tab here http://example.invalid/b.jpg\n"
        "fish\thttp://x.invalid/c.jpg\textra\n"
        "\thttp://example.invalid/d.jpg\n"
        "fish\t\n"
        "fish\tfile:///etc/passwd\n"
        "fish\tftp://example.invalid/e.jpg\n"
        "fish\t/relative/f.jpg\n"
        "fish\thttp://\n"
        "fish\thttp://host:99999/x.jpg\n"
        "../../etc\thttps://example.invalid/g.png\n"
    ).encode("utf-8") + b"fish\thttp://example.invalid/\xff\xfe.jpg\n"
    path = tmp_path / "list.tsv"
    path.write_bytes(raw)
    parsed = parse_url_list(path)
    assert [(e.line, e.label, e.folder) for e in parsed.entries] == [
        (3, "fish", "fish"),
        (14, "../../etc", "etc-74ccf3c5"),
    ]
    reasons = {m.line: m.reason for m in parsed.malformed}
    assert reasons == {
        5: "expected label<TAB>url, found 1 tab-separated field(s)",
        6: "expected label<TAB>url, found 3 tab-separated field(s)",
        7: "empty label",
        8: "empty URL",
        9: "unsupported URL scheme 'file' (only http and https)",
        10: "unsupported URL scheme 'ftp' (only http and https)",
        11: "unsupported URL scheme none (only http and https)",
        12: "URL has no host",
        13: "invalid URL (Port out of range 0-65535)",
        15: "not valid UTF-8",
    }
    with pytest.raises(DatasetError, match="missing.tsv: cannot read URL list"):
        parse_url_list(tmp_path / "missing.tsv")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("../../etc", "etc"),
        ("..", "x"),
        ("a/b\\c", "a_b_c"),
        (".hidden", "hidden"),
        ("Fische & Vögel", "Fische_Vögel"),
        ("\udcff\udcfe", "x"),
    ],
)
def test_safe_name_neutralises_paths(text, expected):
    assert safe_name(text, "x") == expected


def test_file_stem_is_safe_and_unique_per_url():
    a, b = file_stem("http://h/a/image.jpg"), file_stem("http://h/b/image.jpg")
    assert a.startswith("image-") and b.startswith("image-") and a != b
    assert "/" not in file_stem("http://h/..%2F..%2Fetc%2Fpasswd") and not file_stem("http://h/..%2F..%2Fx").startswith(
        "."
    )
    assert file_stem("http://h/").startswith("image-")


def saved_label_folders(out: Path) -> dict[str, str]:
    return json.loads((out / REPORT_NAME).read_text())["label_folders"]


def test_import_downloads_good_urls_and_reports_every_failure(tmp_path, server, images):
    base, state = server
    lines = [
        "# good ones, through several routes",
        f"fish\t{base}/img/gc_fish1.jpg",
        f"fish\t{base}/chunked/gc_fish2.jpg",
        f"fish\t{base}/as-text/gc_fish3.jpg",
        f"tools\t{base}/redirect/gc_hammer1.jpg",
        f"tools\t{base}/flaky/1/gc_wrench.jpg",
        f"../../outside\t{base}/img/gc_burj.jpg",
        f"tools\t{base}/img/..%2F..%2Fpwned.jpg",
        "",
        "# broken ones",
        f"fish\t{base}/404",
        f"fish\t{base}/500",
        f"fish\t{base}/flaky/5/gc_fish4.jpg",
        f"fish\t{base}/slow",
        f"fish\t{base}/drip",
        f"fish\t{base}/big-declared",
        f"fish\t{base}/big-chunked",
        f"fish\t{base}/html",
        f"fish\t{base}/truncated/gc_fish5.jpg",
        f"fish\t{base}/redirect-loop",
        f"fish\t{base}/redirect-ftp",
        f"fish\t{base}/close",
        "fish\thttp://127.0.0.1:9/refused.jpg",
        "# duplicates",
        f"fish\t{base}/img/gc_fish1.jpg",
        f"landmarks\t{base}/img/gc_fish1.jpg?copy=1",
        "fish\tfile:///etc/passwd",
    ]
    out = tmp_path / "data"
    calls = []
    report = import_urls(
        write_list(tmp_path / "list.tsv", lines), out, FAST, progress=lambda d, t: calls.append((d, t))
    )
    by_line = {item.line: item for item in report.items}
    status = {line: item.status for line, item in by_line.items()}
    assert [line for line, s in status.items() if s == "downloaded"] == [2, 3, 4, 5, 6, 7, 8]
    reasons = {line: by_line[line].reason for line in range(11, 24)}
    assert reasons[11] == "HTTP 404 Not Found"
    assert reasons[12] == "HTTP 500 Internal Server Error (after 2 attempts)"
    assert reasons[13] == "HTTP 503 Service Unavailable (after 2 attempts)"
    assert reasons[14] == "timed out after 0.5 s (no response) (after 2 attempts)"
    assert reasons[15] == "timed out after 0.5 s (body too slow) (after 2 attempts)"
    assert reasons[16] == f"too large: Content-Length 1,000,000,000,000 bytes > limit {FAST.max_bytes:,}"
    assert reasons[17] == f"too large: body exceeds limit of {FAST.max_bytes:,} bytes"
    assert reasons[18].startswith("not a usable image: ") and reasons[18].endswith(
        "/html: not a recognised image format (an HTML page)"
    )
    assert "corrupt or truncated image" in reasons[19]
    assert reasons[20].startswith("HTTP 302") and "redirect" in reasons[20]
    assert reasons[21] == "redirect to unsupported URL scheme 'ftp' refused (ftp://127.0.0.1/secret.jpg)"
    assert "(after 2 attempts)" in reasons[22] and "(after 2 attempts)" in reasons[23]
    assert status[25] == "duplicate" and by_line[25].reason == "same URL as line 2"
    assert status[26] == "duplicate" and by_line[26].reason == f"same content as {by_line[2].path}"
    assert [m.line for m in report.malformed] == [27]
    assert report.counts() == {"downloaded": 7, "present": 0, "failed": 13, "duplicate": 2, "malformed": 1}
    assert by_line[6].attempts == 2 and state.hits["/flaky/1/gc_wrench.jpg"] == 2  # retried once, then succeeded
    assert state.hits["/404"] == 1 and state.hits["/big-declared"] == 1  # permanent failures are not retried
    assert calls[-1] == (22, 22)

    # files: folder per label, extension from the decoded content, nothing outside out, nothing hidden but the manifest
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(
        ["list.tsv", f"data/{MANIFEST_NAME}", f"data/{REPORT_NAME}"]
        + [f"data/{by_line[line].path}" for line in range(2, 9)]
    )
    assert by_line[7].path.startswith("outside-") and "/gc_burj-" in by_line[7].path  # label ../../outside, hashed
    assert by_line[8].path.startswith("tools/pwned-")
    assert saved_label_folders(out)["../../outside"] == by_line[7].path.split("/")[0]
    assert all(by_line[line].path.endswith(".jpg") for line in range(2, 9))
    for line in (2, 5):
        assert (out / by_line[line].path).read_bytes() == images[Path(by_line[line].url).name]
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["counts"] == report.counts() and len(saved["items"]) == 22

    # the folder is a dataset: scanning it finds exactly the downloaded images
    from core.data import scan_folder

    assert len(scan_folder(out).dataset) == 7


def test_import_resumes_and_refetches_what_is_missing(tmp_path, server):
    base, state = server
    listing = write_list(tmp_path / "list.tsv", [f"fish\t{base}/img/gc_fish{n}.jpg" for n in range(1, 7)])
    first = import_urls(listing, tmp_path / "out", FAST)
    assert first.counts()["downloaded"] == 6
    hits = sum(state.hits.values())
    again = import_urls(listing, tmp_path / "out", FAST)
    assert again.counts() == {"downloaded": 0, "present": 6, "failed": 0, "duplicate": 0, "malformed": 0}
    assert sum(state.hits.values()) == hits  # nothing fetched
    (tmp_path / "out" / first.items[0].path).unlink()
    (tmp_path / "out" / first.items[1].path).write_bytes(b"half a file")
    third = import_urls(listing, tmp_path / "out", FAST)
    assert [item.status for item in third.items] == [
        "downloaded",
        "downloaded",
        "present",
        "present",
        "present",
        "present",
    ]
    assert sum(state.hits.values()) == hits + 2


def test_cli_import_urls(tmp_path, server, capsys, caplog):
    base, _ = server
    listing = write_list(tmp_path / "list.tsv", [f"fish\t{base}/img/gc_fish1.jpg", f"fish\t{base}/404", "oops"])
    out = tmp_path / "out"
    assert main(["import-urls", str(listing), "--out", str(out), "--timeout", "1", "--retries", "0", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "1 downloaded, 0 already present, 1 failed, 0 duplicate(s), 1 malformed line(s)" in printed
    assert (
        "line 3: malformed: expected label<TAB>url" in printed
        and f"line 2: failed: {base}/404: HTTP 404 Not Found" in printed
    )
    assert main(["import-urls", str(tmp_path / "nope.tsv"), "--out", str(out), "--quiet"]) == 2
    assert "nope.tsv: cannot read URL list" in caplog.text
    capsys.readouterr()
    assert main(["import-urls", str(listing), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "argument --workers: must be a finite positive number, got 0" in error and error.count("\n") == 1
    (tmp_path / "afile").write_text("x")
    assert main(["import-urls", str(listing), "--out", str(tmp_path / "afile"), "--quiet"]) == 2
    assert "afile: exists and is not a folder" in caplog.text
