"""Upload and compare, driven in headless Chromium as a radiologist would use it.

Real files only (pydicom's CT and CR test images); the downloaded derived object is checked the way the
gateway's own derived objects are: pydicom reads it, DERIVED image type, the private block with the metrics
the page showed, and dciodvfy reports no error the source did not already have.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from dicom_utils.private_tags import read_block
from enhancers.registry import default_enhancer
from tests import realdata
from tests.dicom_utils.helpers import dciodvfy_errors
from tests.web.harness import (
    ConsoleProcess,
    form_token,
    images_loaded,
    screenshot,
    wait,
    wait_download,
    wait_visible,
)

CT = "CT_small.dcm"
CR = "RG1_UNCR.dcm"  # 1955 x 1841 MONOCHROME1 radiograph


def _clear(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink() if item.is_file() else shutil.rmtree(item)


def _upload(browser: WebDriver, console: ConsoleProcess, path: Path, *, enhancer: str, task: str = "denoise",
            shot: str | None = None) -> None:
    console.open(browser, "/")
    wait_visible(browser, "form.upload")
    browser.find_element(By.ID, "file").send_keys(str(path))
    Select(browser.find_element(By.ID, "task")).select_by_value(task)
    Select(browser.find_element(By.ID, "enhancer")).select_by_value(enhancer)
    if shot:
        screenshot(browser, shot)
    browser.find_element(By.ID, "submit").click()


def _wait_result(browser: WebDriver, timeout: float = 180.0) -> None:
    wait(browser, timeout).until(lambda d: "/uploads/" in d.current_url and d.find_elements(By.CSS_SELECTOR, ".viewer"))
    wait(browser, 60).until(lambda d: images_loaded(d, ".viewport img"))


def _metric(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, f"#{element_id} .value").text)


def _check_derived(path: Path, source_name: str, enhancer: str, page_psnr: str, page_ssim: str) -> None:
    source = pydicom.dcmread(realdata.testfile(source_name))
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.pixel_array.shape == source.pixel_array.shape
    block = read_block(ds)
    assert block["enhancer"] == enhancer and block["metric_basis"] == "INPUT" and block["task"] == "denoise"
    assert isinstance(block["psnr"], float) and isinstance(block["ssim"], float)
    # the page shows exactly what the private tags hold
    assert page_psnr == f"{block['psnr']:.2f} dB"
    assert page_ssim == f"{block['ssim']:.4f}"
    new_errors = dciodvfy_errors(path) - dciodvfy_errors(realdata.testfile(source_name))
    assert not new_errors, f"dciodvfy errors not in the source: {sorted(new_errors)}"


def test_ct_upload_shows_before_after_and_downloads_a_valid_derived_dicom(
    browser: WebDriver, console: ConsoleProcess, downloads: Path
) -> None:
    _clear(downloads)
    _upload(browser, console, realdata.testfile(CT), enhancer="auto", shot="01-upload-form")
    _wait_result(browser)
    assert default_enhancer("CT") in browser.find_element(By.TAG_NAME, "h1").text  # the CT denoise default
    psnr, ssim = _metric(browser, "metric-psnr"), _metric(browser, "metric-ssim")
    assert re.fullmatch(r"\d+\.\d\d dB", psnr) and re.fullmatch(r"0\.\d{4}|1\.0000", ssim)
    assert browser.find_element(By.CSS_SELECTOR, "#metric-qa .badge").text == "PASS"
    # patient fields only on request
    details = browser.find_element(By.CSS_SELECTOR, "details.phi")
    assert details.get_attribute("open") is None
    assert "CompressedSamples" not in browser.find_element(By.TAG_NAME, "main").text
    screenshot(browser, "02-result-ct")
    browser.find_element(By.CSS_SELECTOR, "details.phi summary").click()
    assert "CompressedSamples^CT1" in details.text  # there when the user asks for it
    browser.find_element(By.CSS_SELECTOR, "details.phi summary").click()

    # window/level: a CT preset re-renders both images with that window
    Select(browser.find_element(By.ID, "wl-preset")).select_by_value("lung")
    wait(browser, 10).until(lambda d: "c=-600" in (d.find_element(By.ID, "view-original").get_attribute("src") or ""))
    assert "w=1500" in (browser.find_element(By.ID, "view-enhanced").get_attribute("src") or "")
    wait(browser, 30).until(lambda d: images_loaded(d, ".viewport img"))
    # zoom applies one transform to the three panes
    browser.find_element(By.ID, "zoom-in").click()
    browser.find_element(By.ID, "zoom-in").click()
    assert browser.find_element(By.ID, "zoom-level").text == "400 %"
    transforms = {img.get_attribute("style") or "" for img in browser.find_elements(By.CSS_SELECTOR, ".viewport img")}
    assert len(transforms) == 1 and "scale(4)" in transforms.pop()
    screenshot(browser, "03-result-ct-lung-zoomed")

    browser.find_element(By.ID, "download-dicom").click()
    dcm = wait_download(downloads, ".dcm")
    assert "CompressedSamples" not in dcm.name and "1CT1" not in dcm.name
    _check_derived(dcm, CT, default_enhancer("CT"), psnr, ssim)

    browser.find_element(By.ID, "download-comparison").click()
    png = wait_download(downloads, ".png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 2.5 * img.height  # three panels side by side


def test_cr_upload_with_gaussian_keeps_monochrome1_and_downloads(
    browser: WebDriver, console: ConsoleProcess, downloads: Path
) -> None:
    _clear(downloads)
    _upload(browser, console, realdata.testfile(CR), enhancer="gaussian")
    # the progress indicator, caught while the 7 MB radiograph is decoded and enhanced (a fast machine may be
    # done before the shot: the result is what the test asserts)
    with contextlib.suppress(TimeoutException, StaleElementReferenceException):
        wait_visible(browser, "#progress", 10)
        screenshot(browser, "04-upload-progress")
    _wait_result(browser)
    assert "gaussian" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.ID, "invert").is_selected()  # MONOCHROME1 displays inverted
    assert "(15000 / 30000)" in browser.find_element(By.ID, "wl-preset").text  # the file's own window
    screenshot(browser, "05-result-cr")
    browser.find_element(By.ID, "download-dicom").click()
    dcm = wait_download(downloads, ".dcm")
    _check_derived(dcm, CR, "gaussian", _metric(browser, "metric-psnr"), _metric(browser, "metric-ssim"))
    assert pydicom.dcmread(dcm, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"


def test_png_upload_gives_a_quick_look_without_a_dicom_object(
    browser: WebDriver, console: ConsoleProcess, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(realdata.testfile(CT))
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.clip((values + 160) / 400 * 255, 0, 255).astype(np.uint8)
    path = tmp_path / "slice.png"
    Image.fromarray(gray).save(path)
    _upload(browser, console, path, enhancer="gaussian")
    _wait_result(browser)
    assert browser.find_elements(By.ID, "download-png") and not browser.find_elements(By.ID, "download-dicom")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "no DICOM object" in main
    # a PNG has no derived object, so no private tags to talk about: its numbers are measurements
    assert "private tag" not in main.lower() and not browser.find_elements(By.ID, "private-tags")
    assert "PSNR vs the uploaded image" in browser.find_element(By.ID, "measurements").text
    href = browser.find_element(By.ID, "download-png").get_attribute("href")
    session = requests.Session()  # the browser's session cookie: downloads need the login too
    for cookie in browser.get_cookies():
        session.cookies.set(cookie["name"], cookie["value"])
    with Image.open(io.BytesIO(session.get(str(href), timeout=30).content)) as img:
        assert img.size == (gray.shape[1], gray.shape[0]) and img.mode == "L"


def test_sr2x_upload_doubles_the_matrix_of_the_derived_object(
    browser: WebDriver, console: ConsoleProcess, downloads: Path
) -> None:
    _clear(downloads)
    _upload(browser, console, realdata.testfile(CT), enhancer="bicubic", task="sr2x")
    _wait_result(browser)
    sizes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".pane h3 .muted")]
    assert sizes[:2] == ["128×128", "256×256"]
    browser.find_element(By.ID, "download-dicom").click()
    ds = pydicom.dcmread(wait_download(downloads, ".dcm"))
    source = pydicom.dcmread(realdata.testfile(CT), stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == (256, 256)
    assert float(ds.PixelSpacing[0]) == pytest.approx(float(source.PixelSpacing[0]) / 2)
    assert read_block(ds)["task"] == "sr2x"


def test_multiframe_upload_has_a_frame_slider(browser: WebDriver, console: ConsoleProcess) -> None:
    _upload(browser, console, realdata.testfile("emri_small.dcm"), enhancer="gaussian")  # 10 MR frames
    _wait_result(browser)
    frame = browser.find_element(By.ID, "frame")
    assert frame.get_attribute("max") == "9"
    browser.execute_script(
        "arguments[0].value = 7; arguments[0].dispatchEvent(new Event('input'));", frame
    )
    wait(browser, 10).until(lambda d: "frame=7" in (d.find_element(By.ID, "view-enhanced").get_attribute("src") or ""))
    wait(browser, 30).until(lambda d: images_loaded(d, ".viewport img"))
    assert browser.find_element(By.ID, "frame-label").text == "8"


@pytest.mark.parametrize(
    ("name", "expected", "shot"),
    [
        ("not-dicom.txt", "not a DICOM file", "06-error-not-dicom"),
        ("MR_truncated.dcm", "pixel data cannot be decoded", "07-error-undecodable"),
    ],
)
def test_non_image_and_undecodable_files_get_a_clear_error(
    browser: WebDriver, console: ConsoleProcess, tmp_path: Path, name: str, expected: str, shot: str
) -> None:
    if name.endswith(".txt"):
        path = tmp_path / name
        path.write_text("Patient: nobody. This is a text file, not an image.\n" * 20)
    else:
        path = realdata.testfile(name)
    _upload(browser, console, path, enhancer="gaussian")
    box = wait_visible(browser, "#upload-error", 60)
    assert expected in box.text
    assert browser.find_element(By.ID, "submit").is_enabled()  # the user can pick another file
    screenshot(browser, shot)


def test_form_post_without_script_answers_with_an_error_page(console: ConsoleProcess) -> None:
    """The plain form POST (no JavaScript) gets a readable page, and a stale form token is refused."""
    session = console.session("vic")  # a viewer may try an enhancer
    token = form_token(session.get(console.url + "/", timeout=30).text)
    files = {"file": ("x.bin", b"\x00" * 300)}
    r = session.post(console.url + "/upload", data={"csrf": token, "enhancer": "auto"}, files=files,
                     timeout=30)
    assert r.status_code == 415 and "not a DICOM file" in r.text and 'id="error-message"' in r.text
    r = session.post(console.url + "/upload", data={"csrf": "stale"}, files=files, timeout=30)
    assert r.status_code == 403
    r = session.get(console.url + "/", headers={"Host": "evil.example:80"}, timeout=30)
    assert r.status_code == 421  # DNS rebinding: only loopback host names are served


def test_no_phi_in_urls_or_the_console_log(console: ConsoleProcess) -> None:
    """Runs after the uploads above: the console's log and request paths hold no patient field."""
    log = console.log_text()
    assert "web.upload_enhanced" in log
    for name in (CT, CR):
        ds = pydicom.dcmread(realdata.testfile(name), stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(keyword) or "")
            if len(value) >= 3:
                assert value not in log, f"{keyword} leaked into the console log"
