"""Issue 22's app moves in a real browser (headless Chromium, see tests/test_browser.py): pretrained vs fine-tuned
side by side on Compare, the ONNX downloads, the per-category table at a laptop's width, the upload kept across
page switches and the one-epoch training chart. Screenshots go to ``test-artifacts/screenshots/``.

The server serves the tiny set with a second featurizer already there: run ``small``, the pretrained body kept at
a 128-pixel input (0 epochs, no training), and run ``one``, a manifest with one recorded epoch (older, so Compare
sets ``small`` beside the pretrained model).
"""

import json
import os
import re
import time

import pytest
from browser import (
    ARTIFACTS,
    CHROMIUM,
    VIEWPORT,
    assert_no_exception,
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
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_dataset):
    from core.artifacts import SCHEMA_VERSION
    from core.config import TrainConfig
    from core.train import fine_tune
    from workbench.workflows import READY_RANKERS, ensure_learned
    from workbench.workspace import open_workspace, spec_from_environment

    workdir = tmp_path_factory.mktemp("browser-moves")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(tiny_dataset))
        patch.setenv("WORKBENCH_WORKDIR", str(workdir))
        ws = open_workspace(spec_from_environment())
        ensure_learned(ws, READY_RANKERS)
        one = ws.layout.run("one")
        one.mkdir(parents=True)
        epoch = {"epoch": 1, "train_loss": 1.05, "train_accuracy": 0.5, "test_loss": 0.9, "test_accuracy": 0.667}
        (one / "manifest.json").write_text(
            json.dumps({"schema_version": SCHEMA_VERSION, "status": "complete", "history": [{**epoch, "seconds": 4}]})
        )
        day_ago = time.time() - 86_400
        os.utime(one / "manifest.json", (day_ago, day_ago))
        fine_tune(ws.dataset.records, ws.prepared.split, TrainConfig(epochs=0, input_size=128), ws.layout.run("small"))
    server = start_app(tiny_dataset, workdir, ARTIFACTS / "streamlit-server-moves.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: .venv/bin/pip install -r requirements-browser.txt"
    )
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def new_page(chromium, viewport=VIEWPORT, downloads: bool = False):
    context = chromium.new_context(viewport=viewport, accept_downloads=downloads)
    context.set_default_timeout(60_000)
    return context.new_page()


def test_compare_shows_pretrained_and_fine_tuned_side_by_side(chromium, app):
    page = new_page(chromium)
    goto_app(page, app, heading="Search by image")
    open_page(page, "Compare rankers")
    wait_for(page, main(page).get_by_role("heading", name="Side by side with another featurizer"))
    wait_idle(page)
    tables = main(page).get_by_test_id("stDataFrame")
    rows = read_table(tables.filter(has_text="featurizer").last)
    assert [row["featurizer"] for row in rows[:2]] == ["pretrained", "small"]
    assert rows[0]["ranker"] == rows[1]["ranker"] == "cosine" and "[" in rows[0]["MAP@R"]
    assert main(page).get_by_test_id("stPlotlyChart").last.locator("svg.main-svg").count() >= 1
    assert_no_exception(page)
    main(page).get_by_role("heading", name="Side by side with another featurizer").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot(page, "compare_side_by_side").with_name("compare_side_by_side_view.png")))
    page.context.close()


def test_the_model_downloads_as_onnx_with_and_without_the_projection(chromium, app, tmp_path):
    import numpy as np
    import onnxruntime as ort

    page = new_page(chromium, downloads=True)
    goto_app(page, app, heading="Search by image")
    open_page(page, "Evaluation")
    section = main(page)
    plain_button = section.get_by_role("button", name=re.compile(r"^Download efficientnet_lite0-\w+\.onnx \("))
    wait_for(page, plain_button)  # the auto back end's export exists already: offered at once
    with page.expect_download() as plain_download:
        plain_button.click()
    plain = tmp_path / plain_download.value.suggested_filename
    plain_download.value.save_as(plain)
    assert plain.stat().st_size > 1_000_000

    section.get_by_text("with the projection ranker baked in", exact=True).click()
    export = wait_for(page, section.get_by_role("button", name="Export to ONNX"))
    screenshot(page, "evaluation_onnx_before_export")
    export.click()
    baked_button = section.get_by_role("button", name=re.compile(r"^Download efficientnet_lite0-\w+-projection\.onnx"))
    wait_for(page, baked_button)
    wait_idle(page)
    with page.expect_download() as baked_download:
        baked_button.click()
    baked = tmp_path / baked_download.value.suggested_filename
    baked_download.value.save_as(baked)
    pixels = np.zeros((2, 224, 224, 3), np.uint8)
    plain_out = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
    baked_out = ort.InferenceSession(str(baked), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
    assert plain_out.shape == (2, 1280) and baked_out.shape[0] == 2 and baked_out.shape[1] != 1280
    assert_no_exception(page)
    baked_button.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot(page, "evaluation_onnx").with_name("evaluation_onnx_view.png")))
    page.context.close()


def test_the_per_category_table_fits_on_a_laptop_screen(chromium, app):
    page = new_page(chromium, viewport={"width": 1280, "height": 800})
    goto_app(page, app, heading="Search by image")
    open_page(page, "Evaluation")
    table = main(page).get_by_test_id("stDataFrame").first
    assert [row["label"] for row in read_table(table)] == ["fish", "landmarks", "tools"]
    scroller = table.locator(".dvn-scroller").first
    overflow = scroller.evaluate("element => element.scrollWidth - element.clientWidth")
    assert overflow <= 1, f"the per-category table scrolls sideways by {overflow} px: its last column is cut"
    screenshot(page, "evaluation_1280")
    page.context.close()


def test_an_upload_stays_the_query_after_visiting_another_page(chromium, app, tiny_dataset):
    page = new_page(chromium)
    goto_app(page, app, heading="Search by image")
    wait_for_results(page)
    upload(page, tiny_dataset / "tools" / "gc_hammer1.jpg")
    before = wait_for_results(page, query="gc_hammer1.jpg")
    open_page(page, "Evaluation")
    open_page(page, "Search", "Search by image")
    after = wait_for_results(page, query="gc_hammer1.jpg")
    assert after.hits == before.hits
    wait_for(page, main(page).get_by_role("button", name=re.compile("Searching with your upload gc_hammer1.jpg")))
    screenshot(page, "search_upload_kept")
    page.context.close()


def test_a_one_epoch_run_reads_as_bars(chromium, app):
    page = new_page(chromium)
    goto_app(page, app, heading="Search by image")
    open_page(page, "Training")
    main(page).get_by_test_id("stExpander").filter(has_text="one").first.click()
    chart = wait_for(page, main(page).get_by_test_id("stPlotlyChart").first)
    wait_for(page, chart.get_by_text(re.compile("the only one")))
    assert chart.locator("g.bars, g.trace.bars").count() >= 1
    wait_idle(page)
    screenshot(page, "training_one_epoch")
    page.context.close()
