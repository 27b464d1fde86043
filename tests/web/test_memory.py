"""The console's memory under junk and large uploads (issue 15, defect 4), measured on the console process.

The console runs as a child process; its peak resident set (VmHWM) is reset through /proc/PID/clear_refs
before each request and read after it, so the numbers are what that request cost, whatever ran before.
Junk bodies are streamed with http.client from one reused 1 MiB buffer: the test itself stays small.
Before the fix the console read up to 512 MB of any POST before looking at the token or the content type.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests import realdata
from tests.web.harness import ConsoleProcess, form_token, wait_upload_done, write_config

MB = 1 << 20
JUNK_MB = 200
#: What a refused junk POST may cost the console (the request's thread, 64 KB reads, an error page).
JUNK_BOUND_MB = 40


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _reset_peak(pid: int) -> int:
    """Reset the peak RSS of `pid` to its current RSS (Linux >= 4.0) and return that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid, "VmRSS")


def _peak(pid: int) -> int:
    return _status(pid, "VmHWM")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    root = tmp_path_factory.mktemp("memory")
    config = write_config(root / "gateway.toml", root / "var",
                          web="max_upload_mb = 256\nmax_upload_megapixels = 2.5\nmax_kept_mb = 60\n"
                              "actions_per_minute = 100")
    proc = ConsoleProcess(config, root / "console.log").start()
    try:
        yield proc
    finally:
        proc.stop()


def _junk_post(console: ConsoleProcess, headers: dict[str, str], megabytes: int = JUNK_MB) -> int | None:
    """POST `megabytes` of junk; the HTTP status, or None when the console cut the connection (it may refuse
    before reading, and close with the body unread)."""
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=60)
    try:
        conn.putrequest("POST", "/upload")
        for key, value in {"Content-Length": str(megabytes * MB), **headers}.items():
            conn.putheader(key, value)
        conn.endheaders()
        chunk = b"\x5a" * MB
        try:
            for _ in range(megabytes):
                conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return conn.getresponse().status
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            return None
    finally:
        conn.close()


def _cookie(session: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no session", {401}),
        ("bad token header", {403}),
        ("token missing, multipart junk", {400, 403}),
        ("wrong content type", {415}),
        ("other origin", {403}),
    ],
)
def test_junk_post_is_refused_without_the_console_growing(console: ConsoleProcess, case: str,
                                                          expected: set[int]) -> None:
    session = console.session("vic")
    headers = {"Content-Type": "multipart/form-data; boundary=xyzzy", "Cookie": _cookie(session),
               "Accept": "application/json"}
    if case == "no session":
        del headers["Cookie"]
    elif case == "bad token header":
        headers["X-CSRF-Token"] = "stale"
    elif case == "wrong content type":
        headers["Content-Type"] = "application/octet-stream"
    elif case == "other origin":
        headers["Origin"] = "http://evil.example"
    before = _reset_peak(console.pid)
    status = _junk_post(console, headers)
    grown = _peak(console.pid) - before
    print(f"junk {JUNK_MB} MB POST ({case}): status {status}, RSS before {before / MB:.0f} MB, "
          f"peak growth {grown / MB:.1f} MB")
    assert status is None or status in expected, f"{case}: HTTP {status}"
    assert grown < JUNK_BOUND_MB * MB, f"{case}: the console grew by {grown / MB:.0f} MB for a refused POST"
    # and it still answers
    assert session.get(console.url + "/", timeout=30).status_code == 200


def _radiograph(path: Path, size: int) -> Path:
    """A real CR (RG1, MONOCHROME1) tiled to size x size pixels: a large radiograph with real content."""
    ds = pydicom.dcmread(realdata.testfile("RG1_UNCR.dcm"))
    arr = ds.pixel_array
    reps = (size // arr.shape[0] + 1, size // arr.shape[1] + 1)
    big = np.ascontiguousarray(np.tile(arr, reps)[:size, :size])
    ds.Rows, ds.Columns = size, size
    ds.PixelData = big.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _upload(console: ConsoleProcess, session: requests.Session, path: Path) -> requests.Response:
    token = form_token(session.get(console.url + "/", timeout=30).text)
    with open(path, "rb") as fh:
        return session.post(console.url + "/upload", data={"csrf": token, "enhancer": "gaussian"},
                            files={"file": (path.name, fh, "application/dicom")},
                            headers={"Accept": "application/json"}, timeout=300)


def test_an_upload_over_the_pixel_cap_is_refused_before_its_pixels_are_decoded(
    console: ConsoleProcess, tmp_path: Path
) -> None:
    """A 6000 x 6000 CR (72 MB) against a 2.5 megapixel cap: a clear 413, and the console grows by about the
    file's own bytes, not by the gigabytes an enhancement of it takes."""
    path = _radiograph(tmp_path / "huge.dcm", 6000)
    session = console.session("vic")
    before = _reset_peak(console.pid)
    r = _upload(console, session, path)
    grown = _peak(console.pid) - before
    size = path.stat().st_size
    print(f"6000x6000 CR ({size / MB:.0f} MB) refused: RSS before {before / MB:.0f} MB, "
          f"peak growth {grown / MB:.0f} MB")
    assert r.status_code == 413
    assert "36.0 megapixels" in r.json()["error"] and "max_upload_megapixels" in r.json()["error"]
    assert grown < 4 * size + 50 * MB


def test_kept_uploads_stay_under_the_memory_cap_oldest_evicted(console: ConsoleProcess, tmp_path: Path) -> None:
    """1500 x 1500 radiographs (2.25 megapixels, about 27 MB each once admitted) under a 60 MB cap: the third
    evicts the first; the process stays bounded."""
    session = console.session("ada")
    path = _radiograph(tmp_path / "cr.dcm", 1500)
    tokens = []
    rss = []
    start = _reset_peak(console.pid)
    for _ in range(3):
        r = _upload(console, session, path)
        assert r.status_code == 202, r.text
        tokens.append(r.json()["id"])
        assert wait_upload_done(console, session, tokens[-1])["error"] is None
        rss.append(_status(console.pid, "VmRSS"))
    peak = _peak(console.pid)
    print(f"three 1500x1500 CR uploads: RSS before {start / MB:.0f} MB, after each "
          f"{', '.join(f'{r / MB:.0f}' for r in rss)} MB, peak {peak / MB:.0f} MB")
    gone = session.get(console.url + f"/api/uploads/{tokens[0]}", timeout=30)
    assert gone.status_code == 404 and "as memory allows" in gone.json()["error"]
    for token in tokens[1:]:
        assert session.get(console.url + f"/uploads/{token}", timeout=30).status_code == 200
    # the derived object of a kept upload is still whole (only the pixel copies the pages never use were dropped)
    dcm = session.get(console.url + f"/uploads/{tokens[2]}/enhanced.dcm", timeout=60)
    assert dcm.status_code == 200 and dcm.content[128:132] == b"DICM"
