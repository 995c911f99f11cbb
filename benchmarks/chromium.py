"""Debian's headless Chromium driven by Selenium, for the viewer's browser test and the serve
benchmark's screenshot: both start it the same way.

Debian's `chromium` and `chromium-driver` packages provide it (`make system-deps`). Every start
gets its own throw-away profile folder, removed when the browser quits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING = (
    "Debian's chromium and chromium-driver could not be installed here "
    "(`make system-deps` installs them); the viewer's browser test needs them"
)
# No GPU, sandbox, shared memory, network chatter or first-run pages: the browser runs headless
# in containers and CI.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def available() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


@contextmanager
def headless_chromium(width: int, height: int, *extra_flags: str) -> Iterator:
    """A Selenium WebDriver of a headless Chromium with a `width` × `height` window; quits it and
    removes its profile on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fdn-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--window-size={width},{height}", *extra_flags):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
