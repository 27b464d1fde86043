"""HTTP multipart bodies read as they stream in: one reader for the console's forms and for STOW-RS.

Why python-multipart's push parser, fed in 64 KiB chunks: a `multipart/form-data` upload and a
`multipart/related` STOW-RS request are the same boundary-delimited format, and the parser hands each part's
bytes over as they arrive, so a request costs at most the bound of the part being read, whatever its
Content-Length claims. Why the caller decides each part's bound once its headers are read (`budget`): the
console gives a form field 64 KB and a file the upload limit, and checks its form token before the first
file byte; STOW-RS gives every part `max_instance_mb`. Why the finished part is handed on as the buffer
itself, not a bytes copy: the receiver of a 500 MB radiograph may empty it once it holds the data set, so one
part is in memory about once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

CHUNK = 64 * 1024
#: Part headers: lower-case name -> value (latin-1 names, UTF-8 values, as browsers send file names).
Headers = dict[str, str]

logging.getLogger("python_multipart").setLevel(logging.CRITICAL)  # its parse warnings would bypass structlog


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class BodyFault(StrEnum):
    """Why a body could not be read to its end (each caller words its own answer)."""

    ENDED_EARLY = "ended early"  # fewer bytes than Content-Length: the client went away
    MALFORMED = "malformed"  # not a multipart body with this boundary
    UNTERMINATED = "unterminated"  # no closing boundary: the last part is incomplete


class BodyError(ValueError):
    """The body broke off or is not multipart; `fault` says which."""

    def __init__(self, fault: BodyFault) -> None:
        super().__init__(f"multipart body {fault.value}")
        self.fault = fault


class PartTooLarge(ValueError):
    """A part grew past the budget its headers were given; `headers` and `limit` say which and how much."""

    def __init__(self, headers: Headers, limit: int) -> None:
        super().__init__(f"a multipart part is larger than {limit} bytes")
        self.headers = headers
        self.limit = limit


def boundary(content_type: str) -> tuple[str, dict[str, str], bytes | None]:
    """(media type in lower case, its parameters, the boundary or None when absent or longer than 200 bytes)."""
    kind, params = parse_options_header(content_type)
    values = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}
    mark = params.get(b"boundary")
    return kind.decode("latin-1").lower(), values, mark if mark and len(mark) <= 200 else None


def disposition(headers: Headers) -> tuple[str, str | None]:
    """(field name, file name or None) of a form-data part's Content-Disposition."""
    _, params = parse_options_header(headers.get("content-disposition", ""))
    filename = params.get(b"filename")
    return (params.get(b"name", b"").decode("utf-8", "replace"),
            None if filename is None else filename.decode("utf-8", "replace"))


class PartReader:
    """Feeds a body to python-multipart and gathers each part into one bounded buffer.

    `budget(headers)`: called once a part's headers are read; returns the bytes the part may hold, or raises
    (the exception stops the read and reaches the caller of `read`). `on_part(headers, data)`: called with each
    complete part, in body order; may raise likewise. A part over its budget raises `PartTooLarge`.
    """

    def __init__(self, mark: bytes, *, budget: Callable[[Headers], int],
                 on_part: Callable[[Headers, bytearray], None]) -> None:
        self.budget = budget
        self.on_part = on_part
        self.parts = 0
        self.done = False
        self._limit = 0
        self._buf = bytearray()
        self._headers: Headers = {}
        self._name = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(mark, {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        })

    def read(self, stream: Readable, length: int | None) -> None:
        """Read `length` bytes of body from `stream` (or up to its end when None: a chunked body); BodyError when
        it ends early, is not multipart, or lacks its closing boundary."""
        remaining = length
        try:
            while remaining is None or remaining > 0:
                chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    if remaining is None:
                        break
                    raise BodyError(BodyFault.ENDED_EARLY)
                if remaining is not None:
                    remaining -= len(chunk)
                self._parser.write(chunk)
            self._parser.finalize()
        except MultipartParseError:
            raise BodyError(BodyFault.MALFORMED) from None
        if not self.done:
            raise BodyError(BodyFault.UNTERMINATED)

    def _begin(self) -> None:
        self._headers = {}
        self._buf = bytearray()

    def _header_end(self) -> None:
        self._headers[self._name.decode("latin-1").strip().lower()] = self._value.decode("utf-8", "replace").strip()
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._limit = self.budget(self._headers)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if len(self._buf) + end - start > self._limit:
            raise PartTooLarge(self._headers, self._limit)
        self._buf.extend(data[start:end])

    def _end(self) -> None:
        data, self._buf = self._buf, bytearray()
        self.parts += 1
        self.on_part(self._headers, data)

    def _finish(self) -> None:
        self.done = True


__all__ = ["BodyError", "BodyFault", "Headers", "PartReader", "PartTooLarge", "boundary", "disposition"]
