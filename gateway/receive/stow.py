"""STOW-RS reception: `POST /dicomweb/studies` (and `/dicomweb/studies/{study}`) stores instances like a C-STORE.

Why the handler is shaped this way: an instance sent over DICOMweb must be exactly as safe as one sent over
DIMSE. Each part of the multipart/related body goes through the SCP's own checks (`dicom_utils.validate.check_instance`),
the SCP's own durable path (`gateway.receive.scp.spool_instance`: temp file + fsync + rename into the spool, then the
state row), and only then is it listed as stored in the PS3.18 response.
The body is parsed as it streams in (`gateway.multipart`: python-multipart's push parser, shared with the console):
one instance is held in memory at a time, never the whole request. A request cut off halfway (client gone,
gateway killed) leaves the instances that were complete stored and recorded, and nothing of the one in flight
but a `.part` file in `spool/tmp`, which the next start removes; the client, having no response, sends the
request again and the stored instances count as duplicates (success), as with C-STORE.

Why the standard library's threaded HTTP server: one request per thread is what a STOW-RS sender needs (a
few long uploads, not thousands of small ones); `max_requests` bounds the threads that do work and the TLS
handshake runs in the request's thread with a deadline, never in the accept loop.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import socket
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any, BinaryIO

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID
from pynetdicom.presentation import AllStoragePresentationContexts
from structlog.contextvars import bound_contextvars

from dicom_utils.pixels import DECODABLE_TRANSFER_SYNTAXES
from dicom_utils.validate import SopClassMismatch, check_instance
from gateway import logs, multipart
from gateway.dimse.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_MISMATCH, WARNING
from gateway.errors import ConfigError, OutOfSpaceError, SpoolError, StateError
from gateway.metrics import Metrics
from gateway.receive.scp import file_meta_bytes, spool_instance
from gateway.settings import DicomwebSettings, Settings
from gateway.storage.spool import InstanceKey, Spool
from gateway.storage.state import StateStore

log = logs.get("gateway.dicomweb")

#: PS3.18 failure reasons (Failure Reason (0008,1197)) beside the SCP's DIMSE codes.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: The instance belongs to another study than the one named in the URL (`/studies/{study}`).
STUDY_MISMATCH = 0xA901
#: A duplicate that was already stored: success, with this warning reason, as a C-STORE duplicate is a success.
ALREADY_STORED = WARNING

_STORAGE_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
_ACCEPTED_SYNTAXES = frozenset(str(uid) for uid in DECODABLE_TRANSFER_SYNTAXES)
_PATH_RE = re.compile(r"^/dicomweb/studies(?:/([0-9.]{1,64}))?/?$")
#: Bytes of one part's headers and of the body outside the parts (boundaries, preamble of the multipart).
_SLACK = 1 << 20


class RequestError(Exception):
    """The request as a whole is refused: HTTP `status` and a message that says what to fix."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Outcome:
    """What became of one part: stored (status 0), a duplicate (stored before), or refused with a reason."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int = 0
    reason: str = ""
    duplicate: bool = False
    size: int = 0


@dataclass
class StowResult:
    """Every part's outcome, in the order they arrived; `response()` is the PS3.18 JSON body."""

    study_uid: str | None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def stored(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 0]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 0]

    def http_status(self) -> int:
        """200 all stored; 202 some stored, some not; 409 none stored (PS3.18 10.5.3)."""
        if not self.outcomes:
            return HTTPStatus.BAD_REQUEST
        if not self.failed:
            return HTTPStatus.OK
        return HTTPStatus.ACCEPTED if self.stored else HTTPStatus.CONFLICT

    def response(self) -> dict[str, Any]:
        """The Store Instances Response Module in DICOM JSON (PS3.18 F.2): Referenced and Failed SOP Sequences.

        Warning Reason (0008,1196) marks duplicates; Failure Reason (0008,1197) is the DIMSE-style code of a
        refusal. The human reason goes in Text Value (0040,A160) of the item, so a sender's log says what to fix.
        """
        def ref(o: Outcome) -> dict[str, Any]:
            item: dict[str, Any] = {}
            if o.sop_class_uid:
                item["00081150"] = {"vr": "UI", "Value": [o.sop_class_uid]}
            if o.sop_instance_uid:
                item["00081155"] = {"vr": "UI", "Value": [o.sop_instance_uid]}
            return item

        body: dict[str, Any] = {}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                ref(o) | {"00081197": {"vr": "US", "Value": [o.status]},
                          "0040A160": {"vr": "UT", "Value": [o.reason[:1024]]}}
                for o in self.failed
            ]}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                ref(o) | ({"00081196": {"vr": "US", "Value": [ALREADY_STORED]}} if o.duplicate else {})
                for o in self.stored
            ]}
        return body


#: How much of a part's head the File Meta Information is read from; a longer File Meta (real ones are a few
#: hundred bytes) is refused as not Part 10.
_META_HEAD = 1 << 16


class InstanceSink:
    """Validates, spools and records one Part 10 file at a time; shared by all requests of a server."""

    def __init__(self, state: StateStore, spool: Spool, metrics: Metrics | None = None) -> None:
        self.state = state
        self.spool = spool
        self.metrics = metrics

    def accept(self, data: bytes | bytearray, study_uid: str | None, sender: str) -> Outcome:
        """Store one received file and say what became of it; never raises (every failure is an outcome).

        A bytearray is consumed: it is emptied as soon as the data set is copied out of it, so that a large
        instance is not held twice while it is checked and written.
        """
        try:
            return self._accept(data, study_uid, sender)
        except Exception as exc:  # one bad part must not cost the others their response
            log.exception("stow.internal_error", error=type(exc).__name__)
            return Outcome("", "", OUT_OF_RESOURCES, f"internal error ({type(exc).__name__}); see the gateway log")

    def _refuse(self, outcome: Outcome) -> Outcome:
        log.warning("stow.refused", status=f"0x{outcome.status:04X}", sop_instance_uid=outcome.sop_instance_uid,
                    reason=outcome.reason[:300])
        if self.metrics:
            self.metrics.instances_refused.labels(f"0x{outcome.status:04X}").inc()
        return outcome

    def _accept(self, data: bytes | bytearray, study_filter: str | None, sender: str) -> Outcome:
        # the File Meta is read from a bounded head: BytesIO over the whole part would copy it
        fp = BytesIO(bytes(memoryview(data)[:_META_HEAD]))
        try:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop = str(meta.MediaStorageSOPInstanceUID)
            tsyntax = UID(str(meta.TransferSyntaxUID))
        except Exception as exc:  # noqa: BLE001 - pydicom raises several types for a file that is not Part 10
            return self._refuse(Outcome("", "", CANNOT_UNDERSTAND,
                                        f"not a DICOM Part 10 file with File Meta Information: {exc}"))
        offset = fp.tell()
        if sop_class not in _STORAGE_CLASSES:
            return self._refuse(Outcome(sop_class, sop, SOP_CLASS_NOT_SUPPORTED,
                                        f"SOP Class {sop_class} is not a storage SOP class the gateway accepts"))
        if str(tsyntax) not in _ACCEPTED_SYNTAXES:
            return self._refuse(Outcome(sop_class, sop, TRANSFER_SYNTAX_NOT_SUPPORTED,
                                        f"transfer syntax {tsyntax} is not one the gateway accepts; send it as"
                                        " Explicit VR Little Endian"))
        with memoryview(data) as view:
            body = bytes(view[offset:])  # the one copy: the checks take bytes
        if isinstance(data, bytearray):
            data.clear()
        try:
            study, series, sop, modality = check_instance(body, sop, sop_class, tsyntax)
            InstanceKey(study, series, sop)  # a non-UID cannot be a spool key
        except Exception as exc:  # noqa: BLE001 - any undecodable dataset is refused with a reason, never raised
            code = SOP_CLASS_MISMATCH if isinstance(exc, SopClassMismatch) else CANNOT_UNDERSTAND
            return self._refuse(Outcome(sop_class, sop, code, str(exc)))
        if study_filter and study != study_filter:
            return self._refuse(Outcome(sop_class, sop, STUDY_MISMATCH,
                                        "the instance's Study Instance UID differs from the study in the URL"))
        with bound_contextvars(study_uid=study, series_uid=series):
            try:
                size = spool_instance(
                    self.state, self.spool, study=study, series=series, sop=sop, sop_class_uid=sop_class,
                    modality=modality, meta=file_meta_bytes(sop_class, sop, tsyntax), body=body, calling_aet=sender,
                )
            except (OutOfSpaceError, SpoolError, sqlite3.Error, StateError, OSError) as exc:
                log.error("stow.store_failed", status="0xA700", sop_instance_uid=sop, reason=str(exc)[:300])
                if self.metrics:
                    self.metrics.instances_refused.labels("0xA700").inc()
                return Outcome(sop_class, sop, OUT_OF_RESOURCES, f"not stored: {str(exc)[:300]}")
            if size is None:
                log.info("store.duplicate", sop_instance_uid=sop, via="stow-rs")
                return Outcome(sop_class, sop, duplicate=True)
            if self.metrics:
                self.metrics.instances_received.inc()
                self.metrics.bytes_received.inc(size)
            return Outcome(sop_class, sop, size=size)


class _ChunkedReader:
    """The payload of a `Transfer-Encoding: chunked` body, read as a stream (`read(n)`; b"" at the end)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.left = 0
        self.done = False

    def read(self, n: int) -> bytes:
        if self.done:
            return b""
        if self.left == 0:
            line = self.raw.readline(1024)
            try:
                self.left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "malformed chunked body") from None
            if self.left == 0:
                while self.raw.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
        data = self.raw.read(min(n, self.left))
        if not data:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body ended early (was the upload cut off?)")
        self.left -= len(data)
        if self.left == 0:
            self.raw.readline(16)  # the CRLF after each chunk
        return data


def related_boundary(content_type: str) -> bytes:
    """The boundary of `multipart/related; type="application/dicom"; boundary=...`, or RequestError(415)."""
    kind, params, mark = multipart.boundary(content_type)
    if kind != "multipart/related":
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           'STOW-RS takes multipart/related; type="application/dicom" bodies, got '
                           f"{kind or 'none'}")
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"parts of type {part_type} are not supported: send Part 10 files as"
                           " application/dicom (the metadata + bulk data form is not accepted)")
    if mark is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, "multipart/related body without a usable boundary")
    return mark


def read_stow(
    stream: multipart.Readable, length: int | None, content_type: str, *, max_part: int, sink: InstanceSink,
    study_uid: str | None, sender: str,
) -> StowResult:
    """Stream a STOW-RS body from `stream` (`length` bytes, or until its end for a chunked body), storing each
    instance as soon as its part is complete; RequestError when the request as a whole is refused."""
    result = StowResult(study_uid)

    def on_part(headers: multipart.Headers, data: bytearray) -> None:
        # the buffer itself is handed on, not a bytes copy of it: `InstanceSink.accept` empties it once it holds
        # the data set, so one instance is in memory about once, not three times (docs/dicomweb.md)
        kind = headers.get("content-type", "application/dicom").split(";", 1)[0].strip().lower()
        if kind not in ("application/dicom", ""):
            result.outcomes.append(Outcome("", "", CANNOT_UNDERSTAND, f"a part of type {kind} is not application/dicom"))
            return
        result.outcomes.append(sink.accept(data, study_uid, sender))

    reader = multipart.PartReader(related_boundary(content_type), budget=lambda _headers: max_part, on_part=on_part)
    try:
        reader.read(stream, length)
    except multipart.PartTooLarge:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"an instance is larger than dicomweb.max_instance_mb = {max_part >> 20}; the"
                           " instances before it were stored") from None
    except multipart.BodyError as exc:
        message = {
            multipart.BodyFault.ENDED_EARLY: "the request body ended early (was the upload cut off?)",
            multipart.BodyFault.MALFORMED: "malformed multipart/related body",
            multipart.BodyFault.UNTERMINATED: "the multipart body has no closing boundary (was the upload cut off?);"
                                              f" the complete instances before the cut ({len(result.stored)}) were stored",
        }[exc.fault]
        raise RequestError(HTTPStatus.BAD_REQUEST, message) from None
    return result


class Credentials:
    """Bearer tokens from `[dicomweb] tokens`, HTTP Basic against the console's users (argon2id hashes)."""

    def __init__(self, settings: DicomwebSettings, state: StateStore) -> None:
        # argon2 and the console's throttling, loaded only when a receiver is built
        from gateway.auth import Authenticator

        self.settings = settings
        self.auth = Authenticator(state, session_hours=1.0, login_failures=5, secure=True)

    def check(self, header: str, address: str) -> str | None:
        """The sender's name for the log ("token", or the user name) when the header is a valid credential."""
        if self.settings.anonymous:
            return "anonymous"
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            if any(hmac.compare_digest(value.encode(), t.encode()) for t in self.settings.tokens):
                return "token"
            return None
        if scheme.lower() == "basic" and value:
            try:
                name, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if self.auth.failures.blocked_for(name) or self.auth.address_failures.blocked_for(address):
                return None
            user = self.auth.verify(name, password)
            if user is None or user.role not in self.settings.user_roles:
                self.auth.failures.hit(name)
                self.auth.address_failures.hit(address)
                return None
            return f"user:{user.name}"
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None
    app: StowService

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.app.settings.dicomweb.timeout_seconds)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):  # a plain-HTTP client, a scanner, or one that went silent
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "enhance-gateway"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return  # one structlog line per request instead (no query strings, no header values)

    def do_POST(self) -> None:
        self.server.app.handle(self)

    def _refuse_method(self) -> None:
        self.server.app.reply(self, HTTPStatus.METHOD_NOT_ALLOWED, {"error": "STOW-RS takes POST only"},
                              {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = _refuse_method


class StowService:
    """The STOW-RS endpoint of a running gateway: `start()` returns once the port listens."""

    def __init__(self, settings: Settings, state: StateStore, spool: Spool, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.sink = InstanceSink(state, spool, metrics)
        self.credentials = Credentials(settings.dicomweb, state)
        self._slots = threading.BoundedSemaphore(settings.dicomweb.max_requests)
        self._draining = False
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def bind(self) -> None:
        """Take the port (and load the certificate) without serving yet; ConfigError naming the setting when
        either fails. Why apart from `start`: the gateway binds it before the SCP listens, so a taken port stops
        the start with the fix, not a bare `OSError: [Errno 98]` from a half-started gateway (issue 15, defect 11).
        """
        if self.server is not None:
            return
        cfg = self.settings.dicomweb
        try:
            server = _Server((cfg.host, cfg.port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"[dicomweb] port = {cfg.port} cannot be used on {cfg.host}: {exc.strerror or exc} (another gateway"
                " or program listens there); give STOW-RS its own port in [dicomweb], or enabled = false"
            ) from None
        server.app = self
        if cfg.cert is not None and cfg.key is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(cfg.cert, cfg.key)
            except (OSError, ssl.SSLError) as exc:
                server.server_close()
                raise ConfigError(f"[dicomweb] cert = {cfg.cert}, key = {cfg.key}: cannot load them ({exc})") from None
            server.tls = ctx
        self.server = server

    def start(self) -> None:
        """Bind (unless `bind` did already) and serve in a thread; returns once the port listens."""
        self.bind()
        server = self.server
        assert server is not None
        cfg = self.settings.dicomweb
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="dicomweb", daemon=True)
        self._thread.start()
        if not cfg.tokens and not cfg.anonymous:
            log.warning("dicomweb.no_tokens", hint="only console users with a role in dicomweb.user_roles can"
                        " send (HTTP Basic); add bearer tokens to dicomweb.tokens for machines")
        log.info("dicomweb.listening", host=cfg.host, port=self.port, https=server.tls is not None)

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting requests; requests in progress finish (each instance stored and acknowledged)."""
        if self.server is None:
            return
        self._draining = True
        if self._thread is not None:  # bound but never served: shutdown() would wait for ever
            self.server.shutdown()
        deadline = time.monotonic() + grace
        taken = 0
        while taken < self.settings.dicomweb.max_requests and time.monotonic() < deadline:
            if self._slots.acquire(timeout=0.1):
                taken += 1
        self.server.server_close()
        self.server = None
        log.info("dicomweb.stopped")

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """One STOW-RS request: checks before the body is read, then the streamed parts, then the response."""
        started = time.monotonic()
        address = str(handler.client_address[0])
        path = handler.path.split("?", 1)[0]
        sender = "-"
        result: StowResult | None = None
        status: int = HTTPStatus.INTERNAL_SERVER_ERROR
        taken = False
        try:
            match = _PATH_RE.match(path)
            if match is None:
                raise RequestError(HTTPStatus.NOT_FOUND, "STOW-RS is POST /dicomweb/studies[/{StudyInstanceUID}]")
            if self._draining:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the gateway is stopping; send again later",
                                   {"Retry-After": "30"})
            cfg = self.settings.dicomweb
            # the slot before the credentials: HTTP Basic costs an argon2 verification (serialised), so a burst
            # of Basic requests beyond max_requests is answered 503 at once instead of queueing threads on it
            taken = self._slots.acquire(blocking=False)
            if not taken:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                                   f"all dicomweb.max_requests = {cfg.max_requests} slots are busy; retry shortly",
                                   {"Retry-After": "5"})
            who = self.credentials.check(handler.headers.get("Authorization", ""), address)
            if who is None:
                raise RequestError(HTTPStatus.UNAUTHORIZED, "a bearer token or HTTP Basic credentials are required",
                                   {"WWW-Authenticate": 'Bearer realm="enhance-gateway", Basic realm="enhance-gateway"'})
            sender = who
            content_type = handler.headers.get("Content-Type", "")
            related_boundary(content_type)  # 415 before a byte of the body is read
            chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
            length_text = handler.headers.get("Content-Length")
            if not chunked and length_text is None:
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send Content-Length or a chunked body")
            length = None if chunked else _content_length(length_text or "")
            max_body = cfg.max_request_mb << 20
            if length is not None and length > max_body:
                raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"the body is larger than dicomweb.max_request_mb = {cfg.max_request_mb}")
            rfile: Any = handler.rfile
            stream: Any = _Bounded(_ChunkedReader(rfile), max_body) if chunked else rfile
            result = read_stow(stream, length, content_type, max_part=cfg.max_instance_mb << 20, sink=self.sink,
                               study_uid=match.group(1), sender=sender)
            status = result.http_status()
            if not result.outcomes:
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body holds no instance")
            self.reply(handler, status, result.response(), content_type="application/dicom+json")
        except RequestError as exc:
            status = exc.status
            handler.close_connection = True  # the rest of the body, if any, is not read
            with _quiet_socket():
                self.reply(handler, exc.status, {"error": str(exc)}, exc.headers)
            if exc.status >= 500 or exc.status in (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE):
                log.warning("stow.request_refused", status=int(exc.status), reason=str(exc)[:300])
        except (OSError, TimeoutError) as exc:
            status = HTTPStatus.BAD_REQUEST
            handler.close_connection = True
            log.warning("stow.connection_lost", reason=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if taken:
                self._slots.release()
            log.info(
                "stow.request",
                status=int(status),
                client=address,
                sender=sender,
                stored=len([o for o in result.stored if not o.duplicate]) if result else 0,
                duplicates=len([o for o in result.stored if o.duplicate]) if result else 0,
                failed=len(result.failed) if result else 0,
                bytes=sum(o.size for o in result.outcomes) if result else 0,
                seconds=round(time.monotonic() - started, 3),
            )


def _content_length(text: str) -> int:
    """Content-Length as a number, or RequestError(400): a malformed header is the client's error, not ours."""
    if re.fullmatch(r"[0-9]{1,18}", text.strip()) is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length {text[:40]!r} is not a number of bytes")
    return int(text)


class _Bounded:
    """A chunked body may not grow past `dicomweb.max_request_mb` either."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.left = limit

    def read(self, n: int) -> bytes:
        data: bytes = self.inner.read(n)
        self.left -= len(data)
        if self.left < 0:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the chunked body is larger than"
                               " dicomweb.max_request_mb")
        return data


class _quiet_socket:
    """Writing an error reply to a client that already left must not raise out of the handler."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], (OSError, socket.timeout))  # type: ignore[arg-type]


__all__ = ["InstanceSink", "Outcome", "RequestError", "StowResult", "StowService", "read_stow"]
