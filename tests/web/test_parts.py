"""The console's small pure pieces: the form parser must keep binary files intact, the pictures must be right.

Why these, beside the browser tests: a DICOM file holds every byte value, CRLF pairs and bytes that look like a
boundary included; one lost byte would be a corrupt upload that the browser tests could miss on their files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from gateway.web import forms, imaging
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
    form = forms.parse(body, ctype)
    assert form["file"].data == data
    assert form["file"].filename == "slice 1.dcm"
    assert form["csrf"].data == b"t0k" and form["task"].data == b"sr2x" and form["task"].filename is None


def test_urlencoded_forms_and_malformed_bodies() -> None:
    form = forms.parse(b"csrf=a%2Bb&x=", "application/x-www-form-urlencoded")
    assert form["csrf"].data == b"a+b" and form["x"].data == b""
    with pytest.raises(forms.FormError, match="multipart/form-data"):
        forms.parse(b"{}", "application/json")
    with pytest.raises(forms.FormError, match="malformed multipart body"):
        forms.parse(b"garbage", "multipart/form-data; boundary=xyz")


def test_window_invert_and_difference() -> None:
    values = np.array([[-1000.0, 40.0, 240.0, 3000.0]], dtype=np.float32)
    assert imaging.window(values, 40, 400).tolist() == [[0, 127, 255, 255]]
    assert imaging.window(values, 40, 400, invert=True).tolist() == [[255, 128, 0, 0]]
    before = np.arange(16, dtype=np.float32).reshape(4, 4)
    after = np.repeat(np.repeat(before, 2, axis=0), 2, axis=1)  # an sr2x result of the same content
    assert np.array_equal(imaging.difference(before, after), np.zeros((4, 4)))
    diff = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    assert imaging.difference_image(diff, 2.0).tolist() == [[0, 127, 255]]


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


def test_processing_time_shows_as_a_time_never_as_an_infinite_psnr() -> None:
    """A processing time of a second or more once went through the PSNR formatter, whose 999 (the private tag's
    stand-in for an infinite PSNR) showed every such time as "∞ (identical)"."""
    from gateway.web.pages import _tag_rows, millis, number

    assert millis(850.4) == "850 ms" and millis(999.0) == "999 ms"
    assert millis(1234.5) == "1.23 s" and millis(45_000) == "45.0 s" and millis(600_000) == "10.0 min"
    assert millis(None) == "-" and millis("") == "-"
    assert number(999.0, 2, " dB") == "∞ (identical)" and number(41.234, 2, " dB") == "41.23 dB"
    shown = {name: value for _tag, _vr, name, value in _tag_rows({"processing_ms": 1500.0, "psnr": 999.0})}
    assert "1.50 s" in shown.values() and "∞ (identical)" in shown.values()


def test_templates_escape_values_from_files_and_users() -> None:
    from gateway.web import pages

    who = pages.Who("ada<b>", "admin", 'tok"en')
    html = pages.error_page("Not <found>", "Series <script>alert(1)</script>", listen="127.0.0.1:1", who=who)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Not &lt;found&gt;" in html and "ada&lt;b&gt;" in html and 'value="tok&#34;en"' in html
    assert html.count("<script") == 1  # only the console's own script tag


def test_viewer_links_fill_in_the_study_uid() -> None:
    from gateway.web.pages import viewer_links

    links = viewer_links([("pacs", "http://pacs/viewer?StudyInstanceUID={study}"), ("archive", "")], "1.2.3")
    assert links == {"pacs": "http://pacs/viewer?StudyInstanceUID=1.2.3"}


def test_static_files_are_package_data() -> None:
    from importlib.resources import files

    static = files("gateway.web").joinpath("static")
    assert "initJob" in static.joinpath("console.js").read_text() and ".slice-panes" in static.joinpath(
        "console.css").read_text()


def test_a_destination_takes_an_optional_viewer_url(tmp_path: Path) -> None:
    from gateway import settings
    from gateway.errors import ConfigError
    from tests.web.harness import write_config

    path = write_config(tmp_path / "gw.toml", tmp_path / "var")
    plain = settings.load(path)
    assert [d.viewer_url for d in plain.destinations] == [""]
    text = path.read_text()
    line = 'path = "{var_dir}/archive"\n'
    path.write_text(text.replace(line, line + 'viewer_url = "https://pacs/view?uid={study}"\n', 1))
    assert settings.load(path).destinations[0].viewer_url == "https://pacs/view?uid={study}"
    path.write_text(text.replace(line, line + 'viewer_url = "javascript:alert(1)"\n', 1))
    with pytest.raises(ConfigError, match="viewer_url"):
        settings.load(path)
