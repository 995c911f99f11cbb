"""The viewer in a real browser: Debian's headless Chromium driven by Selenium against the real
server (uvicorn on 127.0.0.1, a free port). Picks a case, moves the slider and the arrow keys,
switches modes, clicks a hit, goes back and forward; checks the page's text against the API and
that every image loaded."""

from __future__ import annotations

import re

import httpx
import pytest

from benchmarks.chromium import MISSING, available
from tests.service.browser_pages import hit_labels, images_loaded, wait_for

pytestmark = pytest.mark.skipif(not available(), reason=MISSING)


def caption(driver):
    return driver.find_element("id", "query-caption").text


def api_labels(server, case, z, mode, topq=6):
    body = httpx.get(
        f"{server.url}/api/query", params={"case": case, "slice": z, "mode": mode, "topq": topq}
    ).json()
    return [f"#{h['rank']} {h['case']} : {h['slice']}" for h in body["results"][mode]["hits"]]


def settled(driver, case, z, mode):
    """The page shows (case, z) in `mode` and its hits and images have arrived."""
    return (
        caption(driver) == f"{case} · slice {z}"
        and driver.find_element("id", "message").text == f"· query {case} slice {z}"
        and driver.find_elements("css selector", f'.mode-block[data-mode="{mode}"] .hit')
        and images_loaded(driver)
    )


def test_viewer_end_to_end(browser, live_server, service):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    catalog = service.catalog
    browser.get(live_server.url + "/")
    first = next(c for c in catalog.values() if c.has_lesion)
    wait_for(browser, lambda d: settled(d, first.case, first.default_slice, "sum"), "first query")
    assert "cases" in browser.find_element("id", "index-info").text
    # the viewer leaves the engine to the API, as the command line does: the index's default
    chosen = Select(browser.find_element("id", "engine")).first_selected_option
    assert chosen.get_attribute("value") == "" and chosen.get_attribute("textContent") == "default"
    # and the distance to the API too: each mode's best, named in the mode's title
    chosen = Select(browser.find_element("id", "distance")).first_selected_option
    assert chosen.get_attribute("value") == "" and "best" in chosen.get_attribute("textContent")
    title = browser.find_element("css selector", '.mode-block[data-mode="sum"] h3').text
    assert f"(euclidean, {service.index.default_engine('euclidean')})" in title, title
    assert hit_labels(browser, "sum") == api_labels(
        live_server, first.case, first.default_slice, "sum"
    )
    assert re.search(
        r"search \d+\.\d ms · server \d+\.\d ms · round trip \d+ ms",
        browser.find_element("id", "latency").text,
    )

    # Pick another case: its default slice is queried.
    other = [c for c in catalog.values() if c.case != first.case][-1]
    Select(browser.find_element("id", "case-select")).select_by_value(other.case)
    wait_for(browser, lambda d: settled(d, other.case, other.default_slice, "sum"), "picked case")
    assert hit_labels(browser, "sum") == api_labels(
        live_server, other.case, other.default_slice, "sum"
    )

    # The slider: set it as a user drags it (input events).
    z = (
        other.first_slice + 3
        if other.default_slice != other.first_slice + 3
        else other.first_slice + 4
    )
    browser.execute_script(
        "const s = document.getElementById('slice-slider'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));",
        z,
    )
    wait_for(browser, lambda d: settled(d, other.case, z, "sum"), "slider")
    assert browser.find_element("id", "slice-label").text == f"{z} / {other.last_slice}"

    # Arrow keys move one slice.
    browser.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: settled(d, other.case, z + 1, "sum"), "arrow right")
    browser.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
    browser.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
    wait_for(browser, lambda d: settled(d, other.case, z - 1, "sum"), "arrow left twice")
    z -= 1

    # Mode tabs: one mode, then all three side by side.
    browser.find_element("css selector", '#mode-tabs [data-mode="abnormal"]').click()
    wait_for(browser, lambda d: settled(d, other.case, z, "abnormal"), "abnormal tab")
    assert hit_labels(browser, "abnormal") == api_labels(live_server, other.case, z, "abnormal")
    assert not browser.find_elements("css selector", '.mode-block[data-mode="sum"]')
    browser.find_element("css selector", '#mode-tabs [data-mode="all"]').click()
    wait_for(
        browser,
        lambda d: (
            settled(d, other.case, z, "normal")
            and len(d.find_elements("css selector", ".mode-block")) == 3
        ),
        "all tab",
    )
    for mode in ("normal", "abnormal", "sum"):
        assert hit_labels(browser, mode) == api_labels(live_server, other.case, z, mode)
    assert "all" in browser.current_url

    # Click a hit: it becomes the query, in a new history entry.
    card = browser.find_elements("css selector", '.mode-block[data-mode="normal"] .hit')[1]
    hit_case, hit_slice = card.get_attribute("data-case"), int(card.get_attribute("data-slice"))
    distance = card.find_element("class name", "distance").text
    assert distance.startswith("d = ")
    card.click()
    wait_for(browser, lambda d: settled(d, hit_case, hit_slice, "normal"), "clicked hit")
    assert f"case={hit_case}" in browser.current_url
    for mode in ("normal", "abnormal", "sum"):
        assert hit_labels(browser, mode) == api_labels(live_server, hit_case, hit_slice, mode)

    # Back returns to the previous query, forward to the hit again.
    browser.back()
    wait_for(browser, lambda d: settled(d, other.case, z, "normal"), "back")
    browser.forward()
    wait_for(browser, lambda d: settled(d, hit_case, hit_slice, "normal"), "forward")

    # Overlays and sequences reload the images from the server.
    browser.find_element("id", "overlay-anat").click()
    wait_for(
        browser,
        lambda d: (
            "anat" in d.find_element("id", "query-image").get_attribute("src") and images_loaded(d)
        ),
        "anatomy overlay",
    )
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_docs_page_renders_the_api(browser, live_server):
    browser.get(live_server.url + "/docs")
    wait_for(browser, lambda d: "GET /api/query" in d.find_element("id", "docs").text, "docs")
    assert "POST /api/query/upload" in browser.find_element("id", "docs").text


def test_upload_from_the_page(browser, live_server, service, tiny_archive):
    """The page's upload form sends the four files and shows the external case's hits."""
    case = next(c for c in service.catalog.values() if c.has_lesion)
    browser.get(f"{live_server.url}/?case={case.case}&mode=abnormal")
    wait_for(browser, lambda d: settled(d, case.case, case.default_slice, "abnormal"), "page")
    browser.find_element("css selector", "#upload-box summary").click()
    for key in ("t1", "t1ce", "t2", "flair", "seg"):
        path = tiny_archive / case.case / f"{case.case}_{key}.nii.gz"
        browser.find_element("css selector", f'#upload-form input[name="{key}"]').send_keys(
            str(path)
        )
    browser.find_element("css selector", "#upload-form button[type=submit]").click()
    expected = f"· query upload slice {case.default_slice} (external)"
    wait_for(browser, lambda d: d.find_element("id", "message").text == expected, "upload")
    labels = hit_labels(browser, "abnormal")
    # Under the name "upload" the case is not excluded: its own slice comes first.
    assert labels[0] == f"#1 {case.case} : {case.default_slice}", labels
    assert browser.find_element("id", "query-caption").text.endswith("(external)")


def test_signing_in_to_a_token_server(browser, built_index, tmp_path):
    """A server with a token: the viewer sends the browser to /login; the token typed there
    opens the viewer, whose queries and images then carry the session cookie."""
    from fdn.archive_index.retrieval import open_index
    from fdn.service import QueryService, create_app
    from tests.service.conftest import LiveServer

    token = "a-token-for-the-browser-test"
    service = QueryService(open_index(built_index), scratch_dir=tmp_path)
    app = create_app(service, allowed_hosts=["127.0.0.1"], token=token)
    case = next(c for c in service.catalog.values() if c.has_lesion)
    with LiveServer(app) as server:
        browser.delete_all_cookies()
        browser.get(f"{server.url}/?case={case.case}&mode=abnormal")
        wait_for(browser, lambda d: d.current_url == f"{server.url}/login", "the sign-in page")
        field = browser.find_element("css selector", 'input[name="token"]')
        field.send_keys("wrong-token-typed-here")
        field.submit()
        wait_for(browser, lambda d: "Wrong token" in d.page_source, "the refusal")
        field = browser.find_element("css selector", 'input[name="token"]')
        field.send_keys(token)
        field.submit()
        # the viewer, whose script may already have put its state into the URL (/?case=…)
        wait_for(
            browser,
            lambda d: (
                d.current_url.startswith(f"{server.url}/")
                and not d.current_url.startswith(f"{server.url}/login")
            ),
            "the viewer",
        )
        browser.get(f"{server.url}/?case={case.case}&mode=abnormal")
        wait_for(browser, lambda d: settled(d, case.case, case.default_slice, "abnormal"), "page")
        cookies = browser.get_cookies()
        assert [c["name"] for c in cookies] == ["fdn_session"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    browser.delete_all_cookies()
