"""The viewer's region and why-this-hit controls in a real browser (Debian's headless Chromium
driven by Selenium, the real server on 127.0.0.1 and a free port): a box dragged on the query
slice becomes the query's region, and the hits shown are the API's for that region; the heat
map toggle swaps every thumbnail for its /api/explain.png; "why?" opens the query and the hit
side by side; clearing the region brings back the whole-slice hits."""

from __future__ import annotations

import re

import httpx
import pytest

from benchmarks.chromium import MISSING, available
from tests.service.browser_pages import hit_labels as shown
from tests.service.browser_pages import images_loaded, wait_for

pytestmark = pytest.mark.skipif(not available(), reason=MISSING)


def api(server, params, mode):
    body = httpx.get(f"{server.url}/api/query", params={**params, "topq": 6, "mode": mode}).json()
    return [f"#{h['rank']} {h['case']} : {h['slice']}" for h in body["results"][mode]["hits"]], body


def test_region_drawing_heat_maps_and_side_by_side(browser, live_server, service):
    from selenium.webdriver.common.action_chains import ActionChains

    case = service.index.cases[1]
    z = service.index.default_slice(case)
    mode = "abnormal"
    browser.get(f"{live_server.url}/?case={case}&slice={z}&mode={mode}")
    whole, _ = api(live_server, {"case": case, "slice": z}, mode)
    wait_for(browser, lambda d: shown(d, mode) == whole and images_loaded(d), "the first query")

    # drag from a quarter to the middle of the 256-pixel stage: the upper-left quarter on screen
    browser.find_element("id", "region-draw").click()
    stage = browser.find_element("id", "query-stage")
    ActionChains(browser).move_to_element_with_offset(
        stage, -127, -127
    ).click_and_hold().move_by_offset(126, 126).release().perform()
    wait_for(browser, lambda d: "grid cells" in d.find_element("id", "region-text").text, "region")
    text = browser.find_element("id", "region-text").text
    box = re.match(r"region (\d+,\d+,\d+,\d+) · (\d+) of (\d+) grid cells", text)
    assert box, text
    x0, y0, x1, y1 = map(int, box.group(1).split(","))
    size = service.index.manifest.input_size  # the tiny archive's slices are that size
    # screen up is +y: the upper-left quarter is x from 0, y up to the top
    assert x0 == 0 and y1 == size - 1 and x1 == pytest.approx(size / 2, abs=1)
    assert y0 == pytest.approx(size / 2, abs=1)
    expected, body = api(live_server, {"case": case, "slice": z, "region": box.group(1)}, mode)
    assert int(box.group(2)) == len(body["region"]["positions"]["normal"])
    wait_for(browser, lambda d: shown(d, mode) == expected and images_loaded(d), "region hits")
    assert browser.find_element("id", "region-box").is_displayed()

    # the heat maps replace the thumbnails
    browser.find_element("id", "explain-maps").click()

    def heat_maps(d):
        # read in one script: the page may re-render between two WebDriver calls
        srcs = d.execute_script(
            "return [...document.querySelectorAll('.hit img')].map(i => i.src);"
        )
        return srcs and all("/api/explain.png" in s for s in srcs) and images_loaded(d)

    wait_for(browser, heat_maps, "heat-map thumbnails")
    assert shown(browser, mode) == expected

    # "why?" on the first hit: the query and the hit side by side, with the largest cells named
    browser.find_elements("css selector", ".hit .why")[0].click()
    wait_for(browser, lambda d: d.find_element("id", "compare").is_displayed(), "the side by side")
    wait_for(browser, images_loaded, "the side-by-side images")
    sides = [
        browser.find_element("id", f"compare-{s}").get_attribute("src") for s in ("query", "hit")
    ]
    assert "side=query" in sides[0] and "side=hit" in sides[1]
    assert "most of it at (" in browser.find_element("id", "compare-text").text
    assert browser.find_element("id", "compare-hit-caption").text == expected[0]

    # clearing the region: the whole-slice hits again
    browser.find_element("id", "region-clear").click()
    wait_for(browser, lambda d: shown(d, mode) == whole, "whole-slice hits")
    assert browser.find_element("id", "region-text").text == ""
