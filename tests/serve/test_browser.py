"""The viewer in a real headless Chromium: upload a DICOM, type a phrase, see the overlay and bars.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; ``make test`` and ``.ci/run`` install them through
``.ci/ensure-browser`` when they can). Selenium drives the system driver, so no browser is
downloaded. Without them the test is SKIPPED with the reason, except under CI (``CI=true``),
where it FAILS (:mod:`tests.serve.browser_env`); a browser that is there but cannot start
always fails. ``MACO_SKIP_BROWSER=1`` skips it. ``MACO_SERVE_SCREENSHOT=PATH`` also writes the
final screenshot there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.serve.browser_env import INSTALL_HINT, browser_paths, check_browser
from tests.serve.conftest import DICOM_MONO1

CHROMIUM, CHROMEDRIVER = browser_paths()
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)
PHRASE = "right pleural effusion"
CLASSES = ("Pneumothorax", "Pleural Effusion", "Cardiomegaly")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """``maco-cxr serve`` in a subprocess on a free loopback port; yields (url, log path)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maco_cxr",
                "serve",
                "--model",
                str(tiny_model_dir),
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"maco-cxr serve did not come up on {url}:\n{log_path.read_text()}")
        time.sleep(0.25)
    yield url, log_path
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    check = check_browser()
    if check.action == "skip":
        pytest.skip(check.reason)
    if check.action == "fail":
        pytest.fail(check.reason)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        log = folder / "chromedriver.log"
        pytest.fail(
            f"headless Chromium did not start ({exc.msg}); chromedriver log:\n"
            f"{log.read_text()[-2000:] if log.exists() else '(none)'}\n{INSTALL_HINT}"
        )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 60.0):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders the score rows on each answer: an element read while it is replaced is
    # stale, which means "not yet", so the condition is polled again
    ignored = (StaleElementReferenceException,)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(
            lambda d: condition(d)
        )
    except TimeoutException:
        error = driver.find_element("id", "error").text
        pytest.fail(
            f"timed out waiting for {what}; page error box: {error!r}; status: "
            f"{driver.find_element('id', 'status').text!r}"
        )


def _analyze_requests(driver) -> int:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/analyze')).length"
    )


def test_upload_a_dicom_type_a_phrase_and_see_overlay_and_scores(browser, server, tmp_path):
    url, log_path = server
    driver = browser
    driver.get(url + "/")
    _wait(driver, lambda d: "tiny-maco" in d.find_element("id", "model-info").text, "the model info")
    assert driver.find_element("id", "classes").get_attribute("value") == (
        "Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion"
    )

    # choosing the file analyses it at once: scores, no heatmap yet
    driver.find_element("id", "file-input").send_keys(str(DICOM_MONO1.resolve()))
    _wait(driver, lambda d: len(d.find_elements("css selector", "#scores .score-row")) == 5, "5 score bars")
    assert driver.find_element("id", "overlay").get_attribute("hidden") is not None

    # type a phrase and analyse again: the overlay appears over the image, same geometry
    phrase = driver.find_element("id", "phrase")
    phrase.send_keys(PHRASE)
    driver.find_element("id", "analyze").click()
    _wait(
        driver,
        lambda d: d.execute_script(
            "const o = document.getElementById('overlay'); return !o.hidden && o.complete && o.naturalWidth > 0"
        ),
        "the heatmap overlay",
    )
    sizes = driver.execute_script(
        "const b = document.getElementById('base-image'), o = document.getElementById('overlay');"
        "const r1 = b.getBoundingClientRect(), r2 = o.getBoundingClientRect();"
        "return [b.naturalWidth, b.naturalHeight, o.naturalWidth, o.naturalHeight,"
        "        r1.left, r1.top, r1.width, r1.height, r2.left, r2.top, r2.width, r2.height]"
    )
    assert sizes[:4] == [1024, 1024, 1024, 1024]  # the DICOM's own grid
    assert sizes[6] > 200 and np.allclose(sizes[4:8], sizes[8:12], atol=0.5)  # drawn exactly over it

    rows = driver.find_elements("css selector", "#scores .score-row")
    names = [row.find_element("css selector", ".name").text for row in rows]
    assert names == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    for row in rows:
        value = float(row.find_element("css selector", ".value").text)
        width = row.find_element("css selector", ".bar").value_of_css_property("width")
        assert 0.0 <= value <= 1.0 and float(width.removesuffix("px")) > 0

    prep = driver.find_element("id", "prep").text
    for words in ("DICOM", "1024 × 1024", "MONOCHROME1", "inverted", "Scale", "0.2188", "Padding"):
        assert words in prep, words
    assert driver.find_element("id", "query").text == f"model reads “{PHRASE}.”"

    # the opacity slider works in the page, without a new request
    before = _analyze_requests(driver)
    driver.execute_script(
        "const s = document.getElementById('opacity'); s.value = 80;s.dispatchEvent(new Event('input'));"
    )
    assert driver.find_element("id", "overlay").value_of_css_property("opacity") == "0.8"
    assert driver.find_element("id", "opacity-value").text == "80%"
    driver.execute_script(
        "const s = document.getElementById('opacity'); s.value = 45;s.dispatchEvent(new Event('input'));"
    )
    assert _analyze_requests(driver) == before

    # a bad phrase shows the server's message
    phrase.clear()
    phrase.send_keys("a")
    driver.find_element("id", "analyze").click()
    _wait(driver, lambda d: d.find_element("id", "error").is_displayed(), "the error message")
    assert "phrase 'a'" in driver.find_element("id", "error").text
    phrase.clear()
    phrase.send_keys(PHRASE)
    driver.find_element("id", "analyze").click()
    _wait(
        driver,
        lambda d: (
            not d.find_element("id", "error").is_displayed() and d.find_element("id", "status").text.startswith("Done")
        ),
        "the analysis after the error",
    )

    # an emptied class list is refused with the server's message, not scored as the defaults
    classes = driver.find_element("id", "classes")
    classes.clear()
    driver.find_element("id", "analyze").click()
    _wait(driver, lambda d: d.find_element("id", "error").is_displayed(), "the empty class list error")
    assert "holds no class name" in driver.find_element("id", "error").text

    # one class per line: each line is its own class
    classes.send_keys("\n".join(CLASSES))
    driver.find_element("id", "analyze").click()
    _wait(
        driver,
        lambda d: (
            not d.find_element("id", "error").is_displayed()
            and [e.text for e in d.find_elements("css selector", "#scores .score-row .name")] == list(CLASSES)
        ),
        "the scores of the classes typed one per line",
    )
    assert driver.find_element("id", "classes").get_attribute("value") == "\n".join(CLASSES)

    shot = tmp_path / "viewer.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("MACO_SERVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MACO_SERVE_SCREENSHOT"])
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    spread = pixels.max(axis=-1) - pixels.min(axis=-1)
    print(f"colourful screenshot pixels: {(spread > 50).mean():.3f}")
    assert (spread > 50).mean() > 0.10  # the jet-coloured heatmap is on screen, not only grey

    severe = [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "/api/analyze" not in entry["message"]
    ]  # the 400 above is logged by Chromium
    assert not severe, json.dumps(severe, indent=1)  # no script error, no CSP violation

    log = log_path.read_text()
    assert 'POST /api/analyze HTTP/1.1" 200' in log  # the access log has request lines only
    assert DICOM_MONO1.name not in log and DICOM_MONO1.stem not in log
