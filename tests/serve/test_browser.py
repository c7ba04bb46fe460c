"""The web page in headless Chromium: pick an image, see its top labels as bars.

Needs Debian's chromium (`apt-get install -y chromium`) and the `playwright` Python package
(`pip install playwright`; its own browser download is not used). Skipped when either is
missing.
"""

from __future__ import annotations

import shutil

import pytest

from incept.serve import create_app, serve_in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium"
)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="no playwright: pip install playwright"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_upload_shows_the_predictions(browser, predictor, photo, tmp_path):
    from incept.classify import classify_files

    image = tmp_path / "holiday.jpg"
    image.write_bytes(photo)
    (expected,) = classify_files([str(image)], predictor, top_k=5)
    with serve_in_thread(create_app(predictor)) as url:
        page = browser.new_page()
        try:
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('3')")
            assert "inception_v3" in page.text_content("#model")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#predictions li", timeout=15_000)
            rows = page.query_selector_all("#predictions li")
            shown = [row.query_selector(".label span").text_content() for row in rows]
            widths = [row.eval_on_selector(".bar", "bar => bar.style.width") for row in rows]
            preview = page.get_attribute("#preview", "src")
            status_line = page.text_content("#status")
        finally:
            page.close()
    assert shown == [entry["label"] for entry in expected["top"]]
    percents = [float(width.rstrip("%")) for width in widths]
    assert percents == pytest.approx(
        [max(100 * entry["probability"], 0.5) for entry in expected["top"]], abs=0.01
    )
    assert preview.startswith("blob:") and status_line == "holiday.jpg"


def test_a_bad_file_shows_the_servers_error(browser, predictor, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    with serve_in_thread(create_app(predictor)) as url:
        page = browser.new_page()
        try:
            page.goto(url + "/")
            page.set_input_files("#file", str(notes))
            page.wait_for_function("document.getElementById('error').textContent !== ''")
            error = page.text_content("#error")
            rows = page.query_selector_all("#predictions li")
        finally:
            page.close()
    assert error.startswith("Could not classify notes.jpg") and "not an image" in error
    assert rows == []
