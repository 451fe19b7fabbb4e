"""A real browser on the served page: headless Chromium (Debian's ``chromium``) driven by Playwright.

It opens the viewer, searches the explanations, clicks a hit and then a token of the transcript, and sees
each one's explanation. Skipped (with the reason) only where Playwright or Chromium is not installed;
``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from nla.audit.store import Store

pytest.importorskip("fastapi", reason="nla serve is an optional extra: pip install 'nla[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("NLA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(served: dict):
    import uvicorn

    from nla.serve.app import create_app
    from nla.serve.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(served["db"], nla=served["nla"]), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    host, port = sock.getsockname()[:2]
    yield f"http://{host}:{port}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_search_click_and_read_explanations(url: str, served: dict, tmp_path) -> None:
    with Store(served["db"]) as s:
        expl = {r[0]: r[1] for r in s.query("SELECT pos_id, explanation FROM explanations")}
    word = expl[min(expl)].split(" about ")[1].split()[0]  # a word an explanation of the DB contains
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(url)
            page.wait_for_selector("#docs .doc")
            page.fill("#q", word)
            page.click("#search-btn")
            first = page.locator(".hit").first
            first.wait_for()
            assert page.locator(".hit").count() == sum(f"about {word} " in e for e in expl.values())
            pos = int(first.get_attribute("data-pos"))
            first.click()
            page.wait_for_selector(f".tok.selected[data-pos='{pos}']")
            page.wait_for_function(
                "t => document.querySelector('#detail-explanation')?.textContent === t", arg=expl[pos]
            )
            other = page.locator(f".tok.explained:not([data-pos='{pos}'])").nth(2)
            other_pos = int(other.get_attribute("data-pos"))
            other.click()
            page.wait_for_function(
                "t => document.querySelector('#detail-explanation')?.textContent === t", arg=expl[other_pos]
            )
            assert "round-trip cosine" in page.inner_text("#detail")
            page.screenshot(path=str(tmp_path / "serve.png"))
        finally:
            browser.close()
