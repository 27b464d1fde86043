"""Real browser, real console: headless Debian Chromium driven by Selenium, the console as a child process.

Why a child process: its stdout is exactly the log an admin's journal would hold, so the PHI test reads it;
and the pages are served by the same code path as `enhance-gateway web`. Every console needs a login: the
harness creates its users with the real `enhance-gateway users add` command before starting it, and logs
browsers and `requests` sessions in through the login form, as a person would. Why Debian's chromium and
chromedriver with explicit paths: nothing may be downloaded at test time (Selenium Manager stays unused).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium"
#: The users every test console gets: name -> (role, password).
USERS: dict[str, tuple[str, str]] = {
    "ada": ("admin", "admin-pass-0123"),
    "vic": ("viewer", "viewer-pass-0123"),
}


def add_user(config: Path, name: str, role: str, password: str) -> subprocess.CompletedProcess[str]:
    """`enhance-gateway users add NAME --role ROLE --password-stdin`, as an admin would run it."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.admin.cli", "--config", str(config), "users", "add", name, "--role", role,
         "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def write_config(path: Path, var_dir: Path, web: str = "", enhance: str = "") -> Path:
    """A minimal gateway config for a console that has no gateway beside it (uploads only); `web`: the body of
    a `[web]` table, `enhance`: lines added to `[enhance]`."""
    path.write_text(
        f'[gateway]\nvar_dir = "{var_dir}"\n\n[[destinations]]\nname = "archive"\ntype = "folder"\n'
        'path = "{var_dir}/archive"\n\n[enhance]\nthreads = 1\nbatch_size = 4\n'
        + (f"{enhance}\n" if enhance else "")
        + (f"\n[web]\n{web}\n" if web else ""),
        encoding="utf-8",
    )
    return path


class ConsoleProcess:
    """`python -m gateway.web --config CONFIG --port FREE` with its log in a file."""

    def __init__(self, config: Path, log_path: Path, *, users: dict[str, tuple[str, str]] | None = None,
                 scheme: str = "http") -> None:
        self.config = config
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.users = USERS if users is None else users
        self.scheme = scheme

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> ConsoleProcess:
        for name, (role, password) in self.users.items():
            done = add_user(self.config, name, role, password)
            if done.returncode != 0 and "exists" not in done.stderr:
                raise AssertionError(f"users add {name} failed: {done.stderr}")
        env = os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.web", "--config", str(self.config), "--port", str(self.port)],
                cwd=self.config.parent, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the console exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the console did not listen within {timeout:.0f} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def session(self, name: str = "ada") -> requests.Session:
        """A `requests` session logged in through the login form as `name`."""
        session = requests.Session()
        r = login(session, self.url, name, self.users[name][1])
        assert r.status_code == 303, f"login as {name} failed: HTTP {r.status_code} {r.text[:300]}"
        return session

    def open(self, driver: WebDriver, path: str, name: str = "ada") -> None:
        """Go to `path` in the browser, logging in through the form first when the console asks."""
        driver.get(self.url + path)
        if "/login" not in driver.current_url:
            return
        wait_visible(driver, "form.login")
        driver.find_element(By.ID, "name").send_keys(name)
        driver.find_element(By.ID, "password").send_keys(self.users[name][1])
        driver.find_element(By.ID, "login").click()
        wait(driver, 30).until(lambda d: "/login" not in d.current_url)


def wait_upload_done(console: ConsoleProcess, session: requests.Session, upload: str) -> dict[str, object]:
    """Poll an upload's status JSON until it is done (or 300 s have passed); the last status."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status: dict[str, object] = session.get(console.url + f"/api/uploads/{upload}", timeout=30).json()
        if status["done"]:
            return status
        time.sleep(0.2)
    raise AssertionError(f"upload {upload} not done after 300 s")


def form_token(html: str) -> str:
    """The csrf field of the first form of a page."""
    m = re.search(r'name="csrf"\s+value="([^"]+)"', html)
    assert m is not None, "no form token on the page"
    return m.group(1)


def login(session: requests.Session, url: str, name: str, password: str, **kw: Any) -> requests.Response:
    """POST the login form (its token read from GET /login), without following the redirect."""
    token = form_token(session.get(url + "/login", timeout=30).text)
    return session.post(url + "/login", data={"csrf": token, "name": name, "password": password},
                        allow_redirects=False, timeout=30, **kw)


def chromium(download_dir: Path) -> WebDriver:
    """A fresh headless Chromium (own profile, no network side traffic) that saves downloads to download_dir."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            raise RuntimeError(f"{binary} is missing: {INSTALL_HINT}")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1500,1000",
    ):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    driver.profile_dir = profile  # type: ignore[attr-defined]  # removed by close_chromium
    return driver


def close_chromium(driver: WebDriver) -> None:
    driver.quit()
    shutil.rmtree(getattr(driver, "profile_dir", ""), ignore_errors=True)


def screenshot(driver: WebDriver, name: str) -> Path:
    """A full-page PNG under test-artifacts/web/ (the whole scroll height, not only the window)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot: dict[str, Any] = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "fromSurface": True}
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def wait(driver: WebDriver, timeout: float = 60.0) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def wait_visible(driver: WebDriver, css: str, timeout: float = 60.0) -> Any:
    return wait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def images_loaded(driver: WebDriver, css: str) -> bool:
    """True when every image matching `css` has finished loading with real pixels."""
    return bool(driver.execute_script(
        "const imgs = Array.from(document.querySelectorAll(arguments[0]));"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);",
        css,
    ))


def wait_download(folder: Path, suffix: str, timeout: float = 60.0) -> Path:
    """The first finished download ending in `suffix` (Chromium writes .crdownload until it is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(f"*{suffix}") if p.stat().st_size > 0]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {suffix} download in {folder} after {timeout:.0f} s: {list(folder.iterdir())}")
