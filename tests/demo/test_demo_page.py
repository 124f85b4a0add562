"""``moviechat demo`` in a real browser: Debian's headless Chromium, driven through Selenium (no browser is
downloaded), uploads a generated video, asks at a breakpoint, reads the answer from the page and compares it
with ``moviechat answer``; then a bad upload, and the page still answers. It saves a screenshot."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse

import pytest

from helpers import write_video
from moviechat.answering import cli as answer_cli
from moviechat.common.distributed import free_port

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# found, not imported: importing Gradio here would slow every collection of the suite by seconds
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                 reason='the demo extra is not installed: pip install -e ".[demo]" (make test does)'),
              pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                                 reason="selenium (the test extra) is not installed"),
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                 "installed (apt-get install chromium chromium-driver; .ci/run installs them)")]

QUESTION, AT = "what color is on screen now", 3.5


@pytest.fixture
def demo(tiny_lora_run, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", frames=48, fps=8, size=32)
    (tmp_path / "broken.mp4").write_text("this is not a video")
    port = free_port()
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moviechat", "demo", str(tiny_lora_run), "--videos", str(videos),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=os.environ | {"GRADIO_TEMP_DIR": str(tmp_path / "uploads")})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the demo did not start: {(tmp_path / 'demo.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, videos, tmp_path
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_answers_as_moviechat_answer_does_and_survives_a_bad_upload(demo, browser, tiny_lora_run, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, videos, tmp_path = demo
    status = lambda: browser.find_element(By.ID, "status").text  # noqa: E731
    wait = lambda what, s=120: WebDriverWait(browser, s).until(lambda _: what())  # noqa: E731
    browser.get(url)
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    assert "step" in browser.find_element(By.ID, "provenance").text  # the run's provenance is on the page

    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(videos / "clip.mp4"))
    wait(lambda: "Opened" in status() or "Error" in status())
    assert "Opened clip.mp4: 6 frames over 6.0s (encoded now)" in status()
    browser.find_element(By.CSS_SELECTOR, "#mode input[value=breakpoint]").click()
    at = browser.find_element(By.CSS_SELECTOR, "#time input[type=number]")
    at.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    at.send_keys(str(AT), Keys.TAB)
    question = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    question.send_keys(QUESTION)
    browser.find_element(By.ID, "ask").click()
    wait(lambda: "Answered" in status() or "Error" in status())
    assert status() == "Answered on the breakpoint at 3.0s."
    on_page = browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
    assert "frames seen: 4" in browser.find_element(By.ID, "stats").text
    assert browser.find_elements(By.CSS_SELECTOR, "#memory img, #memory svg, #memory canvas")  # the memory, drawn
    browser.save_screenshot(str(tmp_path / "demo.png"))

    capsys.readouterr()
    assert answer_cli.main([str(tiny_lora_run), "--video-file", str(videos / "clip.mp4"), "--fps", "1",
                            "--question", QUESTION, "--time", str(AT)]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert on_page == expected["prediction"] and expected["frame"] == 3

    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(tmp_path / "broken.mp4"))
    wait(lambda: "Error" in status())
    assert status().startswith("Error: broken.mp4:") and str(tmp_path) not in status()
    question.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    browser.find_element(By.ID, "ask").click()  # an empty question: said on the page
    wait(lambda: "ask a question first" in status(), 30)
    browser.find_element(By.ID, "new-chat").click()  # a new chat on the same memory: no earlier turn in the prompt
    wait(lambda: not browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value"), 30)
    question.send_keys(QUESTION)
    browser.find_element(By.ID, "ask").click()  # the server still serves: the same answer on the same video
    wait(lambda: "Answered" in status(), 60)
    assert browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value") == on_page
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(videos / "clip.mp4"))
    wait(lambda: "Opened" in status())
    assert "(from the cache)" in status()  # a second look at a video does not encode it again
    hosts = {urlparse(u).hostname for u in browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")}
    assert hosts <= {"127.0.0.1"}, hosts  # the page fetched nothing from any other host
