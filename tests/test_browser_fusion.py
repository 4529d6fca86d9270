"""The fusion panel in a real browser: the tiny real set with the demo's attributes, a weight slider moved by keyboard,
the fused results redrawn. Screenshots: ``test-artifacts/screenshots/search_fusion_{before,after}.png``."""

import re
import shutil

import pytest
from browser import (
    ARTIFACTS,
    CHROMIUM,
    RESULT_LINE,
    VIEWPORT,
    goto_app,
    launch_chromium,
    screenshot,
    start_app,
    wait_for,
    wait_for_results,
    wait_idle,
)

from core.attributes import ATTRIBUTES_FILE, DERIVED, derive_attributes, write_attributes
from core.images import load_image

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("fusion-data") / "tiny"
    shutil.copytree(tiny_dataset, root)
    rows = []
    for path in sorted(root.glob("*/*.jpg")):
        values = derive_attributes(load_image(path))
        rows.append((path.relative_to(root).as_posix(), [values[name] for name in DERIVED]))
    write_attributes(root / ATTRIBUTES_FILE, list(DERIVED), rows)
    server = start_app(root, tmp_path_factory.mktemp("fusion-work"), ARTIFACTS / "streamlit-server-fusion.log")
    yield server
    server.stop()


@pytest.fixture
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing")
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(60_000)
        yield context.new_page()
        context.close()
        browser.close()


def fused_lines(page) -> list[str]:
    """The fused results as "rank. label · score" lines, in the panel only."""
    texts = page.locator(".st-key-fusion_panel").get_by_test_id("stMarkdownContainer").all_inner_texts()
    return [text.strip() for text in texts if RESULT_LINE.match(text.strip())]


def test_moving_a_fusion_slider_redraws_the_fused_results(page, app):
    goto_app(page, app, heading="Search by image")
    wait_for_results(page)
    page.get_by_text("Fuse meanings of similar", exact=False).click()
    panel = page.locator(".st-key-fusion_panel")
    caption = panel.get_by_test_id("stCaptionContainer").filter(has_text=re.compile(r"fusion ranker · 12 results"))
    wait_for(page, caption, 180)  # the first use fits the attribute rankers
    wait_idle(page)
    before = fused_lines(page)
    assert len(before) == 12 and "1.00 x P(same label folders)" in caption.first.inner_text()
    screenshot(page, "search_fusion_before")

    setting = panel.get_by_role("slider").nth(1)  # label folders, setting, colour
    setting.focus()
    page.keyboard.press("End")  # weight 1 for "same setting"
    wait_for(page, panel.get_by_test_id("stCaptionContainer").filter(has_text="P(same setting)"))
    wait_idle(page)
    after = fused_lines(page)
    assert len(after) == 12 and after != before, (before, after)
    screenshot(page, "search_fusion_after")
