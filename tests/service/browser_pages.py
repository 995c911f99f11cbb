"""What the browser tests read of the viewer's page (test_browser.py, test_region_browser.py):
waiting for a condition, the hits shown, whether every image loaded. The `browser` fixture,
headless Chromium, is in conftest.py."""

from __future__ import annotations


def wait_for(driver, condition, what, timeout=15):
    """Poll ``condition`` until it holds; an element the page re-rendered between two WebDriver
    calls (stale) only means: look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(StaleElementReferenceException,),
    ).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def hit_labels(driver, mode):
    """The labels of the hits shown for ``mode``, read in one script (a re-render between two
    WebDriver calls would leave the elements stale)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText.trim());",
        f'.mode-block[data-mode="{mode}"] .hit .label',
    )


def images_loaded(driver):
    """True when every <img> with a src finished loading with pixels; raises on a broken one."""
    states = driver.execute_script(
        "return [...document.images].filter(i => i.getAttribute('src'))"
        ".map(i => [i.complete, i.naturalWidth, i.src]);"
    )
    if not all(complete for complete, _, _ in states):
        return False
    broken = [src for _, width, src in states if width == 0]
    assert not broken, f"images that did not load: {broken}"
    return len(states) > 1
