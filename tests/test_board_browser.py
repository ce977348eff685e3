"""The venue board in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, opens the page that `venue-agent board` serves while a paho client
publishes zone states, a moment and a nudge to a real Mosquitto. The test reads what the page
shows (the DOM after board.js rendered the Server-Sent Events), fails on any JavaScript error
in the browser's console, and keeps a screenshot of the board in tests/artifacts/board.png.

Chromium and chromedriver come from `.ci/system-deps.sh`; missing, the test fails."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from agent.ids import new_id
from agent.timefmt import rfc3339
from agent.topics import SCHEMA_MOMENT, SCHEMA_NUDGE, SCHEMA_ZONE_STATE
from tests.contract_check import assert_valid
from tests.test_board import SSE_LATENCY_MAX_S, VENUE, T, _publisher, _send, board

pytestmark = pytest.mark.e2e
__all__ = ["board"]  # the fixture, imported from the SSE test: Mosquitto + `venue-agent board`

ARTIFACT = Path(__file__).parent / "artifacts" / "board.png"
WINDOW = (1280, 800)  # CSS pixels: the screenshot stays a few tens of kB


def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, (
        "the browser test needs Debian's chromium and chromium-driver "
        "(make deps-test installs them: apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = _browser_binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium  # with the driver's path below, Selenium Manager stays idle
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--lang=en-US",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    try:
        drv.set_page_load_timeout(20)
        yield drv
    finally:
        drv.quit()


def _js_errors(drv: webdriver.Chrome) -> list[str]:
    """The browser console's SEVERE entries since the last call (JS exceptions, failed loads);
    the reconnect of the EventSource at teardown is not among them while the page is open."""
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _dom_until(drv: webdriver.Chrome, what: str, check: Callable[[], bool],
               timeout: float) -> float:
    """Poll the DOM until ``check()``; return the seconds it took, fail naming ``what``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # an element replaced mid-read (board.js re-renders): read again
            pass
        if time.monotonic() - start > timeout:
            body = drv.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"the page did not show {what} within {timeout} s; it shows:\n"
                                 f"{body}\nconsole: {_js_errors(drv)}")
        time.sleep(0.05)


def _row(drv: webdriver.Chrome, zone: str) -> list[str]:
    cells = drv.find_elements(By.CSS_SELECTOR, f'#zones tr[data-zone="{zone}"] td')
    return [c.text for c in cells]


def _texts(drv: webdriver.Chrome, selector: str) -> list[str]:
    return [e.text for e in drv.find_elements(By.CSS_SELECTOR, selector)]


class Stream:
    """The guaranteed stream's counter and the zone-state counter of one simulated gateway."""

    def __init__(self) -> None:
        self.seq = 0
        self.state_seq = 0

    def zone(self, zone: str, name: str, wait_s: float, joining: float, queue: int,
             forecast: float) -> dict[str, Any]:
        self.state_seq += 1
        return {"schema": SCHEMA_ZONE_STATE, "id": new_id(), "venue": VENUE,
                "gateway": "gw-01", "at": rfc3339(time.time()), "seq": self.state_seq,
                "zone": zone, "zone_name": name, "kind": "queue", "capacity": None,
                "queue_length": queue, "occupancy": queue, "wait_s": wait_s,
                "wait_joining_s": joining, "wait_forecast_s": forecast, "dwell_p50_s": None,
                "dwell_p90_s": None, "arrivals_per_min": 12.0, "throughput_per_min": 10.0,
                "wait_method": "measured", "queue_length_method": "read_rate_corrected",
                "queue_length_factor": 1.0,
                "readers_online": 2}

    def moment(self, zone: str, name: str, moment_id: str, status: str, value: float,
               metrics: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        now = rfc3339(time.time())
        return {"schema": SCHEMA_MOMENT, "id": new_id(), "venue": VENUE,
                "gateway": "gw-01", "at": now, "seq": self.seq, "moment_id": moment_id,
                "kind": "queue_long", "zone": zone, "zone_name": name, "status": status,
                "opened_at": now, "value": value, "unit": "s", "open_level": 1800.0,
                "clear_level": 1200.0,
                "metrics": {k: metrics[k] for k in (
                    "queue_length", "occupancy", "wait_s", "wait_joining_s", "wait_forecast_s",
                    "dwell_p90_s", "throughput_per_min")}}

    def nudge(self, zone: str, name: str, moment_id: str, wait_s: float,
              message: str) -> dict[str, Any]:
        self.seq += 1
        return {"schema": SCHEMA_NUDGE, "id": new_id(), "venue": VENUE,
                "gateway": "gw-01", "at": rfc3339(time.time()), "seq": self.seq,
                "moment_id": moment_id, "zone": zone, "zone_name": name, "wait_s": wait_s,
                "message": message, "valid_for_s": 600}


def _publish(pub: Any, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
    assert_valid(topic, payload)  # what the test sends is what a gateway may send
    _send(pub, topic, payload, retain=retain)


def test_the_board_in_headless_chromium(board: tuple[Any, int, Any],
                                        browser: webdriver.Chrome) -> None:
    broker, port, _proc = board
    drv = browser
    url = f"http://127.0.0.1:{port}"
    g = Stream()
    pub = _publisher(broker.port)
    try:
        dino = g.zone("dino-queue", "Dino Ride", 1500, 1860, 212, 2400)
        jungle = g.zone("jungle-queue", "Jungle Cruise", 400, 420, 31, 480)
        _publish(pub, T.zone_state("dino-queue"), dino, retain=True)
        _publish(pub, T.zone_state("jungle-queue"), jungle, retain=True)

        drv.get(url + "/")
        assert drv.title == "Venue board"
        # posted wait (the joining wait), queue, forecast, trend, measured wait
        _dom_until(drv, "both zones' waits and queues", lambda: (
            _row(drv, "dino-queue") == ["Dino Ride", "31 min", "212", "40 min", "↑", "25 min"]
            and _row(drv, "jungle-queue")[:4] == ["Jungle Cruise", "7 min", "31", "8 min"]), 10)
        assert drv.find_element(By.ID, "venue").text == VENUE
        assert drv.find_element(By.ID, "banner").get_attribute("hidden") is not None

        mid = new_id()
        _publish(pub, T.moment("dino-queue", "queue_long"),
                 g.moment("dino-queue", "Dino Ride", mid, "opened", 1860, dino))
        _dom_until(drv, "the open queue_long moment", lambda: any(
            "queue_long at Dino Ride" in t for t in _texts(drv, "#moments li")), 5)
        assert drv.find_element(By.CSS_SELECTOR, "#moments li").get_attribute(
            "data-kind") == "queue_long"
        message = "Jungle Cruise is a 7-minute wait for anyone joining now"
        _publish(pub, T.nudge("jungle-queue"),
                 g.nudge("jungle-queue", "Jungle Cruise", mid, 420, message))
        _dom_until(drv, "the nudge", lambda: _texts(drv, "#nudges li.nudge") == [message], 5)

        # a new state reaches the page within 2 s
        sent = time.monotonic()
        _publish(pub, T.zone_state("dino-queue"),
                 g.zone("dino-queue", "Dino Ride", 1620, 2160, 240, 2700), retain=True)
        _dom_until(drv, "the new Dino Ride state",
                   lambda: _row(drv, "dino-queue")[1:3] == ["36 min", "240"], SSE_LATENCY_MAX_S + 3)
        took = time.monotonic() - sent
        print(f"board browser latency: {took * 1000:.0f} ms")
        assert took < SSE_LATENCY_MAX_S
        assert _js_errors(drv) == []

        # the screenshot the README shows: written each run, its bytes are not compared
        ARTIFACT.parent.mkdir(exist_ok=True)
        assert drv.save_screenshot(str(ARTIFACT))
        assert ARTIFACT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # the moment resolves: the page drops it and the nudge it raised
        _publish(pub, T.moment("dino-queue", "queue_long"),
                 g.moment("dino-queue", "Dino Ride", mid, "resolved", 1100,
                          g.zone("dino-queue", "Dino Ride", 1000, 1100, 120, 1000)))
        _dom_until(drv, "no open moment and no nudge", lambda: (
            _texts(drv, "#moments li") == ["none"] and _texts(drv, "#nudges li") == ["none"]), 5)

        # the signage page: large posted waits, one card per queue
        drv.get(url + "/signage")
        assert drv.title == "Wait times"

        def signs() -> dict[str, tuple[str, str]]:
            return {e.get_attribute("data-zone") or "": (
                e.find_element(By.CLASS_NAME, "sign-name").text,
                e.find_element(By.CLASS_NAME, "sign-wait").text)
                for e in drv.find_elements(By.CSS_SELECTOR, "#signs .sign")}

        _dom_until(drv, "the signage waits", lambda: signs() == {
            "dino-queue": ("Dino Ride", "36 min"), "jungle-queue": ("Jungle Cruise", "7 min")}, 10)
        size = drv.execute_script(
            "return parseFloat(getComputedStyle(document.querySelector('.sign-wait')).fontSize)")
        body = drv.execute_script("return parseFloat(getComputedStyle(document.body).fontSize)")
        assert size >= 2 * body, f"signage wait font {size}px is not large next to {body}px"
        assert _js_errors(drv) == []
    finally:
        pub.disconnect()
        pub.loop_stop()
