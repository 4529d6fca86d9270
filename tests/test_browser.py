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
    assert [label.strip() for label in metrics] == ["mean rank", "median rank", "top-1", "top-5"]
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
    wait_for(page, main(page).get_by_text(re.compile(r"Cosine similarity \d\.\d{3}")))
    wait_idle(page)
    assert_no_exception(page)
    screenshot(page, "search_explain")
