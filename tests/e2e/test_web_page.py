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

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                  "(apt-get install -y chromium)")


def test_the_page_talks_only_to_its_own_deployment_whatever_its_url_says(
        stack: LocalStack) -> None:
    # A link could once set the ingest URL the page sends the API key to.
    response = httpx.get(f"{stack.results_url}/ui", params={"ingest": "https://elsewhere.example"})
    assert f'<meta name="tessera-ingest-url" content="{stack.ingest_url}">' in response.text
    assert "elsewhere" not in response.text
    policy = dict(item.strip().split(" ", 1) for item in
                  response.headers["content-security-policy"].split(";"))
    assert policy["connect-src"] == f"'self' {stack.ingest_url}"
    script = httpx.get(f"{stack.results_url}/ui/app.js").text
    assert "location.search" not in script and "localStorage" not in script


@needs_chromium
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
            page.goto(f"{stack.results_url}/ui?ingest=https://elsewhere.example")
            sync_api.expect(page.locator("#ingest-url")).to_have_text(stack.ingest_url)
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
