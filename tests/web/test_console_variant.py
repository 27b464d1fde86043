"""The console's "automatic" follows `[enhance] default_variant`, as the worker does for unrouted series.

Why: an upload is there to show what the gateway would send to PACS. A gateway set to the quality variants
whose console ran the fast ones on "automatic" (and listed them as "Recommended") showed a different image
than the one delivered. The console runs as a child process with `default_variant = "quality"`; a real MR
slice is uploaded over HTTP and the downloaded derived object's private block says which enhancer ran.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pydicom
import pytest

from dicom_utils.private_tags import read_block
from enhancers import registry
from gateway.web.pages import enhancer_options
from tests import realdata
from tests.web.harness import ConsoleProcess, form_token, wait_upload_done, write_config

MR = "MR_small.dcm"  # pydicom's real 64 x 64 MR slice


def _groups(html: str) -> dict[str, str]:
    return dict(re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', html))


@pytest.mark.parametrize("quality", [False, True])
def test_recommended_names_the_variant_the_gateway_runs(quality: bool) -> None:
    html = enhancer_options(registry.infos(), quality=quality)
    groups = _groups(html)
    chosen, other = ("ncdn-mr-x8", "ncdn-mr") if quality else ("ncdn-mr", "ncdn-mr-x8")
    assert f'value="{chosen}"' in groups["Recommended"] and f'value="{other}"' not in groups["Recommended"]
    alternatives = groups["Other variants of the recommended models"]
    assert f'value="{other}"' in alternatives
    assert ("[MR denoise, faster]" if quality else "[MR denoise, slower, higher quality]") in alternatives
    assert 'value="ncdn-xr"' in groups["Recommended"]  # XR's quality default is its one-pass model
    assert ("highest-quality variants" if quality else "fast variants") in html.split("</option>")[0]


@pytest.fixture(scope="module")
def quality_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    root = tmp_path_factory.mktemp("console-quality")
    config = write_config(root / "gateway.toml", root / "var", enhance='default_variant = "quality"')
    proc = ConsoleProcess(config, root / "console.log").start()
    try:
        yield proc
    finally:
        proc.stop()


def test_automatic_upload_runs_the_quality_variant(quality_console: ConsoleProcess) -> None:
    session = quality_console.session("vic")
    page = session.get(quality_console.url + "/", timeout=30).text
    assert 'value="ncdn-mr-x8"' in _groups(page)["Recommended"]
    path = realdata.testfile(MR)
    with open(path, "rb") as fh:
        r = session.post(
            quality_console.url + "/upload",
            data={"csrf": form_token(page), "enhancer": "auto"},
            files={"file": (path.name, fh, "application/dicom")},
            headers={"Accept": "application/json"},
            timeout=120,
        )
    assert r.status_code == 202, r.text[:300]
    upload = r.json()["id"]
    status = wait_upload_done(quality_console, session, upload)
    assert status["error"] is None, status
    dcm = session.get(quality_console.url + f"/uploads/{upload}/enhanced.dcm", timeout=30)
    assert dcm.status_code == 200
    block = read_block(pydicom.dcmread(io.BytesIO(dcm.content)))
    assert block["enhancer"] == "ncdn-mr-x8" and block["task"] == "denoise"
