"""The Streamlit app in a real browser: Debian's headless Chromium driven by Playwright, on the tiny real set.

Run with ``.venv/bin/python -m pytest -m browser`` after ``pip install -r requirements-browser.txt`` and
``apt-get install chromium``. One server (module scope) serves every test; each test opens a fresh browser
context, i.e. a fresh Streamlit session. Full-page screenshots go to ``test-artifacts/screenshots/``,
the server log and the timings to ``test-artifacts/``.

To cover another page: ``goto_app(page, app)``, ``open_page(page, "<nav link>", "<heading>")``, then wait
on that page's own text or elements and ``screenshot(page, "<name>")``.
"""

import re

import pytest
from browser import (
    ARTIFACTS,
    CHROMIUM,
    VIEWPORT,
    assert_no_exception,
    choose,
    goto_app,
    launch_chromium,
    main,
    open_page,
    read_table,
    screenshot,
    sidebar,
    start_app,
    upload,
    wait_for,
    wait_for_results,
    wait_idle,
    write_timings,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_dataset):
    """The app served on 127.0.0.1 over the tiny set, with a fresh workdir (so the first page featurizes)."""
    server = start_app(tiny_dataset, tmp_path_factory.mktemp("browser-work"), ARTIFACTS / "streamlit-server.log")
    yield server
    server.stop()
    write_timings(server)


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: .venv/bin/pip install -r requirements-browser.txt"
    )
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh context (cookies, storage, Streamlit session) per test."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def test_search_page_shows_a_complete_results_grid(page, app):
    goto_app(page, app, heading="Search by image")
    results = wait_for_results(page, ranker="cosine")
    assert results.count == 12 and len(results.hits) == 12
    assert results.query == "fish/gc_fish1.jpg"  # the first gallery image is the default query
    assert results.hits[0].label == "fish" and results.hits[0].score == pytest.approx(1.0, abs=1e-3)  # itself
    scores = [hit.score for hit in results.hits]
    assert scores == sorted(scores, reverse=True)
    assert {hit.label for hit in results.hits} <= {"fish", "landmarks", "tools"}
    assert_no_exception(page)
    screenshot(page, "search")


def test_uploading_a_photo_updates_the_results(page, app, tiny_dataset):
    goto_app(page, app, heading="Search by image")
    before = wait_for_results(page)
    upload(page, tiny_dataset / "tools" / "gc_hammer1.jpg")
    after = wait_for_results(page, query="gc_hammer1.jpg")
    assert after.query == "gc_hammer1.jpg"
    assert after.hits[0].label == "tools" and after.hits[0].score == pytest.approx(1.0, abs=1e-3)  # same photo
    assert after.hits != before.hits
    screenshot(page, "search_upload")


def test_uploading_a_non_image_shows_a_clear_error(page, app, tmp_path):
    fake = tmp_path / "notes_not_a_photo.jpg"
    fake.write_text("this is a text file with a .jpg name\n")
    goto_app(page, app, heading="Search by image")
    wait_for_results(page)
    upload(page, fake)
    error = wait_for(page, main(page).get_by_text(re.compile(r"^Cannot use this file: ")))
    assert fake.name in error.inner_text()
    wait_idle(page)
    assert_no_exception(page)  # a message, not a traceback
    assert main(page).get_by_text(re.compile(r" ranker · \d+ results in ")).count() == 0  # no stale grid
    screenshot(page, "search_bad_upload")


def test_switching_the_ranker_changes_the_results(page, app):
    goto_app(page, app, heading="Search by image")
    cosine = wait_for_results(page, ranker="cosine")
    choose(page, "Ranker", "l2")
    l2 = wait_for_results(page, ranker="l2")
    assert l2.ranker == "l2" and l2.count == cosine.count
    # On unit-length embeddings L2 and cosine rank alike but score differently.
    assert [hit.label for hit in l2.hits] == [hit.label for hit in cosine.hits]
    assert [hit.score for hit in l2.hits] != [hit.score for hit in cosine.hits]
    screenshot(page, "search_l2")


def test_evaluation_page_renders_metrics_and_the_per_category_table(page, app):
    goto_app(page, app, heading="Search by image")
    open_page(page, "Evaluation")
    metrics = main(page).get_by_test_id("stMetricLabel").all_inner_texts()
    assert [label.strip() for label in metrics] == [
        *("mean rank", "median rank", "top-1", "top-5"),
        *("copy recall@1", "mean rank of original"),  # the look metric
    ]
    rows = read_table(main(page).get_by_test_id("stDataFrame").first)
    assert {row["label"] for row in rows} == {"fish", "landmarks", "tools"}
    charts = main(page).get_by_test_id("stPlotlyChart")
    assert charts.count() >= 1 and charts.first.locator("svg.main-svg").count() >= 1  # plotly drew
    screenshot(page, "evaluation")


def test_compare_page_lists_every_ranker(page, app):
    goto_app(page, app, heading="Search by image")
    open_page(page, "Compare rankers")
    rows = read_table(main(page).get_by_test_id("stDataFrame").first)
    rankers = [row["ranker"] for row in rows]
    assert set(rankers) >= {"random", "l1", "l2", "cosine"}, rankers
    assert all(row["mean rank"] for row in rows)
    screenshot(page, "compare")


def test_explore_page_draws_the_map_and_similarity_heatmaps(page, app):
    goto_app(page, app, heading="Search by image")
    open_page(page, "Explore")
    wait_for(page, main(page).get_by_text(re.compile(r"Cosine similarity \d\.\d{3}")))
    wait_idle(page)
    assert main(page).get_by_test_id("stPlotlyChart").first.locator("svg.main-svg").count() >= 1
    assert main(page).get_by_test_id("stImage").count() >= 2  # query and result heatmaps
    screenshot(page, "explore")


def test_dataset_and_training_pages_render(page, app):
    goto_app(page, app, heading="Search by image")
    open_page(page, "Dataset")
    wait_for(page, main(page).get_by_text("fish", exact=False).first)
    wait_idle(page)
    screenshot(page, "dataset")
    open_page(page, "Training")
    wait_for(page, main(page).get_by_text("Start training"))
    wait_idle(page)
    screenshot(page, "training")


def test_search_page_explains_a_result_with_heatmaps(page, app):
    goto_app(page, app, heading="Search by image")
    wait_for_results(page)
    main(page).get_by_text("Explain a result (similarity heatmaps)").click()
    wait_for(page, main(page).get_by_text(re.compile(r"The heatmaps explain the .*cosine similarity \d\.\d{3}")))
    wait_idle(page)
    assert_no_exception(page)
    screenshot(page, "search_explain")


def test_search_says_when_nothing_matches_closely(page, app, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey_wall.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey)
    goto_app(page, app, heading="Search by image")
    wait_for_results(page)
    assert main(page).get_by_text("No close match").count() == 0  # a gallery image matches itself
    upload(page, grey)
    wait_for_results(page, query="grey_wall.png")
    notice = wait_for(page, main(page).get_by_text(re.compile(r"^No close match: the query's best cosine similarity")))
    assert "95 % of gallery images" in notice.inner_text() and "generated non-photo" in notice.inner_text()
    screenshot(page, "search_no_close_match")
    main(page).get_by_text("Explain a result (similarity heatmaps)").click()
    wait_for(page, main(page).get_by_text(re.compile(r"centre-cropped to its square input")))
    wait_idle(page)
    screenshot(page, "search_no_close_match_explained")


def test_explore_umap_is_a_real_umap_map(page, app):
    pytest.importorskip("umap")
    goto_app(page, app, heading="Search by image")
    open_page(page, "Explore")
    wait_for(page, main(page).get_by_text(re.compile(r"^PCA of 18 gallery embeddings")))
    sidebar_radio = page.get_by_test_id("stSidebar").get_by_text("UMAP", exact=True)
    sidebar_radio.click()
    wait_for(page, main(page).get_by_text(re.compile(r"^UMAP of 18 gallery embeddings")), timeout_s=300)
    wait_idle(page, 300)
    assert main(page).get_by_text("is not available here").count() == 0
    screenshot(page, "explore_umap")


def _phase_screenshots(page, run: str, names: dict[str, str], timeout_s: float = 240) -> str:
    """Poll the job's progress text until the run is done; screenshot each phase the first time it shows."""
    import time

    deadline, seen, text = time.monotonic() + timeout_s, set(), ""
    progress = main(page).get_by_test_id("stProgress").filter(has_text=f"run {run}:")
    while time.monotonic() < deadline:
        texts = progress.all_inner_texts()
        text = texts[0].split(" · ")[0] if texts else ""  # the phase, without its elapsed time and estimate
        for phase, name in names.items():
            if phase in text and phase not in seen:
                seen.add(phase)
                screenshot(page, name)
        if text.endswith("failed"):
            raise AssertionError(f"run {run} failed: {main(page).get_by_test_id('stAlert').all_inner_texts()}")
        if text.endswith("done"):
            return text
        time.sleep(0.2)  # bounded poll of a background job
    raise AssertionError(f"run {run} did not finish in {timeout_s} s; last progress: {text!r}")


def _start_run(page, run: str, epochs: int) -> None:
    form = main(page).get_by_test_id("stForm")
    form.get_by_label("Run name", exact=True).fill(run)
    form.get_by_label("Epochs", exact=True).fill(str(epochs))
    form.get_by_label("Batch size", exact=True).fill("6")
    form.get_by_label("Input size (0 = model's)", exact=True).fill("128")
    form.get_by_role("button", name="Start training").click()


def test_training_shows_each_phase_and_the_finished_run_without_a_reload(page, app):
    goto_app(page, app, heading="Search by image")
    open_page(page, "Training")
    wait_for(page, main(page).get_by_text("Start training"))
    _start_run(page, "one", 1)
    final = _phase_screenshots(
        page,
        "one",
        {"fine-tuning, epoch": "training_one_finetuning", "images": "training_one_featurizing"},
    )
    assert final == "run one: done"
    wait_for(page, main(page).get_by_test_id("stExpander").filter(has_text="one").first)  # without a reload
    wait_idle(page)
    sidebar(page).get_by_role("combobox", name="Featurizer", exact=True).click()
    assert page.get_by_role("option", name="one", exact=True).count() == 1  # and in the featurizer picker
    page.keyboard.press("Escape")
    screenshot(page, "training_one_done")


def test_console_stays_quiet(app):
    """Last in the file: the server's console after every session above (search, evaluate, train, explore)."""
    lines = app.log_path.read_text(errors="replace").splitlines()
    app.timings["console_lines"] = len(lines)
    assert not [line for line in lines if "notify" in line or "watcher" in line.lower()], app.log_tail()
    assert len(lines) < 100, app.log_tail(100)
