"""Read a POSTed form from the request stream into bounded buffers.

Why streaming (python-multipart's push parser) rather than reading the body and splitting it: the body is
read in 64 KiB chunks and each part goes to a buffer with its own bound, so a request costs at most the bound
of what it may carry, whatever Content-Length claims. Why a token hook: a browser sends form fields in page
order, and every console form puts its `csrf` field first, so a body whose first file part arrives before a
valid token is dropped at that point, before a byte of the file is kept. (Requests that carry the token in the
`X-CSRF-Token` header are checked before the body is touched at all; see `gateway.web.app`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import parse_qs

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: Non-file fields (tokens, choices) of one form, all together.
MAX_FIELD_BYTES = 64 * 1024
CHUNK = 64 * 1024

logging.getLogger("python_multipart").setLevel(logging.CRITICAL)  # its parse warnings would bypass structlog


class FormError(ValueError):
    """The body is not a form the console takes; the message says what was wrong, `status` the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Part:
    """One form field: its name, the file name when it is a file (never logged: it may hold PHI), its bytes."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` content type."""
    if media_type(content_type) != "multipart/form-data":
        raise FormError(f"expected a multipart/form-data body, got {media_type(content_type) or 'none'}", 415)
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError("multipart/form-data body without a usable boundary")
    return boundary


class _Stop(Exception):
    """Raised inside a parser callback to stop reading the body."""

    def __init__(self, error: FormError) -> None:
        super().__init__(str(error))
        self.error = error


def read_form(
    stream: BinaryIO,
    length: int,
    content_type: str,
    *,
    max_file_bytes: int,
    token_ok: Callable[[str], bool] | None = None,
) -> dict[str, Part]:
    """The fields of a form body of `length` bytes read from `stream`, by name (the last one wins).

    `token_ok`: when given, the form's `csrf` field must satisfy it, and must come before any file part;
    FormError(403) otherwise, raised as soon as that is known. Every bound broken is FormError(413).
    """
    kind = media_type(content_type)
    if kind == "application/x-www-form-urlencoded":
        if length > MAX_FIELD_BYTES:
            raise FormError(f"a form without a file holds at most {MAX_FIELD_BYTES >> 10} KB", 413)
        body = _read_exactly(stream, length)
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        form = {k: Part(k, None, "text/plain", v[-1].encode("latin-1")) for k, v in fields.items()}
        if token_ok is not None:
            _check_token(form, token_ok)
        return form
    reader = _MultipartReader(boundary_of(content_type), max_file_bytes, token_ok)
    remaining = length
    try:
        while remaining > 0:
            chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                raise FormError("the request body ended early (was the upload cut off?)")
            remaining -= len(chunk)
            reader.parser.write(chunk)
        reader.parser.finalize()
    except _Stop as stop:
        raise stop.error from None
    except MultipartParseError:
        raise FormError("malformed multipart body (was the upload cut off?)") from None
    if not reader.done:
        raise FormError("the multipart body holds no complete part (was the upload cut off?)")
    if token_ok is not None and not reader.token_checked:
        _check_token(reader.form, token_ok)
    return reader.form


def parse(body: bytes, content_type: str) -> dict[str, Part]:
    """The fields of a whole body held in memory (tests and small callers; no token check)."""
    import io

    return read_form(io.BytesIO(body), len(body), content_type, max_file_bytes=len(body))


#: The refusal of a missing or stale form token; `gateway.web.app` titles its page "Form expired" by it.
TOKEN_ERROR = "the form is out of date (the console restarted, or you logged in again?): reload the page and retry"


def _check_token(form: dict[str, Part], token_ok: Callable[[str], bool]) -> None:
    token = form.get("csrf")
    if token is None or not token_ok(token.data.decode("ascii", "replace")):
        raise FormError(TOKEN_ERROR, 403)


def _read_exactly(stream: BinaryIO, length: int) -> bytes:
    data = stream.read(length) if length else b""
    if len(data) != length:
        raise FormError("the request body ended early")
    return data


class _MultipartReader:
    """Callbacks of python-multipart's parser that gather each part into its bounded buffer."""

    def __init__(self, boundary: bytes, max_file_bytes: int, token_ok: Callable[[str], bool] | None) -> None:
        self.max_file_bytes = max_file_bytes
        self.token_ok = token_ok
        self.token_checked = False
        self.form: dict[str, Part] = {}
        self.done = False
        self._field_bytes = 0
        self._file_bytes = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._buf = bytearray()
        self._name = ""
        self._filename: str | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    def _part_begin(self) -> None:
        self._headers = {}
        self._buf = bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").strip().lower()] = self._header_value.decode(
            "utf-8", "replace").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise _Stop(FormError("malformed multipart body: a part has no field name"))
        self._name = name
        filename = params.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        if self._filename is not None and self.token_ok is not None and not self.token_checked:
            _check_or_stop(self.form, self.token_ok)
            self.token_checked = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._filename is None:
            self._field_bytes += size
            if self._field_bytes > MAX_FIELD_BYTES:
                raise _Stop(FormError(f"the form's fields hold more than {MAX_FIELD_BYTES >> 10} KB", 413))
        else:
            self._file_bytes += size
            if self._file_bytes > self.max_file_bytes:
                raise _Stop(FormError(f"the file is larger than {self.max_file_bytes >> 20} MB", 413))
        self._buf.extend(data[start:end])

    def _part_end(self) -> None:
        data = bytes(self._buf)
        self._buf = bytearray()  # the bytes object above is the only copy kept
        self.form[self._name] = Part(self._name, self._filename,
                                     self._headers.get("content-type", "text/plain"), data)

    def _end(self) -> None:
        self.done = True


def _check_or_stop(form: dict[str, Part], token_ok: Callable[[str], bool]) -> None:
    try:
        _check_token(form, token_ok)
    except FormError as exc:
        raise _Stop(exc) from None


__all__ = ["FORM_TYPES", "TOKEN_ERROR", "FormError", "Part", "boundary_of", "media_type", "parse", "read_form"]
