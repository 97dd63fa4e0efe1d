"""The demo page in a real headless browser, on a real `gms-relay up --simulate`.

A person's path through it: open /demo, start a chat, write to the agent, leave. Every line the page
shows came GMS (the simulator) -> push -> ingress -> Redis -> worker Refresh -> the device's Redis
stream -> SSE -> EventSource, the customer's own message included. The browser is Debian's `chromium`
driven through `chromium-driver` by selenium; without them the test fails saying what to install
(.ci/run installs them), it is never skipped. `DEMO_SCREENSHOT=docs/demo-chat.png` saves the page as
the README shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.redis_server import free_port
from tests.processes import relay_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"
WAIT_S = 30.0  # generous: a loaded CI machine stalls for seconds; every wait polls


def _missing() -> str | None:
    """What this machine lacks to run the browser test, as an instruction."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    if not any(shutil.which(name) for name in CHROMIUM) or not shutil.which(DRIVER):
        return (
            "the browser test needs Debian's chromium and chromium-driver: "
            "apt-get install -y chromium chromium-driver (.ci/run does this)"
        )
    return None


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gms-relay up --simulate` on free ports; its demo page's URL."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    env = {k: v for k, v in relay_env().items() if k not in ("REDIS_URL", "GMS_URL", "DEMO")}
    env = {k: v for k, v in env.items() if not k.startswith(("DEVICE_TOKEN", "CHAT_START"))}
    argv = ["up", "--simulate", "--port", str(port), "--no-dashboard", "--workers", "2"]
    argv += ["--data-dir", str(data_dir), "--status-interval", "0"]
    up = subprocess.Popen(
        [sys.executable, "-m", "gms_relay", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/demo"
    try:
        wait_for(lambda: _answers(url) or up.poll() is not None, timeout_s=60)
        assert up.poll() is None, f"gms-relay up exited with {up.returncode}; logs in {data_dir / 'logs'}"
        yield url
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing:
        pytest.fail(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in map(shutil.which, CHROMIUM) if p)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,760"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def transcript(driver: Any) -> str:
    text: str = driver.find_element("id", "transcript").text
    return text


def test_a_person_chats_with_the_agent_through_the_relay(demo_url: str, browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition: Any, what: str) -> None:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(condition, f"timed out waiting for {what}")

    browser.get(demo_url)
    element = browser.find_element
    element("id", "nickname").send_keys("Kim")
    element("id", "start").click()
    until(lambda d: "Hi Kim, I'm Anna. How can I help?" in transcript(d), "the agent's greeting")
    assert element("id", "message").is_enabled() and not element("id", "start").is_enabled()

    element("id", "message").send_keys("Where is my parcel?")
    element("id", "send").click()
    answer = 'You wrote: "Where is my parcel?". Good question: let me look that up for you.'
    until(lambda d: answer in transcript(d), "the agent's answer")
    lines = transcript(browser).splitlines()
    # The customer's own message came back through the stream, then the agent typed and answered.
    mine = lines.index("Where is my parcel?")
    assert lines[mine - 1] == "Kim" and "Anna is typing\u2026" in lines[mine:]
    assert lines.index("Anna is typing\u2026", mine) < lines.index(answer)
    screenshot = os.environ.get("DEMO_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(screenshot)

    element("id", "leave").click()
    until(lambda d: "The chat has ended" in transcript(d), "the end of the chat")
    until(lambda d: d.find_element("id", "start").is_enabled(), "the page to offer a new chat")
    assert "Kim left the chat" in transcript(browser)
    # The page's Content-Security-Policy let its own script and style run, and nothing else failed.
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == []
