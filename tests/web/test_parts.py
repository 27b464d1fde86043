"""The console's small pure pieces: the form parser must keep binary files intact, the pictures must be right.

Why these, beside the browser tests: a DICOM file holds every byte value, CRLF pairs and bytes that look like a
boundary included; one lost byte would be a corrupt upload that the browser tests could miss on their files.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from gateway.web import imaging, multipart
from gateway.web.jobs import pick
from tests import realdata


def _encode(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    req = requests.Request(
        "POST", "http://127.0.0.1/upload", data=fields, files={"file": ("slice 1.dcm", file, "application/dicom")}
    ).prepare()
    assert isinstance(req.body, bytes)
    return req.body, str(req.headers["Content-Type"])


def test_multipart_keeps_every_byte_of_a_real_dicom_file() -> None:
    data = realdata.testfile("CT_small.dcm").read_bytes() + b"\r\n--\r\n\r\n" + bytes(range(256))
    body, ctype = _encode({"csrf": "t0k", "task": "sr2x"}, data)
    form = multipart.parse(body, ctype)
    assert form["file"].data == data
    assert form["file"].filename == "slice 1.dcm"
    assert form["csrf"].data == b"t0k" and form["task"].data == b"sr2x" and form["task"].filename is None


def test_urlencoded_forms_and_malformed_bodies() -> None:
    form = multipart.parse(b"csrf=a%2Bb&x=", "application/x-www-form-urlencoded")
    assert form["csrf"].data == b"a+b" and form["x"].data == b""
    with pytest.raises(multipart.FormError, match="multipart/form-data"):
        multipart.parse(b"{}", "application/json")
    with pytest.raises(multipart.FormError, match="malformed multipart body"):
        multipart.parse(b"garbage", "multipart/form-data; boundary=xyz")


def test_window_invert_and_difference() -> None:
    values = np.array([[-1000.0, 40.0, 240.0, 3000.0]], dtype=np.float32)
    assert imaging.window(values, 40, 400).tolist() == [[0, 127, 255, 255]]
    assert imaging.window(values, 40, 400, invert=True).tolist() == [[255, 128, 0, 0]]
    before = np.arange(16, dtype=np.float32).reshape(4, 4)
    after = np.repeat(np.repeat(before, 2, axis=0), 2, axis=1)  # an sr2x result of the same content
    assert np.array_equal(imaging.difference(before, after), np.zeros((4, 4)))
    diff = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    assert imaging.difference_image(diff, 2.0).tolist() == [[0, 127, 255]]


def test_pick_spreads_thumbnails_over_the_series() -> None:
    assert pick(0) == [] and pick(3) == [0, 1, 2]
    assert pick(5) == [0, 1, 3, 4] and pick(200) == [0, 66, 133, 199]


def test_web_subcommand_registers_on_the_cli_parser() -> None:
    """What the lead wires into `gateway.admin.cli.build_parser`: `add_command(sub)` gives `web --host --port`."""
    import argparse
    from pathlib import Path

    from gateway.web.command import add_command, run_command

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--config", "gw.toml", "web", "--port", "9001", "--var-dir", "/tmp/v"])
    assert args.func is run_command and args.web_port == 9001 and args.host is None  # None: [web] host
    assert args.config == Path("gw.toml") and args.var_dir == Path("/tmp/v")


def test_enhancer_list_recommends_per_modality_and_keeps_display_filters_apart() -> None:
    import re

    from enhancers import registry
    from gateway.web.pages import enhancer_options

    html = enhancer_options(registry.infos())
    groups = dict(re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', html))
    labels = list(groups)
    assert labels[0] == "Recommended"
    assert f'value="{registry.default_enhancer("CT")}"' in groups["Recommended"]
    assert "[MR denoise]" in groups["Recommended"]
    display = groups["Display filters (change intensities; not denoising)"]
    assert 'value="clahe"' in display and 'value="unsharp"' in display
    assert all("clahe" not in body for label, body in groups.items() if "Display" not in label)
    assert "fastdn-ct" in groups["Other trained models (kept for comparison)"]
