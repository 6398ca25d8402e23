"""The operator page in a real headless Chromium: sign in, search, open a hit, forget a track.

The browser is Debian's ``chromium`` driven through ``chromium-driver`` (``.ci/run`` installs
both). It runs with networking features off, so a page that reached for a CDN would fail to
render rather than silently work only online. The screenshot is kept as a test artifact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.serve.conftest import Server, Tokens
from tests.serve.site import Crop, site_crops, upload_form

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=timezone.utc)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are missing; .ci/run installs them")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, onnx_model: Path, tokens: Tokens
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("page")
    started = Server(onnx_model, folder / "gallery", tokens.path, "serve.match_threshold=0.006")
    yield started
    started.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _hits(driver: WebDriver) -> list[dict]:
    """The hits on the timeline, read in one script call (the page re-renders them)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#timeline .hit')].map(h => ({"
        "path: h.dataset.path, distance: h.querySelector('span').textContent,"
        "camera: h.closest('.lane').dataset.camera,"
        "loaded: h.querySelector('img').complete && h.querySelector('img').naturalWidth > 0}))"
    )


def _settled(driver: WebDriver, count: int) -> bool:
    hits = _hits(driver)
    return len(hits) == count and all(hit["loaded"] for hit in hits)


def _click_hit(driver: WebDriver, path: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#timeline .hit[data-path="{path}"]').click()


def test_operator_signs_in_searches_opens_a_hit_and_forgets_a_track(
    tmp_path: Path, server: Server, tokens: Tokens, synth_root: Path, browser: WebDriver
) -> None:
    crops: list[Crop] = site_crops(synth_root / "bounding_box_test", T0)[:24]
    with server.client(tokens.write) as writer:
        assert writer.post("/v1/gallery", **upload_form(crops)).status_code == 201
    stored = {crop.key: crop for crop in crops}
    wait = WebDriverWait(browser, 20)

    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "token").send_keys(tokens.admin)
    browser.find_element(By.ID, "login-button").click()
    wait.until(EC.visibility_of_element_located((By.ID, "workspace")))
    assert "privacy-officer" in browser.find_element(By.ID, "who").text
    cameras = browser.find_elements(By.CSS_SELECTOR, "#cameras input")
    assert sorted(int(c.get_attribute("value")) for c in cameras) == [1, 2, 3]

    query = crops[5]
    browser.find_element(By.ID, "file").send_keys(str(query.path))
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("10")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: _settled(d, 10))
    # The query crop itself is in the gallery: it is the closest hit, at distance 0.
    hits = _hits(browser)
    best = min(hits, key=lambda hit: float(hit["distance"]))
    assert best["path"] == query.key and best["distance"] == "0.000"
    assert best["camera"] == str(query.camera)
    assert all(stored[hit["path"]].camera == int(hit["camera"]) for hit in hits)

    # Open another hit and search from it: that crop becomes the closest hit.
    other_id = max(hits, key=lambda hit: float(hit["distance"]))["path"]
    _click_hit(browser, other_id)
    wait.until(EC.visibility_of_element_located((By.ID, "detail")))
    browser.find_element(By.ID, "search-from").click()
    wait.until(
        lambda d: (
            _settled(d, 10)
            and min(_hits(d), key=lambda hit: float(hit["distance"]))["path"] == other_id
        )
    )
    assert min(float(hit["distance"]) for hit in _hits(browser)) == 0.0

    # Forget the selected hit's track, through the confirmation dialog.
    track = stored[other_id].track
    _click_hit(browser, other_id)
    wait.until(EC.visibility_of_element_located((By.ID, "detail")))
    browser.save_screenshot(str(tmp_path / "operator_page.png"))  # the test's artifact
    if os.environ.get("REIDKIT_SAVE_SCREENSHOT"):
        shutil.copy(tmp_path / "operator_page.png", os.environ["REIDKIT_SAVE_SCREENSHOT"])
    browser.find_element(By.ID, "forget").click()
    dialog = wait.until(EC.visibility_of_element_located((By.ID, "confirm")))
    assert track in dialog.text
    browser.find_element(By.ID, "confirm-forget").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "Forgot"))
    in_track = sum(1 for crop in crops if crop.track == track)
    message = browser.find_element(By.ID, "message").text
    assert f"Forgot {in_track} crops of track {track}" in message
    with server.client(tokens.admin) as admin:
        assert admin.get("/v1/gallery/stats").json()["size"] == len(crops) - in_track

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_wrong_token_is_refused_on_the_page(
    server: Server, tokens: Tokens, browser: WebDriver
) -> None:
    browser.get(f"{server.url}/ui/")
    browser.find_element(By.ID, "token").send_keys(tokens.search[:-3] + "xyz")
    browser.find_element(By.ID, "login-button").click()
    WebDriverWait(browser, 10).until(
        EC.text_to_be_present_in_element((By.ID, "message"), "refused")
    )
    assert not browser.find_element(By.ID, "workspace").is_displayed()
