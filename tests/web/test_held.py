"""The job page of a held job: the QA verdict and reasons, and the Release and Reject buttons, in a browser.

A real gateway (child process, harmful test enhancer through `[enhance] plugins`, the shipped QA defaults)
holds two CT series pushed by dcmtk storescu; the console, started beside it, releases one and rejects the
other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests import realdata
from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.web.harness import ConsoleProcess, screenshot, wait_visible


class Held:
    def __init__(self, gw: GatewayProcess, console: ConsoleProcess, jobs: list[int]) -> None:
        self.gw, self.console, self.jobs = gw, console, jobs


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    root = tmp_path_factory.mktemp("held")
    gw = GatewayProcess(
        root,
        destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
        routes=[{"enhancer": "test-harm"}],
        enhance={"plugins": ["tests.gateway.harmful_enhancers"]},
        qa={},
    ).start()
    console: ConsoleProcess | None = None
    try:
        for name in ("a", "b"):
            files = realdata.make_series("693_UNCR.dcm", 2, root / f"series-{name}", seed=f"web-held-{name}")
            storescu(gw.port, files, called_aet="ENHANCE_GW")
        jobs = gw.wait_jobs({"held"}, 2)
        console = ConsoleProcess(gw.config, root / "console.log").start()
        yield Held(gw, console, sorted(j.id for j in jobs))
    finally:
        if console is not None:
            console.stop()
        gw.stop()


def _archived(gw: GatewayProcess) -> list[Path]:
    return sorted((gw.var_dir / "archive").rglob("*.dcm"))


def test_release_button_delivers_the_held_series(browser: WebDriver, held: Held) -> None:
    job = held.jobs[0]
    held.console.open(browser, "/jobs")
    assert wait_visible(browser, f"#qa-{job}").text == "QA FAIL"
    assert "held" in browser.find_element(By.ID, f"job-{job}").text
    held.console.open(browser, f"/jobs/{job}")
    assert wait_visible(browser, "#qa-verdict").text == "FAIL"
    assert "lowpass" in browser.find_element(By.ID, "qa-reasons").text
    screenshot(browser, "12-held-job")
    assert not _archived(held.gw)
    browser.find_element(By.ID, "release").click()
    assert f"Job {job} released" in wait_visible(browser, "#flash").text
    held.gw.wait_jobs({"done"}, 1)
    assert len(_archived(held.gw)) == 3  # 2 derived instances and the SR
    assert not browser.find_elements(By.ID, "release")  # a released job has no release button any more


def test_reject_button_drops_the_outputs(browser: WebDriver, held: Held) -> None:
    job = held.jobs[1]
    held.console.open(browser, f"/jobs/{job}")
    wait_visible(browser, "#reject").click()
    assert f"Job {job} rejected" in wait_visible(browser, "#flash").text
    assert held.gw.state().job(job).state == "rejected"
    assert not list((held.gw.var_dir / "spool" / "outgoing" / str(job)).glob("*.dcm"))
    assert "job.rejected" in held.console.log_text()
