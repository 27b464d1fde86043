"""The jobs pages, on a real gateway fed by dcmtk: a delivered series, one whose PACS went away, one skipped.

The gateway runs as a child process with a folder archive and a dcmtk storescp as its PACS (with a viewer URL);
one CT series (its Series Description holding markup) is pushed with storescu and delivered; the PACS is
stopped, a second series is pushed and dies at sending; a colour secondary capture is skipped. The console
reads the same config, as an admin would start it beside the service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from dicom_utils.pixels import modality_frames
from tests import realdata
from tests.gateway.harness import GatewayProcess
from tests.peers import StoreSCP, storescu
from tests.web.harness import ConsoleProcess, screenshot, wait, wait_visible

VIEWER = "http://pacs.example/viewer?StudyInstanceUID={study}"
DESCRIPTION = '<script>alert("x")</script> & CT'


class Scenario:
    """What the module's gateway went through, for the tests to look at."""

    def __init__(self, gw: GatewayProcess, console: ConsoleProcess, done_job: int, dead_job: int,
                 skipped_job: int, first: list[Path]) -> None:
        self.gw, self.console, self.done_job, self.dead_job = gw, console, done_job, dead_job
        self.skipped_job, self.first = skipped_job, first
        self.source = pydicom.dcmread(first[0], stop_before_pixels=True)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("jobs")
    pacs = StoreSCP(root / "pacs", aet="PACS").start()
    gw = GatewayProcess(
        root,
        destinations=[
            {"name": "archive", "type": "folder", "path": "{var_dir}/archive"},
            {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port,
             "viewer_url": VIEWER},
        ],
        routes=[{"enhancer": "gaussian"}],  # the worker path is the same for every enhancer; keep CI quick
        sender={"max_attempts": 2, "base_seconds": 0.2, "cap_seconds": 0.5},
    ).start()
    console: ConsoleProcess | None = None
    try:
        first = realdata.make_series("693_UNCR.dcm", 5, root / "series-a", seed="web-jobs-a")
        for path in first:  # markup in a header value must reach the page as text
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = DESCRIPTION
            ds.save_as(path)
        storescu(gw.port, first, called_aet="ENHANCE_GW")
        (done,) = gw.wait_jobs({"done"}, 1)
        pacs.stop()
        second = realdata.make_series("CT_small.dcm", 2, root / "series-b", seed="web-jobs-b")
        storescu(gw.port, second, called_aet="ENHANCE_GW")
        (dead,) = gw.wait_jobs({"dead"}, 1)
        third = realdata.make_series("SC_rgb.dcm", 1, root / "series-c", seed="web-jobs-c")
        storescu(gw.port, third, called_aet="ENHANCE_GW")
        (skipped,) = gw.wait_jobs({"skipped"}, 1)
        console = ConsoleProcess(gw.config, root / "console.log").start()
        yield Scenario(gw, console, done.id, dead.id, skipped.id, first)
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


def _slice_values(scenario: Scenario, index: int) -> tuple[np.ndarray, pydicom.Dataset]:
    """HU of slice `index` of the done job, read by the test from the file it pushed (not through the console)."""
    sop = scenario.gw.state().job_instances(scenario.done_job)[index].sop_uid
    path = next(p for p in scenario.first if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop)
    ds = pydicom.dcmread(path)
    return modality_frames(ds)[0], ds


def test_job_page_shows_every_slice_with_values_in_hu_a_probe_an_roi_and_flicker(
    browser: WebDriver, scenario: Scenario
) -> None:
    job_id = scenario.done_job
    scenario.console.open(browser, f"/jobs/{job_id}")
    viewer = wait_visible(browser, "#slice-viewer")
    wait(browser, 30).until(lambda d: viewer.get_attribute("data-loaded") is not None)
    slider = browser.find_element(By.ID, "slice")
    assert slider.get_attribute("max") == "4"  # all 5 slices, not a sample
    job = scenario.gw.state().job(job_id)
    assert job.psnr is not None and job.ssim is not None
    facts = browser.find_element(By.CSS_SELECTOR, "table.facts").text
    assert f"{job.psnr:.2f} dB" in facts and f"{job.ssim:.4f}" in facts
    assert DESCRIPTION in facts  # shown as text...
    assert '<script>alert("x")' not in browser.page_source  # ...never as markup
    assert "PSNR" in browser.find_element(By.ID, "slice-metrics").text
    assert browser.find_element(By.CSS_SELECTOR, "details.phi").get_attribute("open") is None
    assert not browser.find_elements(By.ID, "retry")  # done: nothing to retry
    link = browser.find_element(By.CSS_SELECTOR, "a.viewer-link").get_attribute("href")
    assert link == VIEWER.replace("{study}", job.study_uid)

    # the pixel under the cursor, in HU, is the value of that pixel in the file that was pushed
    index = int(str(viewer.get_attribute("data-loaded")))
    hu, _ = _slice_values(scenario, index)
    canvas = browser.find_element(By.ID, "canvas-original")
    ActionChains(browser).move_to_element_with_offset(canvas, 10, 5).perform()
    probe = wait(browser, 10).until(lambda d: d.find_element(By.ID, "probe").get_attribute("data-original") and
                                     d.find_element(By.ID, "probe"))
    x, y = (int(v) for v in probe.text.split(":")[0].replace("x", "").split(", y"))
    assert float(str(probe.get_attribute("data-original"))) == pytest.approx(float(hu[y, x]), abs=1e-3)
    assert probe.get_attribute("data-derived") not in (None, "")
    assert "HU" in probe.text

    # an ROI dragged on the original: mean and std of the pushed file's values over the same pixels
    ActionChains(browser).move_to_element_with_offset(canvas, -60, -60).click_and_hold() \
        .move_by_offset(60, 40).move_by_offset(40, 30).release().perform()
    roi = wait(browser, 10).until(lambda d: d.find_element(By.ID, "roi").get_attribute("data-rect") and
                                   d.find_element(By.ID, "roi"))
    x0, y0, x1, y1 = (int(v) for v in str(roi.get_attribute("data-rect")).split(","))
    assert x1 - x0 > 4 and y1 - y0 > 4
    region = hu[y0:y1, x0:x1].astype(np.float64)
    assert float(str(roi.get_attribute("data-original-mean"))) == pytest.approx(region.mean(), rel=1e-4, abs=1e-3)
    assert float(str(roi.get_attribute("data-original-std"))) == pytest.approx(region.std(), rel=1e-3, abs=1e-3)
    assert roi.get_attribute("data-derived-std") not in (None, "")
    screenshot(browser, "09-job-done")

    # flicker: F shows one of the two at a time, F again the other
    panes = browser.find_element(By.CSS_SELECTOR, ".slice-panes")
    browser.find_element(By.TAG_NAME, "body").send_keys("f")
    assert "flicker" in str(panes.get_attribute("class"))
    shown = panes.get_attribute("data-show")
    other = {"original": "derived", "derived": "original"}[str(shown)]
    assert browser.find_element(By.ID, f"canvas-{shown}").is_displayed()
    assert not browser.find_element(By.ID, f"canvas-{other}").is_displayed()
    browser.find_element(By.TAG_NAME, "body").send_keys("f")
    assert panes.get_attribute("data-show") == other and browser.find_element(By.ID, f"canvas-{other}").is_displayed()

    # the arrow keys walk the series
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    wait(browser, 30).until(lambda d: viewer.get_attribute("data-loaded") == str(min(index + 1, 4)))


def test_slice_values_are_served_in_modality_units(scenario: Scenario) -> None:
    session = scenario.console.session("vic")
    url = f"{scenario.console.url}/jobs/{scenario.done_job}/slices/0/original.f32"
    values = np.frombuffer(session.get(url, timeout=30).content, dtype="<f4")
    info = session.get(f"{scenario.console.url}/api/jobs/{scenario.done_job}/slices/0", timeout=30).json()
    hu, ds = _slice_values(scenario, 0)
    assert info["unit"] == "HU" and info["original"] == {"rows": ds.Rows, "columns": ds.Columns}
    assert np.array_equal(values.reshape(ds.Rows, ds.Columns), hu.astype(np.float32))
    assert info["derived"] is not None and info["metrics"]["qa_flag"]
    assert session.get(f"{scenario.console.url}/jobs/{scenario.done_job}/slices/99/original.f32",
                       timeout=30).status_code == 404
    state = session.get(f"{scenario.console.url}/api/jobs/{scenario.done_job}", timeout=30).json()
    assert state["state"] == "done" and state["running"] is False


def test_skipped_job_page_has_no_images_and_no_reprocess(browser: WebDriver, scenario: Scenario) -> None:
    scenario.console.open(browser, f"/jobs/{scenario.skipped_job}")
    note = wait_visible(browser, "#skipped-note")
    assert "not enhanced" in note.text
    main = browser.find_element(By.TAG_NAME, "main")
    assert not main.find_elements(By.TAG_NAME, "img") and not main.find_elements(By.TAG_NAME, "canvas")
    assert not browser.find_elements(By.ID, "reprocess") and browser.find_elements(By.ID, "no-reprocess")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-refresh") is None  # finished
    screenshot(browser, "09b-job-skipped")


def test_a_running_job_page_polls_its_state_and_a_finished_one_does_not(scenario: Scenario) -> None:
    from gateway.web import jobs, pages

    state = scenario.gw.state()
    job = state.job(scenario.done_job)
    view = jobs.JobView(job, state.deliveries(job.id), 5, 5, None)
    done = pages.job_page(view, csrf="t", flash=None, listen="x")
    assert "data-refresh" not in done
    for running in ("queued", "enhancing", "sending"):
        page = pages.job_page(dataclasses.replace(view, job=dataclasses.replace(job, state=running)), csrf="t",
                              flash=None, listen="x")
        assert f'data-refresh="/api/jobs/{job.id}"' in page and 'http-equiv="refresh"' in page


def test_retry_button_requeues_a_dead_job(browser: WebDriver, scenario: Scenario) -> None:
    scenario.console.open(browser, f"/jobs/{scenario.dead_job}")
    deliveries = wait_visible(browser, "#deliveries").text
    assert "pacs" in deliveries and "dead" in deliveries
    screenshot(browser, "10-job-dead")
    browser.find_element(By.ID, "retry").click()
    flash = wait_visible(browser, "#flash")
    assert f"Job {scenario.dead_job} re-queued as enhanced" in flash.text
    screenshot(browser, "11-job-retried")
    # the PACS is still away: the job dies again, and the page shows it without a reload by hand
    wait(browser, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "h1 .badge").text == "dead"
                             and d.find_element(By.TAG_NAME, "body").get_attribute("data-refresh") is None)


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
