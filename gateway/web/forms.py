"""Read a POSTed form from the request stream into bounded buffers (`gateway.multipart`, shared with STOW-RS).

Why bounds per kind of part: non-file fields (tokens, choices) share `MAX_FIELD_BYTES`, a file gets the
upload limit, so a request costs at most what it may carry, whatever Content-Length claims. Why the token is
checked when a file part's headers arrive: a browser sends form fields in page order, and every console form
puts its `csrf` field first, so a body whose first file part arrives before a valid token is dropped at that
point, before a byte of the file is kept. (Requests that carry the token in the `X-CSRF-Token` header are
checked before the body is touched at all; see `gateway.web.app`.)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from gateway.multipart import (
    BodyError,
    BodyFault,
    Headers,
    PartReader,
    PartTooLarge,
    Readable,
    boundary,
    disposition,
)

#: Non-file fields (tokens, choices) of one form, all together.
MAX_FIELD_BYTES = 64 * 1024
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
#: The refusal of a missing or stale form token; `gateway.web.app` titles its page "Form expired" by it.
TOKEN_ERROR = "the form is out of date (the console restarted, or you logged in again?): reload the page and retry"
_FAULTS = {
    BodyFault.ENDED_EARLY: "the request body ended early (was the upload cut off?)",
    BodyFault.MALFORMED: "malformed multipart body (was the upload cut off?)",
    BodyFault.UNTERMINATED: "the multipart body holds no complete part (was the upload cut off?)",
}


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


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def read_form(
    stream: Readable,
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
    kind, _, mark = boundary(content_type)
    if kind == "application/x-www-form-urlencoded":
        if length > MAX_FIELD_BYTES:
            raise FormError(f"a form without a file holds at most {MAX_FIELD_BYTES >> 10} KB", 413)
        body = stream.read(length) if length else b""
        if len(body) != length:
            raise FormError("the request body ended early")
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        plain = {k: Part(k, None, "text/plain", v[-1].encode("latin-1")) for k, v in fields.items()}
        if token_ok is not None:
            _check_token(plain, token_ok)
        return plain
    if kind != "multipart/form-data":
        raise FormError(f"expected a multipart/form-data body, got {kind or 'none'}", 415)
    if mark is None:
        raise FormError("multipart/form-data body without a usable boundary")
    form: dict[str, Part] = {}
    used = {"fields": 0}
    checked = False

    def budget(headers: Headers) -> int:
        nonlocal checked
        name, filename = disposition(headers)
        if not name:
            raise FormError("malformed multipart body: a part has no field name")
        if filename is None:
            return MAX_FIELD_BYTES - used["fields"]
        if token_ok is not None and not checked:
            _check_token(form, token_ok)
            checked = True
        return max_file_bytes

    def on_part(headers: Headers, data: bytearray) -> None:
        name, filename = disposition(headers)
        if filename is None:
            used["fields"] += len(data)
        form[name] = Part(name, filename, headers.get("content-type", "text/plain"), bytes(data))
        del data[:]  # the bytes object above is the only copy kept

    try:
        PartReader(mark, budget=budget, on_part=on_part).read(stream, length)
    except BodyError as exc:
        raise FormError(_FAULTS[exc.fault]) from None
    except PartTooLarge as exc:
        if disposition(exc.headers)[1] is None:
            raise FormError(f"the form's fields hold more than {MAX_FIELD_BYTES >> 10} KB", 413) from None
        raise FormError(f"the file is larger than {max_file_bytes >> 20} MB", 413) from None
    if token_ok is not None and not checked:
        _check_token(form, token_ok)
    return form


def parse(body: bytes, content_type: str) -> dict[str, Part]:
    """The fields of a whole body held in memory (tests and small callers; no token check)."""
    return read_form(io.BytesIO(body), len(body), content_type, max_file_bytes=len(body))


def _check_token(form: dict[str, Part], token_ok: Callable[[str], bool]) -> None:
    token = form.get("csrf")
    if token is None or not token_ok(token.data.decode("ascii", "replace")):
        raise FormError(TOKEN_ERROR, 403)


__all__ = ["FORM_TYPES", "MAX_FIELD_BYTES", "TOKEN_ERROR", "FormError", "Part", "media_type", "parse", "read_form"]
