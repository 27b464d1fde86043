"""The console's sr4x upload (issue 14): a low-resolution radiograph in, the 4x DICOM and PNG out, as the SRGAN
seed's web app did, and the adversarial model's risk said in the enhancer list where a user picks it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import requests
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from dicom_utils.private_tags import read_block
from tests import realdata
from tests.web.harness import ConsoleProcess, wait_download
from tests.web.test_upload import _clear, _upload, _wait_result

SIZE = 96


def _low_resolution_cr(folder: Path) -> Path:
    """A real CR cut to SIZE x SIZE (RG3's own pixels and header), as a low-resolution radiograph."""
    ds = pydicom.dcmread(realdata.testfile("RG3_UNCR.dcm"))
    ds.PixelData = ds.pixel_array[700 : 700 + SIZE, 700 : 700 + SIZE].copy().tobytes()
    ds.Rows, ds.Columns = SIZE, SIZE
    ds.ImagerPixelSpacing = [0.4, 0.4]
    path = folder / "low-res-cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sr4x_upload_gives_the_4x_dicom_and_png(
    browser: WebDriver, console: ConsoleProcess, downloads: Path, tmp_path: Path
) -> None:
    _clear(downloads)
    _upload(browser, console, _low_resolution_cr(tmp_path), enhancer="srresnet4x-xr", task="sr4x")
    _wait_result(browser)
    sizes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".pane h3 .muted")]
    assert sizes[:2] == [f"{SIZE}×{SIZE}", f"{4 * SIZE}×{4 * SIZE}"]
    browser.find_element(By.ID, "download-dicom").click()
    ds = pydicom.dcmread(wait_download(downloads, ".dcm"))
    assert (ds.Rows, ds.Columns) == (4 * SIZE, 4 * SIZE)
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.1, 0.1]
    assert read_block(ds)["task"] == "sr4x" and read_block(ds)["hallucination_risk"] == "NO"


def test_the_adversarial_model_says_its_risk_where_it_is_picked(
    browser: WebDriver, console: ConsoleProcess
) -> None:
    console.open(browser, "/")
    (option,) = browser.find_elements(By.CSS_SELECTOR, 'select#enhancer option[value="srgan4x-xr"]')
    assert "HALLUCINATION RISK" in option.get_attribute("textContent")
    assert option.find_element(By.XPATH, "..").get_attribute("label") == "Super-resolution (4x)"


def test_png_upload_sr4x_returns_a_4x_png(
    browser: WebDriver, console: ConsoleProcess, tmp_path: Path
) -> None:
    """A PNG radiograph in, a 4x PNG out (no DICOM object), as the SRGAN seed's web app did."""
    ds = pydicom.dcmread(_low_resolution_cr(tmp_path))
    gray = (ds.pixel_array.astype(np.float64) / 1023.0 * 255.0).clip(0, 255).astype(np.uint8)
    path = tmp_path / "low-res.png"
    Image.fromarray(gray).save(path)
    _upload(browser, console, path, enhancer="srresnet4x-xr", task="sr4x")
    _wait_result(browser)
    assert browser.find_elements(By.ID, "download-png") and not browser.find_elements(By.ID, "download-dicom")
    href = browser.find_element(By.ID, "download-png").get_attribute("href")
    session = requests.Session()  # the browser's session cookie: downloads need the login too
    for cookie in browser.get_cookies():
        session.cookies.set(cookie["name"], cookie["value"])
    with Image.open(io.BytesIO(session.get(str(href), timeout=30).content)) as img:
        assert img.size == (4 * SIZE, 4 * SIZE)
