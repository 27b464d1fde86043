"""A small multipart/form-data parser for the upload form.

Why our own: the standard library's `cgi` module is gone in Python 3.13, and the `email` parser is built for
mail (it may rewrite line endings inside a part), which would corrupt a binary DICOM file. The console reads
a bounded body into memory anyway (see `MAX_UPLOAD_BYTES` in `gateway.web.app`), so splitting on the
boundary is all that is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

_BOUNDARY_RE = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_PARAM_RE = re.compile(r';\s*([a-zA-Z0-9_*-]+)="((?:[^"\\]|\\.)*)"|;\s*([a-zA-Z0-9_*-]+)=([^;\s]+)')


class FormError(ValueError):
    """The request body is not the multipart form the page sends; the message says what was wrong."""


@dataclass(frozen=True)
class Part:
    """One form field: its name, the file name when it is a file (never logged: it may hold PHI), its bytes."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` content type."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise FormError(f"expected a multipart/form-data body, got {content_type.split(';')[0] or 'none'}")
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        raise FormError("multipart/form-data body without a boundary")
    return (match.group(1) or match.group(2)).encode("latin-1")


def _disposition(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for m in _PARAM_RE.finditer(value):
        if m.group(1):
            params[m.group(1).lower()] = m.group(2).replace('\\"', '"')
        else:
            params[m.group(3).lower()] = m.group(4)
    return params


def parse(body: bytes, content_type: str) -> dict[str, Part]:
    """The fields of a form body, by name (the last one wins): multipart/form-data (uploads) or
    application/x-www-form-urlencoded (buttons such as Retry)."""
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        return {k: Part(k, None, "text/plain", v[-1].encode("utf-8")) for k, v in fields.items()}
    delimiter = b"--" + boundary_of(content_type)
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise FormError("the multipart body holds no part (was the upload cut off?)")
    parts: dict[str, Part] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        if not chunk.startswith(b"\r\n"):
            raise FormError("malformed multipart body: a delimiter is not followed by CRLF")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            raise FormError("malformed multipart body: a part has no header/body separator")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", errors="replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        params = _disposition(headers.get("content-disposition", ""))
        name = params.get("name")
        if not name:
            raise FormError("malformed multipart body: a part has no field name")
        parts[name] = Part(
            name=name,
            filename=params.get("filename"),
            content_type=headers.get("content-type", "text/plain"),
            data=data,
        )
    return parts
