"""The jobs pages, on a real gateway fed by dcmtk: a delivered series and one whose PACS went away.

The gateway runs as a child process with a folder archive and a dcmtk storescp as its PACS; one CT series is
pushed with storescu and delivered; the PACS is stopped, a second series is pushed and dies at sending. The
console reads the same config, as an admin would start it beside the service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests import realdata
from tests.gateway.harness import GatewayProcess
from tests.peers import StoreSCP, storescu
from tests.web.harness import ConsoleProcess, images_loaded, screenshot, wait, wait_visible


class Scenario:
    """What the module's gateway went through, for the tests to look at."""

    def __init__(self, gw: GatewayProcess, console: ConsoleProcess, done_job: int, dead_job: int,
                 source: pydicom.Dataset) -> None:
        self.gw, self.console, self.done_job, self.dead_job, self.source = gw, console, done_job, dead_job, source


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("jobs")
    pacs = StoreSCP(root / "pacs", aet="PACS").start()
    gw = GatewayProcess(
        root,
        destinations=[
            {"name": "archive", "type": "folder", "path": "{var_dir}/archive"},
            {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
        ],
        routes=[{"enhancer": "gaussian"}],  # the worker path is the same for every enhancer; keep CI quick
        sender={"max_attempts": 2, "base_seconds": 0.2, "cap_seconds": 0.5},
    ).start()
    console: ConsoleProcess | None = None
    try:
        first = realdata.make_series("693_UNCR.dcm", 5, root / "series-a", seed="web-jobs-a")
        storescu(gw.port, first, called_aet="ENHANCE_GW")
        (done,) = gw.wait_jobs({"done"}, 1)
        pacs.stop()
        second = realdata.make_series("CT_small.dcm", 2, root / "series-b", seed="web-jobs-b")
        storescu(gw.port, second, called_aet="ENHANCE_GW")
        (dead,) = gw.wait_jobs({"dead"}, 1)
        console = ConsoleProcess(gw.config, root / "console.log").start()
        yield Scenario(gw, console, done.id, dead.id, pydicom.dcmread(first[0], stop_before_pixels=True))
    finally:
        if console is not None:
            console.stop()
        gw.stop()
        pacs.stop()


def test_jobs_page_lists_the_pushed_series_with_state_timings_and_destinations(
    browser: WebDriver, scenario: Scenario
) -> None:
    scenario.console.open(browser, "/jobs")
    done = wait_visible(browser, f"#job-{scenario.done_job}")
    dead = browser.find_element(By.ID, f"job-{scenario.dead_job}")
    assert "done" in done.text and "gaussian 1.0" in done.text and "5/5" in done.text
    assert "archive: done" in done.text and "pacs: done" in done.text
    assert "dead" in dead.text and "archive: done" in dead.text and "pacs: dead" in dead.text
    assert "2/2" in dead.text
    assert "done 1" in browser.find_element(By.ID, "count-done").text
    # patient fields never on the list
    page = browser.page_source
    for keyword in ("PatientName", "PatientID"):
        assert str(scenario.source.get(keyword)) not in page
    screenshot(browser, "08-jobs")
    scenario.console.open(browser, "/jobs?state=dead")
    assert not browser.find_elements(By.ID, f"job-{scenario.done_job}")
    assert browser.find_elements(By.ID, f"job-{scenario.dead_job}")


def test_job_page_shows_before_after_thumbnails_and_metrics(browser: WebDriver, scenario: Scenario) -> None:
    scenario.console.open(browser, f"/jobs/{scenario.done_job}")
    wait_visible(browser, ".thumbs")
    wait(browser, 30).until(lambda d: images_loaded(d, ".thumb img"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.thumb-original")) == 4  # 4 of 5 slices, spread
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.thumb-derived")) == 4
    job = scenario.gw.state().job(scenario.done_job)
    assert job.psnr is not None and job.ssim is not None
    facts = browser.find_element(By.CSS_SELECTOR, "table.facts").text
    assert f"{job.psnr:.2f} dB" in facts and f"{job.ssim:.4f}" in facts
    assert "PSNR" in browser.find_element(By.CSS_SELECTOR, ".thumb").text
    assert browser.find_element(By.CSS_SELECTOR, "details.phi").get_attribute("open") is None
    assert not browser.find_elements(By.ID, "retry")  # done: nothing to retry
    screenshot(browser, "09-job-done")


def test_retry_button_requeues_a_dead_job(browser: WebDriver, scenario: Scenario) -> None:
    scenario.console.open(browser, f"/jobs/{scenario.dead_job}")
    deliveries = wait_visible(browser, "#deliveries").text
    assert "pacs" in deliveries and "dead" in deliveries
    screenshot(browser, "10-job-dead")
    browser.find_element(By.ID, "retry").click()
    flash = wait_visible(browser, "#flash")
    assert f"Job {scenario.dead_job} re-queued as enhanced" in flash.text
    screenshot(browser, "11-job-retried")


def test_reprocess_button_queues_a_new_job_with_another_enhancer(browser: WebDriver, scenario: Scenario) -> None:
    scenario.console.open(browser, f"/jobs/{scenario.done_job}")
    Select(wait_visible(browser, "#reprocess-enhancer")).select_by_value("unsharp")
    browser.find_element(By.ID, "reprocess").click()
    flash = wait_visible(browser, "#flash")
    assert f"Queued from job {scenario.done_job} with unsharp" in flash.text
    new_id = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
    new = scenario.gw.state().job(new_id)
    assert new.reprocess == 1 and new.enhancer == "unsharp" and new.instance_count == 5
    screenshot(browser, "12-job-reprocessed")


def test_no_phi_in_the_console_log(scenario: Scenario) -> None:
    log = scenario.console.log_text()
    assert "web.request" in log and "web.job_retried" in log
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        value = str(scenario.source.get(keyword) or "")
        if len(value) >= 3:
            assert value not in log, f"{keyword} leaked into the console log"
