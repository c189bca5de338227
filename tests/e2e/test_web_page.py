"""The results API's web page in a real headless Chromium: submit a JPEG and watch it finish."""

import re
from pathlib import Path

import httpx
import pytest

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from tests.client import auth

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                  "(apt-get install -y chromium)")


def test_page_submits_an_image_and_shows_status_output_result_and_trace(
        stack: LocalStack, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(sample_jpeg(640, 480))
    page_errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{stack.results_url}/ui")
            page.fill("#ingest-url", stack.ingest_url)
            page.fill("#api-key", stack.api_key)
            page.set_input_files("#files", photo)
            page.fill("#prompt", "What is in this picture?")
            page.fill("#max-new-tokens", "24")
            page.click("#submit")
            sync_api.expect(page.locator("#status")).to_have_text("succeeded", timeout=90_000)
            sync_api.expect(page.locator("#result-text")).not_to_be_empty()
            job_id = page.locator("#job-id").text_content() or ""
            shown = {name: page.locator(f"#{name}").text_content() or "" for name in
                     ("result-text", "output", "trace-id", "error")}
            page.screenshot(path=tmp_path / "page.png", full_page=True)
        finally:
            browser.close()
    result = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}/result", headers=auth(stack)).json()
    job = httpx.get(f"{stack.results_url}/v1/jobs/{job_id}", headers=auth(stack)).json()
    assert page_errors == [] and shown["error"] == ""
    assert shown["result-text"] == shown["output"] == result["text"]
    assert re.fullmatch(r"[0-9a-f]{32}", shown["trace-id"]) and shown["trace-id"] == job["trace_id"]
