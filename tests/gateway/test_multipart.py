"""The one streaming multipart reader that the console's forms and STOW-RS share (`gateway.multipart`).

Why these, beside the console's and the STOW-RS end-to-end tests: a DICOM file holds every byte value, CRLF pairs
and bytes that look like a boundary included, and a network read can split a body anywhere, a boundary included;
one lost or extra byte would be a corrupt instance that a test on one lucky chunking could miss.
"""

from __future__ import annotations

import io

import pytest
import requests

from gateway.multipart import BodyError, BodyFault, PartReader, PartTooLarge, boundary, disposition
from tests import realdata


class Trickle(io.BytesIO):
    """A stream that returns at most `step` bytes per read, as a slow socket does."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, n: int | None = -1, /) -> bytes:
        return super().read(min(self.step, n if n is not None and n >= 0 else self.step))


def _related(parts: list[bytes], mark: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f"--{mark}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{mark}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={mark}'


def _read(body: bytes, content_type: str, *, step: int, budget: int = 1 << 26) -> list[tuple[dict[str, str], bytes]]:
    got: list[tuple[dict[str, str], bytes]] = []
    _, _, mark = boundary(content_type)
    assert mark is not None
    reader = PartReader(mark, budget=lambda _h: budget, on_part=lambda h, d: got.append((dict(h), bytes(d))))
    reader.read(Trickle(body, step), len(body))
    return got


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_stow_body_of_real_dicom_files_keeps_every_byte_however_it_arrives(step: int) -> None:
    files = [realdata.testfile(name).read_bytes() for name in ("CT_small.dcm", "MR_small.dcm")]
    files.append(files[0] + b"\r\n--b0undar\r\n--\r\n" + bytes(range(256)))  # boundary look-alikes inside a part
    body, ctype = _related(files)
    got = _read(body, ctype, step=step)
    assert [data for _, data in got] == files
    assert all(h["content-type"] == "application/dicom" for h, _ in got)


def test_form_upload_of_a_real_dicom_file_names_its_fields() -> None:
    data = realdata.testfile("CT_small.dcm").read_bytes()
    req = requests.Request("POST", "http://127.0.0.1/upload", data={"csrf": "t0k"},
                           files={"file": ("slice 1.dcm", data, "application/dicom")}).prepare()
    assert isinstance(req.body, bytes)
    got = _read(req.body, str(req.headers["Content-Type"]), step=1000)
    assert [disposition(h) for h, _ in got] == [("csrf", None), ("file", "slice 1.dcm")]
    assert got[1][1] == data


def test_a_part_over_its_budget_stops_the_read_before_it_is_kept() -> None:
    body, ctype = _related([b"x" * 10_000])
    with pytest.raises(PartTooLarge) as caught:
        _read(body, ctype, step=512, budget=4096)
    assert caught.value.limit == 4096


@pytest.mark.parametrize(("cut", "fault"), [
    (lambda b: b[: len(b) // 2], BodyFault.UNTERMINATED),  # the client sent half and closed: no closing boundary
    (lambda b: b"not a multipart body at all", BodyFault.MALFORMED),
])
def test_cut_or_foreign_bodies_say_why(cut: object, fault: BodyFault) -> None:
    body, ctype = _related([realdata.testfile("CT_small.dcm").read_bytes()])
    data = cut(body)  # type: ignore[operator]
    with pytest.raises(BodyError) as caught:
        _read(data, ctype, step=4096)
    assert caught.value.fault is fault


def test_a_body_shorter_than_its_content_length_ended_early() -> None:
    body, ctype = _related([b"abc"])
    _, _, mark = boundary(ctype)
    assert mark is not None
    reader = PartReader(mark, budget=lambda _h: 100, on_part=lambda h, d: None)
    with pytest.raises(BodyError) as caught:
        reader.read(io.BytesIO(body), len(body) + 10)
    assert caught.value.fault is BodyFault.ENDED_EARLY


def test_boundary_parameters() -> None:
    assert boundary('multipart/related; type="application/dicom"; boundary=abc') == (
        "multipart/related", {"type": "application/dicom", "boundary": "abc"}, b"abc")
    assert boundary("multipart/form-data")[2] is None
    assert boundary("multipart/form-data; boundary=" + "x" * 201)[2] is None
