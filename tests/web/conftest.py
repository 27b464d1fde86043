"""Fixtures of the console tests: one headless Chromium and one console per test module.

Why module scope: starting Chromium and a console (which imports torch) costs seconds on CI's two cores, and
the tests of one module only add uploads, each under its own random token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.web.harness import ConsoleProcess, chromium, close_chromium, write_config


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[WebDriver]:
    driver = chromium(downloads)
    try:
        yield driver
    finally:
        close_chromium(driver)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    """A console on a free loopback port with an empty var dir (no gateway beside it)."""
    root = tmp_path_factory.mktemp("console")
    proc = ConsoleProcess(write_config(root / "gateway.toml", root / "var"), root / "console.log").start()
    try:
        yield proc
    finally:
        proc.stop()
