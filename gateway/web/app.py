"""The console's HTTP side: a WSGI application on the standard library's threaded server.

Why the standard library: the console serves a few pages to a few people on one machine; wsgiref plus
`ThreadingMixIn` does that with no dependency to audit or pin, and the WSGI callable can move behind any
production server unchanged.

Why these rules:
- Bound to 127.0.0.1 by default, and while bound to loopback only Host headers naming loopback are served
  (a web page elsewhere cannot reach it through DNS rebinding). Every POST carries a per-process token
  (a page on another origin cannot upload or retry on the user's behalf).
- No PHI in URLs or logs: uploads are known by a random token, jobs by their number; the request log line
  holds method, path (no query string), status and duration, never a file name or a header value.
- A Content-Security-Policy that allows only the console's own script and style: a value from a DICOM
  header can never run as code in the page.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socketserver
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

from enhancers import registry
from gateway import logs
from gateway.admin import reject, release, reprocess
from gateway.errors import GatewayError, StateError
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.state import JOB_STATES, State
from gateway.web import assets, imaging, jobs, multipart, pages
from gateway.web.command import DEFAULT_HOST, DEFAULT_PORT
from gateway.web.enhance import Enhancer
from gateway.web.uploads import Upload, UploadError, UploadStore, sentence

log = logs.get("gateway.web")

MAX_UPLOAD_BYTES = 512 * 1024 * 1024

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_UPLOAD_RE = re.compile(r"^/uploads/([A-Za-z0-9_-]{8,64})(?:/(original|enhanced|difference|comparison)\.png"
                        r"|/(enhanced\.dcm|enhanced\.png))?$")
_JOB_RE = re.compile(r"^/jobs/(\d{1,12})(?:/thumbs/(\d{1,6})/(original|derived)\.png|/(retry|reprocess|release|reject))?$")


class Response:
    """Status, headers and body of one answer."""

    def __init__(
        self,
        body: bytes | str,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status = status
        self.headers = [("Content-Type", content_type), *headers]


def _redirect(location: str, status: int = 303) -> Response:
    return Response(b"", status, "text/plain", [("Location", location)])


def _json(data: object, status: int = 200) -> Response:
    return Response(json.dumps(data), status, "application/json")


def _attachment(name: str) -> tuple[str, str]:
    return ("Content-Disposition", f'attachment; filename="{name}"')


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Console:
    """The WSGI application: upload and compare, jobs list, job page."""

    def __init__(self, settings: Settings, *, listen: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}",
                 loopback_only: bool = True) -> None:
        self.settings = settings
        self.listen = listen
        self.loopback_only = loopback_only
        self.csrf = secrets.token_urlsafe(24)
        if not settings.state_db.exists():
            log.warning("web.no_state", state_db=str(settings.state_db),
                        hint="no gateway has run with this var_dir yet: the jobs pages stay empty; check --config")
        self.state = State(settings.state_db)
        self.spool = Spool(settings.spool_dir)
        self.uploads = UploadStore(Enhancer(settings))
        self._flash: dict[int, str] = {}

    def close(self) -> None:
        self.uploads.close()
        self.state.close()

    # --- WSGI ------------------------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        started = time.monotonic()
        method = str(environ.get("REQUEST_METHOD", "GET"))
        path = str(environ.get("PATH_INFO", "/")) or "/"
        try:
            response = self.dispatch(environ, method, path)
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, never drop the connection
            log.error("web.error", method=method, path=path, error_type=type(exc).__name__)
            response = Response(pages.error_page("Internal error", f"The console failed ({type(exc).__name__}); "
                                                 "see its log.", listen=self.listen), 500)
        headers = response.headers + [
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy",
             ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
             "frame-ancestors 'none'; form-action 'self'")),
        ]
        reason = HTTPStatus(response.status).phrase
        start_response(f"{response.status} {reason}", headers)
        log.info("web.request", method=method, path=path, status=response.status,
                 ms=round((time.monotonic() - started) * 1000, 1))
        return [response.body]

    def _page_error(self, title: str, message: str, status: int, **kw: str) -> Response:
        return Response(pages.error_page(title, message, listen=self.listen, **kw), status)

    def dispatch(self, environ: Environ, method: str, path: str) -> Response:
        """Route one request; a Host header that is not loopback is refused while bound to loopback."""
        if self.loopback_only:
            host = str(environ.get("HTTP_HOST", "")).rsplit(":", 1)[0].strip("[]")
            if host and not _is_loopback(host):
                return Response("this console answers only to loopback host names", 421, "text/plain")
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if path == "/static/console.css":
            return Response(assets.CSS, content_type="text/css; charset=utf-8")
        if path == "/static/console.js":
            return Response(assets.JS, content_type="text/javascript; charset=utf-8")
        if path == "/healthz":
            return Response("ok\n", content_type="text/plain")
        if method == "POST":
            return self.post(environ, path)
        if method not in ("GET", "HEAD"):
            return Response("method not allowed", 405, "text/plain", [("Allow", "GET, POST")])
        if path == "/":
            return Response(pages.upload_page(registry.infos(), csrf=self.csrf, max_mb=MAX_UPLOAD_BYTES >> 20,
                                              listen=self.listen))
        if path.startswith("/api/uploads/"):
            upload = self.uploads.get(path.rsplit("/", 1)[-1])
            if upload is None:
                return _json({"error": "no such upload (the console keeps the last few for two hours)"}, 404)
            return _json(upload.status())
        m = _UPLOAD_RE.match(path)
        if m:
            return self.upload_view(m.group(1), m.group(2) or m.group(3), query)
        if path == "/jobs":
            return self.jobs_list(query)
        m = _JOB_RE.match(path)
        if m and not m.group(4):
            return self.job_view(int(m.group(1)), m.group(2), m.group(3))
        return self._page_error("Not found", f"There is no page {path}.", 404)

    # --- uploads ---------------------------------------------------------------------------------------

    def post(self, environ: Environ, path: str) -> Response:
        """POST /upload, /jobs/N/retry|reprocess|release|reject, all behind the per-process form token."""
        wants_json = "application/json" in str(environ.get("HTTP_ACCEPT", ""))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_UPLOAD_BYTES:
            return self._refuse(f"the upload is larger than {MAX_UPLOAD_BYTES >> 20} MB", 413, wants_json)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            form = multipart.parse(body, str(environ.get("CONTENT_TYPE", "")))
        except multipart.FormError as exc:
            return self._refuse(str(exc), 400, wants_json)
        token = form.get("csrf")
        if token is None or not secrets.compare_digest(token.data.decode("ascii", "replace"), self.csrf):
            return self._refuse("the form is out of date (the console restarted?): reload the page and retry",
                                403, wants_json)
        m = _JOB_RE.match(path)
        if m and m.group(4) == "retry":
            return self.retry(int(m.group(1)))
        if m and m.group(4) in ("release", "reject"):
            return self.review(int(m.group(1)), m.group(4))
        if m and m.group(4) == "reprocess":
            enhancer = form.get("enhancer")
            return self.reprocess(int(m.group(1)), enhancer.data.decode("ascii", "replace") if enhancer else "")
        if path != "/upload":
            return self._refuse(f"nothing to post to at {path}", 404, wants_json)
        file = form.get("file")
        if file is None or not file.data:
            return self._refuse("choose a DICOM, PNG or JPEG file to upload", 400, wants_json)

        def field(name: str, default: str) -> str:
            part = form.get(name)
            return part.data.decode("utf-8", "replace").strip() if part is not None else default

        try:
            upload = self.uploads.submit(
                file.data, choice=field("enhancer", "auto"), task=field("task", "denoise"),
                image_modality=field("image_modality", "XR"),
            )
        except UploadError as exc:
            log.info("web.upload_refused", status=exc.status, reason=str(exc)[:200])
            return self._refuse(str(exc), exc.status, wants_json)
        page = f"/uploads/{upload.token}"
        if wants_json:
            return _json({"id": upload.token, "status_url": f"/api/uploads/{upload.token}", "page_url": page}, 202)
        return _redirect(page)

    def _refuse(self, message: str, status: int, wants_json: bool) -> Response:
        if wants_json:
            return _json({"error": sentence(message)}, status)
        title = "Upload refused" if status != 403 else "Form expired"
        return self._page_error(title, sentence(message), status, back_label="Try another file")

    def upload_view(self, token: str, what: str | None, query: dict[str, list[str]]) -> Response:
        """The upload's page (progress, error or result), its rendered images and its downloads."""
        upload = self.uploads.get(token)
        if upload is None:
            return self._page_error("Upload not found", "This upload is gone: the console keeps the last few "
                                    "uploads for two hours, in memory only. Upload the file again.", 404)
        if what is None:
            if upload.error is not None:
                return self._page_error("Enhancement failed", sentence(upload.error),
                                        422, back_label="Try another file")
            if upload.outcome is None:
                return Response(pages.progress_page(upload, listen=self.listen))
            return Response(pages.result_page(upload, listen=self.listen))
        if upload.outcome is None or upload.values is None:
            return Response("not ready", 409, "text/plain")
        if what == "enhanced.dcm":
            if upload.outcome.derived_bytes is None:
                return Response("a PNG/JPEG upload has no DICOM object", 404, "text/plain")
            return Response(upload.outcome.derived_bytes, content_type="application/dicom",
                            headers=[_attachment(f"enhanced-{upload.outcome.info.name}-{token[:8]}.dcm")])
        if what == "enhanced.png":
            return self._enhanced_png(upload, token)
        return self._render(upload, what, query, token)

    def _enhanced_png(self, upload: Upload, token: str) -> Response:
        assert upload.outcome is not None
        top = 65535 if upload.source_dtype == "uint16" else 255
        values = np.clip(np.rint(upload.outcome.enhanced[0]), 0, top)
        arr = values.astype(np.uint16) if top > 255 else values.astype(np.uint8)
        return Response(imaging.png(arr), content_type="image/png",
                        headers=[_attachment(f"enhanced-{upload.outcome.info.name}-{token[:8]}.png")])

    def _render(self, upload: Upload, kind: str, query: dict[str, list[str]], token: str) -> Response:
        """original/enhanced/difference PNG of one frame with the requested window, or the comparison."""
        assert upload.outcome is not None and upload.values is not None

        def num(key: str, default: float) -> float:
            try:
                value = float(query.get(key, [""])[0])
            except ValueError:
                return default
            return value if np.isfinite(value) else default

        frames = upload.values.shape[0]
        frame = int(min(max(num("frame", 0), 0), frames - 1))
        center = num("c", upload.window[0])
        width = max(num("w", upload.window[1]), 1e-3)
        invert = query.get("inv", ["1" if upload.invert else "0"])[0] == "1"
        before = upload.values[frame]
        after = upload.outcome.enhanced[frame]
        limit = upload.diff_limits[frame] if frame < len(upload.diff_limits) else 1.0
        if kind == "original":
            return Response(imaging.png(imaging.window(before, center, width, invert=invert)), content_type="image/png")
        if kind == "enhanced":
            return Response(imaging.png(imaging.window(after, center, width, invert=invert)), content_type="image/png")
        diff = imaging.difference_image(imaging.difference(before, after), limit)
        if kind == "difference":
            return Response(imaging.png(diff), content_type="image/png")
        out = upload.outcome
        block = out.block
        caption = [
            (f"enhance-gateway {out.info.name} {out.info.version} ({out.task}) on {upload.modality}, frame {frame + 1}"
            f"/{frames}"),
            (f"PSNR {pages.number(block.get('psnr'), 2, ' dB')}  SSIM {pages.number(block.get('ssim'), 4)}  "
            f"basis {block.get('metric_basis')}  QA {block.get('qa_flag')}"),
            (f"window center {center:g} width {width:g}{' inverted' if invert else ''}; difference: mid-grey = 0, "
            f"+/-{limit:.3g} at white/black"),
        ]
        png = imaging.comparison(
            [
                ("original", imaging.window(before, center, width, invert=invert)),
                ("enhanced", imaging.window(after, center, width, invert=invert)),
                ("difference", diff),
            ],
            caption,
        )
        return Response(png, content_type="image/png",
                        headers=[_attachment(f"comparison-{out.info.name}-{token[:8]}.png")])

    # --- jobs ------------------------------------------------------------------------------------------

    def jobs_list(self, query: dict[str, list[str]]) -> Response:
        state = query.get("state", [""])[0] or None
        if state is not None and state not in JOB_STATES:
            return self._page_error("Unknown state", f"{state!r} is not a job state; one of {', '.join(JOB_STATES)}",
                                    400, back="/jobs", back_label="All jobs")
        listed = self.state.jobs(state=state, limit=200)
        deliveries = {j.id: self.state.deliveries(j.id) for j in listed}
        pending = [dict(r) for r in self.state.pending_series()]
        html = pages.jobs_page(self.state.counts(), pending, listed, deliveries, state=state, listen=self.listen)
        return Response(html)

    def job_view(self, job_id: int, index: str | None, kind: str | None) -> Response:
        try:
            if index is not None and kind is not None:
                png = jobs.thumbnail_png(self.state, self.spool, job_id, int(index), kind)
                if png is None:
                    return Response("no such image in the spool", 404, "text/plain")
                return Response(png, content_type="image/png")
            view = jobs.job_view(self.state, self.spool, job_id)
        except StateError as exc:
            return self._page_error("Job not found", str(exc), 404, back="/jobs", back_label="All jobs")
        return Response(pages.job_page(view, csrf=self.csrf, flash=self._flash.pop(job_id, None), listen=self.listen,
                                       enhancer_names=registry.names()))

    def retry(self, job_id: int) -> Response:
        """Re-queue a failed or dead job (what `enhance-gateway retry JOB` does), then show the job."""
        try:
            target = self.state.retry(job_id)
        except StateError as exc:
            self._flash[job_id] = str(exc)
        else:
            self._flash[job_id] = f"Job {job_id} re-queued as {target}."
            log.info("web.job_retried", job_id=job_id, state=target)
        return _redirect(f"/jobs/{job_id}")


    def review(self, job_id: int, decision: str) -> Response:
        """Release or reject a held job: the same code path as `enhance-gateway release|reject JOB`."""
        act = release if decision == "release" else reject
        try:
            job = act(self.settings, self.state, job_id)
        except GatewayError as exc:
            self._flash[job_id] = str(exc)
        else:
            self._flash[job_id] = (
                f"Job {job_id} released: queued for delivery." if job.state == "enhanced"
                else f"Job {job_id} rejected: its derived series was dropped, the originals are kept."
            )
        return _redirect(f"/jobs/{job_id}")

    def reprocess(self, job_id: int, enhancer: str) -> Response:
        """Enhance the job's series again: the same code path as `enhance-gateway reprocess`."""
        try:
            job = self.state.job(job_id)
            done = reprocess(self.settings, self.state, job.study_uid, series_uid=job.series_uid,
                             enhancer=enhancer or None)
        except GatewayError as exc:
            self._flash[job_id] = str(exc)
            return _redirect(f"/jobs/{job_id}")
        new = done[0].job_id
        self._flash[new] = f"Queued from job {job_id}" + (f" with {enhancer}." if enhancer else ".")
        log.info("web.job_reprocessed", job_id=job_id, new_job_id=new, enhancer=enhancer or None)
        return _redirect(f"/jobs/{new}")


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: image rendering must not block the progress polls of another tab."""

    daemon_threads = True
    allow_reuse_address = True


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, without its stderr access log (the console logs one structlog line per request)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def make_console_server(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> tuple[_Server, Console]:
    """Build (without starting) the HTTP server and its application; port 0 picks a free port."""
    app = Console(settings, loopback_only=_is_loopback(host))
    server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
    app.listen = f"{host}:{server.server_address[1]}"
    return server, app


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the console in the foreground until SIGINT/SIGTERM."""
    import signal
    import threading

    logs.configure()
    server, app = make_console_server(settings, host, port)
    if not _is_loopback(host):
        log.warning("web.exposed", host=host, hint="the console has no login: bind it to 127.0.0.1 and use an "
                    "SSH tunnel or a reverse proxy with authentication")

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info("web.started", host=host, port=server.server_address[1], var_dir=str(settings.var_dir))
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
        log.info("web.stopped")


__all__ = ["Console", "make_console_server", "serve"]
