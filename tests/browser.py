"""Helpers for the real-browser tests: the Streamlit server as a subprocess, and Playwright page helpers.

Nothing here imports Playwright at module level, so the default test run (which deselects the
``browser`` marker) collects ``tests/test_browser.py`` without Playwright installed.

Streamlit renders asynchronously over a websocket: every helper waits on concrete text or elements
(bounded), never on fixed sleeps. A Python exception drawn by the app (``stException``) ends any wait
at once with its text, instead of running into the timeout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Playwright

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# Headless Debian Chromium in a closed network: without the background-networking flags Chromium keeps
# dialling Google services and those connections are refused; a fresh user-data dir comes with launch().
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}

HEALTH_TIMEOUT_S = 120  # server process start to /_stcore/health answering "ok"
FIRST_PAGE_TIMEOUT_S = 120  # the first page featurizes the gallery (a few seconds for the tiny set)
RERUN_TIMEOUT_S = 60  # any later rerun (widget change, upload, page switch)

RESULTS_CAPTION = re.compile(r"(?P<ranker>[\w-]+) ranker · (?P<count>\d+) results in (?P<ms>\d+) ms")
RESULT_LINE = re.compile(r"^(?P<rank>\d+)\.\s+(?P<label>.+?) · (?P<score>-?\d+(?:\.\d+)?)$")

# Truthy when the app has finished a run: no script running, no stale elements from the previous run,
# no lazily loaded component (chart, table) still showing its skeleton, no image still downloading
# (a failed image counts as complete; ``wait_for_results`` reports those). "exception" ends waits early.
_IDLE_JS = """() => {
    if (document.querySelector('[data-testid="stException"]')) return "exception";
    const busy = document.querySelector(
        '[data-testid="stStatusWidgetRunningIcon"], [data-stale="true"], [data-testid="stSkeleton"]');
    const loading = [...document.images].some(img => !img.complete && img.loading !== "lazy");
    return busy || loading ? false : "idle";
}"""


class AppError(AssertionError):
    """The app drew a Python exception (``st.exception`` / an uncaught error) in the page."""


# --- the server -----------------------------------------------------------------------------------


@dataclass
class AppServer:
    """A running ``streamlit run streamlit_app.py`` on 127.0.0.1, and what was measured about it."""

    base_url: str
    process: subprocess.Popen
    log_path: Path
    timings: dict[str, float] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as err:
            return f"(no server log: {err})"

    def stop(self, timeout_s: float = 15) -> None:
        """Terminate the server; kill it if it does not exit within ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(data: Path, workdir: Path, log_path: Path, timeout_s: float = HEALTH_TIMEOUT_S) -> AppServer:
    """Start the app on a free loopback port and wait until its health endpoint answers ``ok``.

    The file watcher is off through the project's ``.streamlit/config.toml``, exactly as for ``make run``: the
    repository holds ``.venv`` (inotify overflows) and files edited while the tests run must not hot-reload the
    app under them.

    Raises:
        AssertionError: The server exited or was not healthy within ``timeout_s``; the message holds the
            tail of its log.
    """
    port = free_port()
    env = {**os.environ, "WORKBENCH_DATA": str(data), "WORKBENCH_WORKDIR": str(workdir)}
    # the file watcher is off in .streamlit/config.toml, as for `make run`
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = AppServer(f"http://127.0.0.1:{port}", process, log_path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    deadline = start + timeout_s
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"the Streamlit server exited with status {process.returncode} before it was healthy; "
                f"its log ({log_path}) ends with:\n{server.log_tail()}"
            )
        try:
            with opener.open(f"{server.base_url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.perf_counter() > deadline:
            server.stop()
            raise AssertionError(
                f"the Streamlit server on {server.base_url} was not healthy after {timeout_s:.0f} s; "
                f"its log ({log_path}) ends with:\n{server.log_tail()}"
            )
        time.sleep(0.2)  # bounded poll of the health endpoint
    server.timings["server_start_to_health_s"] = round(time.perf_counter() - start, 2)
    return server


def write_timings(server: AppServer, path: Path = ARTIFACTS / "browser-timings.json") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(server.timings, indent=2) + "\n")


# --- the browser ----------------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, never a browser downloaded by ``playwright install``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))


# --- waiting --------------------------------------------------------------------------------------


def exception_text(page: Page) -> str:
    exceptions = page.get_by_test_id("stException")
    return "\n---\n".join(exceptions.all_inner_texts()) if exceptions.count() else ""


def assert_no_exception(page: Page) -> None:
    """No exception block and no Python traceback anywhere in the page."""
    shown = exception_text(page)
    if shown:
        raise AppError(f"the app shows an exception:\n{shown}")
    body = page.locator("body").inner_text()
    assert "Traceback (most recent call last)" not in body, f"a Python traceback is shown:\n{body[:3000]}"


def wait_for(page: Page, target: Locator, timeout_s: float = RERUN_TIMEOUT_S) -> Locator:
    """Wait until ``target`` is visible; an exception drawn by the app ends the wait with its text."""
    target.or_(page.get_by_test_id("stException")).first.wait_for(timeout=timeout_s * 1000)
    assert_no_exception(page)
    return target


def wait_idle(page: Page, timeout_s: float = RERUN_TIMEOUT_S) -> None:
    """Wait until the current run is finished and drawn (see ``_IDLE_JS``). Call it after the page shows
    something the awaited run produces, or a run that has not started yet looks idle."""
    state = page.wait_for_function(_IDLE_JS, timeout=timeout_s * 1000).json_value()
    if state == "exception":
        raise AppError(f"the app shows an exception:\n{exception_text(page)}")


# --- pages ----------------------------------------------------------------------------------------


def goto_app(page: Page, server: AppServer, path: str = "", heading: str | None = None) -> None:
    """Load the app (optionally a page's URL path) in a fresh session and wait for ``heading``.

    The first load of the server featurizes the gallery; its duration is recorded as
    ``first_page_interactive_s``.
    """
    start = time.perf_counter()
    page.goto(f"{server.base_url}/{path}", wait_until="domcontentloaded")
    if heading is not None:
        wait_for(page, page.get_by_role("heading", name=heading), FIRST_PAGE_TIMEOUT_S)
    else:
        wait_for(page, page.get_by_test_id("stSidebarNav"), FIRST_PAGE_TIMEOUT_S)
    wait_idle(page, FIRST_PAGE_TIMEOUT_S)
    server.timings.setdefault("first_page_interactive_s", round(time.perf_counter() - start, 2))


def open_page(page: Page, link: str, heading: str | None = None) -> None:
    """Switch page through the sidebar navigation link ``link`` and wait until ``heading`` is drawn."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=link, exact=True).click()
    wait_for(page, page.get_by_role("heading", name=heading or link))
    wait_idle(page)


def sidebar(page: Page) -> Locator:
    return page.get_by_test_id("stSidebar")


def main(page: Page) -> Locator:
    return page.get_by_test_id("stMain")


def choose(page: Page, label: str, option: str, within: Locator | None = None) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (by default, the one in the sidebar)."""
    scope = within if within is not None else sidebar(page)
    scope.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def upload(page: Page, path: Path, label: str = "Upload a photo") -> None:
    """Give ``path`` to the file uploader labelled ``label``."""
    uploader = page.get_by_test_id("stFileUploader").filter(has_text=label)
    uploader.locator("input[type=file]").set_input_files(path)


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG to ``test-artifacts/screenshots/<name>.png``.

    Streamlit scrolls inside ``stMain``, not the document, so Playwright's ``full_page`` alone stops at
    the viewport: the viewport is stretched to the content's height for the shot and restored after.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    viewport = page.viewport_size or VIEWPORT
    height = page.evaluate(
        """() => Math.max(window.innerHeight, ...['stMain', 'stSidebarContent'].map(id => {
            const element = document.querySelector(`[data-testid="${id}"]`);
            return element ? element.scrollHeight : 0;
        }))"""
    )
    page.set_viewport_size({"width": viewport["width"], "height": min(int(height), 10_000)})
    try:
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        page.screenshot(path=path, full_page=True)
    finally:
        page.set_viewport_size(viewport)
    return path


# --- reading what the pages show ------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    rank: int
    label: str
    score: float


@dataclass(frozen=True)
class SearchResults:
    """The Search page's results as the browser shows them."""

    ranker: str
    count: int
    milliseconds: int
    query: str
    hits: list[Hit]


def wait_for_results(page: Page, ranker: str | None = None, query: str | None = None,
                     timeout_s: float = RERUN_TIMEOUT_S) -> SearchResults:  # fmt: skip
    """Wait for the Search page's results grid (optionally for a given ranker and query) and read it.

    Checks that the grid is complete: as many result lines as the caption announces, ranks 1..n, and
    every image (query + hits) actually loaded in the browser.
    """
    ranker_pattern = re.escape(ranker) if ranker else r"[\w-]+"
    caption = page.get_by_test_id("stCaptionContainer").filter(
        has_text=re.compile(rf"{ranker_pattern} ranker · \d+ results in \d+ ms")
    )
    wait_for(page, caption, timeout_s)
    if query is not None:
        wait_for(page, page.get_by_test_id("stImageCaption").filter(has_text=f"query: {query}"), timeout_s)
    wait_idle(page, timeout_s)

    match = RESULTS_CAPTION.search(caption.first.inner_text())
    assert match, caption.first.inner_text()
    texts = main(page).get_by_test_id("stMarkdownContainer").all_inner_texts()
    lines = [RESULT_LINE.match(text.strip()) for text in texts]
    hits = sorted((Hit(int(m["rank"]), m["label"], float(m["score"])) for m in lines if m), key=lambda hit: hit.rank)
    count = int(match["count"])
    assert [hit.rank for hit in hits] == list(range(1, count + 1)), f"caption says {count} results, grid shows {hits}"
    queries = [text for text in page.get_by_test_id("stImageCaption").all_inner_texts() if text.startswith("query: ")]
    assert len(queries) == 1, queries

    images = main(page).get_by_test_id("stImage").locator("img")
    assert images.count() >= count + 1, f"{images.count()} images for {count} results and the query"
    broken = images.evaluate_all("imgs => imgs.filter(img => !(img.complete && img.naturalWidth)).map(img => img.src)")
    assert not broken, f"images that did not load: {broken}"
    return SearchResults(match["ranker"], count, int(match["ms"]), queries[0].removeprefix("query: "), hits)


def read_table(table: Locator) -> list[dict[str, str]]:
    """Rows of an ``st.dataframe``, read from the accessibility table glide-data-grid renders beside its
    canvas (``table[role=grid]``). The grid is virtualised: only rows in view are there, which is every
    row of the small tables these pages show."""
    grid = table.locator("table[role=grid]")  # visually hidden, so CSS selectors rather than get_by_role
    grid.locator("td[role=gridcell]").first.wait_for(state="attached")  # rows come after the grid measures
    previous: list[dict[str, str]] | None = None
    for _ in range(20):  # bounded poll (2 s at most) until two reads agree
        headers = [text.strip() for text in grid.locator("th[role=columnheader]").all_text_contents()]
        rows = [
            dict(zip(headers, row.locator("td[role=gridcell]").all_text_contents(), strict=True))
            for row in grid.locator("tbody tr[role=row]").all()
        ]
        if rows == previous:
            break
        previous = rows
        time.sleep(0.1)
    return rows
