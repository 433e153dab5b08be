"""Drive the Space (space/app.py) in headless Chromium with Selenium, as a user would: used by the browser test
(tests/test_space.py) and by `scripts/pictures.py` for the README's screenshot.

Chromium and its driver come from Debian's packages (`chromium`, `chromium-driver`; scripts/setup.sh installs them).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 300  # a hang bound for loading the model and starting the server on a busy 2-core machine
SEARCH_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            with open(log_path) as log:
                raise RuntimeError(f"the Space exited with {server.returncode}:\n{log.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the Space did not answer on {url} within {START_TIMEOUT_S} s (log: {log_path})")


@contextmanager
def running_space(command: list[str], model: str, cwd: str, log_path: str, env: dict | None = None):
    """Start the Space (`command`, e.g. `[python, app.py]`) on 127.0.0.1 with `TTE_MODEL=model`; yields its URL."""
    port = free_port()
    env = {**(env or os.environ), "TTE_MODEL": model, "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server, log_path)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def chromium(width: int = 1280, height: int = 1400):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def fill(driver, elem_id: str, text: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    field.clear()
    field.send_keys(text)


def open_page(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 120).until(expected_conditions.element_to_be_clickable((By.ID, "search")))


def choose_file(driver, elem_id: str, path: str) -> None:
    """Give a file to the gr.File component `elem_id` (its hidden file input), as a user's file dialog would."""
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(os.path.abspath(path))


def upload(driver, elem_id: str, path: str) -> None:
    """`choose_file`, then wait for the upload to finish."""
    choose_file(driver, elem_id, path)
    stem = os.path.splitext(os.path.basename(path))[0]  # the page shows the stem and the extension apart
    WebDriverWait(driver, 60).until(lambda d: stem in d.find_element(By.ID, elem_id).text, f"upload of {path}")


def search(driver, url: str, image: str, question: str, candidates: list[str], instruction: str | None = None) -> None:
    """Open the Space, fill the search tab and click Search (without waiting for the result)."""
    open_page(driver, url)
    upload(driver, "query-image", image)
    fill(driver, "query-text", question)
    if instruction is not None:
        fill(driver, "instruction", instruction)
    fill(driver, "candidates", "\n".join(candidates))
    driver.find_element(By.ID, "search").click()


def shown_ranking(driver, elem_id: str = "ranking-thinking") -> list[str]:
    """The candidates in the order the page lists them, once the search has finished."""
    items = WebDriverWait(driver, SEARCH_TIMEOUT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} li"), "the ranking"
    )
    return [item.text.rsplit(" (", 1)[0] for item in items]


def shown_error(driver) -> str:
    """The text of the error message the page shows (Gradio's toast for a `gr.Error`)."""
    toast = WebDriverWait(driver, SEARCH_TIMEOUT_S).until(
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body") if e.text.strip()], "an error message"
    )
    return toast[0].text


def python_app_command(app_dir: str) -> list[str]:
    return [sys.executable, os.path.join(app_dir, "app.py")]
