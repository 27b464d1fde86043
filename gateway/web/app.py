"""The console's HTTP side: a WSGI application on the standard library's threaded server.

Why the standard library: the console serves a few pages to a few people on one machine; wsgiref plus
`ThreadingMixIn` does that with no web framework to audit or pin, and the WSGI callable can move behind any
production server unchanged.

Why these rules:
- Everyone logs in (`gateway.auth`: argon2id hashes in the state database, signed HttpOnly SameSite=Strict
  session cookies). `viewer`s see jobs and try enhancers; only `admin`s retry, reprocess, release or reject.
  With no user yet the console serves only the page that says how to create the first admin. Every admin
  action, login and logout is audited: one `web.audit` log line and one row in the state database.
- Bound to 127.0.0.1 by default, and while bound to loopback only Host headers naming loopback are served
  (a web page elsewhere cannot reach it through DNS rebinding). Another address needs HTTPS (`[web] cert`,
  `key`) and at least one user, or the console refuses to start.
- A POST is judged before its body is read: session, role, rate limit, Origin (when the browser sends one),
  content type, Content-Length, and the session's form token when it comes as a header. The body is then
  streamed into bounded buffers (`gateway.web.forms`), and a form whose file comes before a valid token
  is dropped there. A refused request costs at most 64 KB of memory, whatever it claims to carry.
- No PHI in URLs or logs: uploads are known by a random token, jobs by their number; the request log line
  holds method, path (no query string), status, user and duration, never a file name or a header value.
- A Content-Security-Policy that allows only the console's own script and style: a value from a DICOM
  header can never run as code in the page.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
import socketserver
import ssl
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

from dicom_utils.enhancement import Task
from enhancers import registry
from gateway import logs
from gateway.admin.ops import reject, release, reprocess
from gateway.auth import Authenticator, Session, SlidingWindow, same_origin, valid_name
from gateway.errors import ConfigError, GatewayError, StateError
from gateway.settings import Settings
from gateway.storage.factory import open_state
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import JOB_STATES, JobState, StateStore
from gateway.web import forms, imaging, jobs, pages
from gateway.web.command import DEFAULT_HOST, DEFAULT_PORT
from gateway.web.enhance import Enhancer
from gateway.web.pages import Who
from gateway.web.uploads import Upload, UploadError, UploadStore, sentence

log = logs.get("gateway.web")

#: What a multipart body may carry beside the file (boundaries, part headers, the small fields).
FORM_OVERHEAD = 1 << 20
#: POST paths and the role they need; "upload" changes nothing in the gateway (viewers may try enhancers).
_ADMIN_ACTIONS = ("retry", "reprocess", "release", "reject")

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

_UPLOAD_RE = re.compile(r"^/uploads/([A-Za-z0-9_-]{8,64})(?:/(original|enhanced|difference|comparison)\.png"
                        r"|/(enhanced\.dcm|enhanced\.png))?$")
_JOB_RE = re.compile(r"^/jobs/(\d{1,12})(?:/slices/(\d{1,6})/(original|derived)\.f32|/(retry|reprocess|release|reject))?$")
_JOB_API_RE = re.compile(r"^/api/jobs/(\d{1,12})(?:/slices/(\d{1,6}))?$")
#: The console's stylesheet and script: package data (gateway/web/static/), read once at import.
_STATIC = {
    f"/static/{name}": (files("gateway.web").joinpath("static", name).read_bytes(), ctype)
    for name, ctype in (("console.css", "text/css; charset=utf-8"), ("console.js", "text/javascript; charset=utf-8"))
}


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
    """The WSGI application: login, upload and compare, jobs list, job page."""

    def __init__(self, settings: Settings, *, listen: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}",
                 loopback_only: bool = True, secure: bool = False) -> None:
        self.settings = settings
        self.listen = listen
        self.loopback_only = loopback_only
        self.scheme = "https" if secure else "http"
        web = settings.web
        self.max_upload_bytes = web.max_upload_mb << 20
        self.login_csrf = secrets.token_urlsafe(24)  # the login form's token (no session yet)
        if not settings.state.url and not settings.state_db.exists():
            log.warning("web.no_state", state_db=str(settings.state_db),
                        hint="no gateway has run with this var_dir yet: the jobs pages stay empty; check --config")
        self.state = open_state(settings)
        self.spool = LocalSpool(settings.spool_dir)
        self.auth = Authenticator(self.state, session_hours=web.session_hours, login_failures=web.login_failures,
                                  secure=secure)
        self.actions = SlidingWindow(web.actions_per_minute, 60.0)
        self.uploads = UploadStore(Enhancer(settings), max_pixels=int(web.max_upload_megapixels * 1e6),
                                   max_bytes=web.max_kept_mb << 20)
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
            # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on the console's own
            # form posts, and the Origin check needs the real one; other sites still get no referrer at all
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy",
             ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
             "frame-ancestors 'none'; form-action 'self'")),
        ]
        if self.scheme == "https":
            headers.append(("Strict-Transport-Security", "max-age=31536000"))
        reason = HTTPStatus(response.status).phrase
        start_response(f"{response.status} {reason}", headers)
        log.info("web.request", method=method, path=path, status=response.status, user=environ.get("egw.user"),
                 ms=round((time.monotonic() - started) * 1000, 1))
        return [response.body]

    def _page_error(self, title: str, message: str, status: int, who: Who | None = None, **kw: str) -> Response:
        return Response(pages.error_page(title, message, listen=self.listen, who=who, **kw), status)

    def dispatch(self, environ: Environ, method: str, path: str) -> Response:
        """Route one request: open paths, login, then everything else behind a session."""
        if self.loopback_only:
            host = str(environ.get("HTTP_HOST", "")).rsplit(":", 1)[0].strip("[]")
            if host and not _is_loopback(host):
                return Response("this console answers only to loopback host names", 421, "text/plain")
        if path in _STATIC:
            body, ctype = _STATIC[path]
            return Response(body, content_type=ctype)
        if path == "/healthz":
            return Response("ok\n", content_type="text/plain")
        if method not in ("GET", "HEAD", "POST"):
            return Response("method not allowed", 405, "text/plain", [("Allow", "GET, POST")])
        if path == "/login":
            return self.login(environ) if method == "POST" else self.login_form(environ)
        found = self.auth.resolve(str(environ.get("HTTP_COOKIE", "")))
        if found is None:
            return self._unauthenticated(environ, method, path)
        session, user = found
        environ["egw.user"] = user.name
        who = Who(user.name, user.role, session.csrf)
        if method == "POST":
            return self.post(environ, path, session, who)
        return self.get(environ, path, who)

    def get(self, environ: Environ, path: str, who: Who) -> Response:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if path == "/":
            return Response(pages.upload_page(registry.infos(), csrf=who.csrf, max_mb=self.max_upload_bytes >> 20,
                                              listen=self.listen, who=who,
                                              max_megapixels=self.settings.web.max_upload_megapixels,
                                              quality=self.uploads.enhancer.quality))
        if path.startswith("/api/uploads/"):
            upload = self.uploads.get(path.rsplit("/", 1)[-1])
            if upload is None:
                return _json({"error": "no such upload (the console keeps the last few, as memory allows, for up "
                                       "to two hours)"}, 404)
            return _json(upload.status())
        m = _UPLOAD_RE.match(path)
        if m:
            return self.upload_view(m.group(1), m.group(2) or m.group(3), query, who)
        if path == "/jobs":
            return self.jobs_list(query, who)
        m = _JOB_API_RE.match(path)
        if m:
            return self.job_api(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))
        m = _JOB_RE.match(path)
        if m and not m.group(4):
            return self.job_view(int(m.group(1)), m.group(2), m.group(3), who)
        return self._page_error("Not found", f"There is no page {path}.", 404, who)

    # --- login -----------------------------------------------------------------------------------------

    def _unauthenticated(self, environ: Environ, method: str, path: str) -> Response:
        """No live session: pages send the browser to the login form; the API and POSTs get 401, unread."""
        if method == "POST" or path.startswith("/api/") or "application/json" in str(environ.get("HTTP_ACCEPT", "")):
            _discard_small_body(environ)
            return self._refuse("log in first (your session ended, or the console restarted)", 401,
                                _wants_json(environ))
        target = path if path.startswith("/") and not path.startswith("//") else "/"
        return _redirect("/login" + ("" if target == "/" else "?" + urlencode({"next": target})))

    def login_form(self, environ: Environ, message: str = "", name: str = "", status: int = 200) -> Response:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        return Response(pages.login_page(csrf=self.login_csrf, listen=self.listen, has_users=self.auth.has_users(),
                                         message=message, name=name, next_url=_safe_next(query.get("next", [""])[0])),
                        status)

    def login(self, environ: Environ) -> Response:
        """POST /login: same-origin form with the login token, throttled per name and per client address."""
        source = str(environ.get("REMOTE_ADDR", ""))
        refused = self._precheck(environ, urlencoded_only=True)
        if refused is not None:
            return refused
        try:
            form = forms.read_form(environ["wsgi.input"], _length(environ), str(environ.get("CONTENT_TYPE", "")),
                                       max_file_bytes=0,
                                       token_ok=lambda t: secrets.compare_digest(t, self.login_csrf))
        except forms.FormError as exc:
            return self.login_form(environ, sentence(str(exc)), status=exc.status)
        name = _field(form, "name", "")
        password = form["password"].data.decode("utf-8", "replace") if "password" in form else ""
        wait = max(self.auth.failures.blocked_for("user:" + name), self.auth.address_failures.blocked_for(source))
        if wait > 0:
            self._audit(_audit_name(name), "login", outcome="refused", source=source, detail="too many failed logins")
            return self.login_form(environ, f"Too many failed logins: wait {math.ceil(wait / 60)} minute(s), or ask "
                                   "an admin to set a new password (enhance-gateway users passwd NAME).", name, 429)
        user = self.auth.verify(name, password)
        if user is None:
            self.auth.failures.hit("user:" + name)
            self.auth.address_failures.hit(source)
            self._audit(_audit_name(name), "login", outcome="refused", source=source, detail="wrong name or password")
            return self.login_form(environ, "Wrong user name or password.", name, 401)
        self.auth.failures.clear("user:" + name)
        self.state.note_login(user.name)
        _, cookie = self.auth.start(user)
        environ["egw.user"] = user.name
        self._audit(user.name, "login", role=user.role, source=source)
        next_url = _safe_next(_field(form, "next", "/"))
        return Response(b"", 303, "text/plain", [("Location", next_url), ("Set-Cookie", cookie)])

    def _audit(self, actor: str, action: str, *, outcome: str = "ok", role: str | None = None,
               target: str | None = None, source: str | None = None, detail: str | None = None) -> None:
        """One audit record: a `web.audit` log line and a row in the state database (who, what, when)."""
        log.info("web.audit", actor=actor, role=role, action=action, target=target, outcome=outcome, source=source,
                 detail=detail)
        try:
            self.state.record_audit(actor, action, outcome=outcome, role=role, target=target, source=source,
                                    detail=detail)
        except Exception as exc:  # noqa: BLE001 - a locked or full database must not turn an action into a 500
            log.error("web.audit_failed", action=action, error_type=type(exc).__name__)

    # --- POST ------------------------------------------------------------------------------------------

    def _precheck(self, environ: Environ, *, urlencoded_only: bool = False,
                  max_body: int = forms.MAX_FIELD_BYTES) -> Response | None:
        """What can be refused from the headers alone: cross-site origin, content type, length."""
        wants_json = _wants_json(environ)
        origin = str(environ.get("HTTP_ORIGIN", ""))
        site = str(environ.get("HTTP_SEC_FETCH_SITE", ""))
        # a browser says where a request comes from (Sec-Fetch-Site, Origin); a client that says neither (a
        # script, curl) has no browser cookie to ride on, and still needs the session and its token
        if (site and site not in ("same-origin", "none")) or (
                origin and not same_origin(origin, self.scheme, str(environ.get("HTTP_HOST", "")))):
            _discard_small_body(environ)
            return self._refuse("this form was posted from another web site: the console takes forms only from its "
                                "own pages", 403, wants_json)
        kind = forms.media_type(str(environ.get("CONTENT_TYPE", "")))
        allowed = ("application/x-www-form-urlencoded",) if urlencoded_only else forms.FORM_TYPES
        if kind not in allowed:
            _discard_small_body(environ)
            return self._refuse(f"expected a form ({' or '.join(allowed)}), got {kind or 'no content type'}", 415,
                                wants_json)
        length = _length(environ)
        if length < 0:
            return self._refuse("a POST needs a Content-Length", 411, wants_json)
        if length > max_body:
            return self._refuse(f"the request is larger than {max(max_body >> 20, 1)} MB", 413, wants_json)
        return None

    def post(self, environ: Environ, path: str, session: Session, who: Who) -> Response:
        """POST /logout, /upload, /jobs/N/retry|reprocess|release|reject: judged before the body is read."""
        wants_json = _wants_json(environ)
        source = str(environ.get("REMOTE_ADDR", ""))
        m = _JOB_RE.match(path)
        action = m.group(4) if m and m.group(4) else {"/upload": "upload", "/logout": "logout"}.get(path)
        if action is None:
            _discard_small_body(environ)
            return self._refuse(f"nothing to post to at {path}", 404, wants_json)
        is_upload = action == "upload"
        refused = self._precheck(environ, urlencoded_only=not is_upload,
                                 max_body=self.max_upload_bytes + FORM_OVERHEAD if is_upload else
                                 forms.MAX_FIELD_BYTES)
        if refused is not None:
            return refused
        header_token = environ.get("HTTP_X_CSRF_TOKEN")
        if header_token is not None and not secrets.compare_digest(str(header_token), session.csrf):
            _discard_small_body(environ)
            return self._refuse(forms.TOKEN_ERROR, 403, wants_json)
        if action in _ADMIN_ACTIONS and not who.admin:
            _discard_small_body(environ)
            self._audit(who.name, action, outcome="refused", role=who.role, target=f"job {m.group(1)}" if m else None,
                        source=source, detail="needs the admin role")
            return self._refuse(f"{action} needs the admin role; you are logged in as {who.name} ({who.role})", 403,
                                wants_json, who)
        if action != "logout":
            wait = self.actions.hit("user:" + who.name)
            if wait > 0:
                _discard_small_body(environ)
                self._audit(who.name, action, outcome="refused", role=who.role, source=source, detail="rate limit")
                limit = self.settings.web.actions_per_minute
                return self._refuse(f"too many changes in a minute ({limit}, [web] actions_per_minute): wait "
                                    f"{math.ceil(wait)} s and retry", 429, wants_json, who,
                                    [("Retry-After", str(math.ceil(wait)))])
        try:
            form = forms.read_form(
                environ["wsgi.input"], _length(environ), str(environ.get("CONTENT_TYPE", "")),
                max_file_bytes=self.max_upload_bytes if is_upload else 0,
                token_ok=None if header_token is not None else (lambda t: secrets.compare_digest(t, session.csrf)),
            )
        except forms.FormError as exc:
            return self._refuse(str(exc), exc.status, wants_json, who)
        if action == "logout":
            self.auth.end(session.sid)
            self._audit(who.name, "logout", role=who.role, source=source)
            return Response(b"", 303, "text/plain", [("Location", "/login"), ("Set-Cookie", self.auth.clear_cookie())])
        if m is not None:
            job_id = int(m.group(1))
            if action == "retry":
                response, outcome = self.retry(job_id)
            elif action == "reprocess":
                response, outcome = self.reprocess(job_id, _field(form, "enhancer", ""))
            else:
                response, outcome = self.review(job_id, action)
            self._audit(who.name, action, role=who.role, target=f"job {job_id}", source=source,
                        outcome="ok" if outcome is None else "refused", detail=outcome)
            return response
        return self.upload(form, wants_json, who, source)

    def upload(self, form: dict[str, forms.Part], wants_json: bool, who: Who, source: str) -> Response:
        """Keep and queue one uploaded file (the refusals say what to do)."""
        file = form.pop("file", None)
        if file is None or not file.data:
            return self._refuse("choose a DICOM, PNG or JPEG file to upload", 400, wants_json, who)
        try:
            upload = self.uploads.submit(
                file.data, choice=_field(form, "enhancer", "auto"), task=_field(form, "task", Task.DENOISE),
                image_modality=_field(form, "image_modality", "XR"),
            )
        except UploadError as exc:
            log.info("web.upload_refused", status=exc.status, reason=str(exc)[:200])
            return self._refuse(str(exc), exc.status, wants_json, who)
        finally:
            del file  # the request's copy of the file: the upload keeps what it needs
        self._audit(who.name, "upload", role=who.role, target=f"upload {upload.token}", source=source)
        page = f"/uploads/{upload.token}"
        if wants_json:
            return _json({"id": upload.token, "status_url": f"/api/uploads/{upload.token}", "page_url": page}, 202)
        return _redirect(page)

    def _refuse(self, message: str, status: int, wants_json: bool, who: Who | None = None,
                headers: Iterable[tuple[str, str]] = ()) -> Response:
        if wants_json:
            return Response(json.dumps({"error": sentence(message)}), status, "application/json", headers)
        title = {401: "Log in first", 403: "Refused", 429: "Too many changes"}.get(status, "Upload refused")
        if status == 403 and message == forms.TOKEN_ERROR:
            title = "Form expired"
        back = "/login" if status == 401 else "/"
        label = "Log in" if status == 401 else "Back"
        return Response(pages.error_page(title, sentence(message), listen=self.listen, back=back, back_label=label,
                                         who=who), status, headers=headers)

    # --- uploads ---------------------------------------------------------------------------------------

    def upload_view(self, token: str, what: str | None, query: dict[str, list[str]], who: Who) -> Response:
        """The upload's page (progress, error or result), its rendered images and its downloads."""
        upload = self.uploads.get(token)
        if upload is None:
            return self._page_error("Upload not found", "This upload is gone: the console keeps the last few "
                                    "uploads, as memory allows, for up to two hours, in memory only. Upload the "
                                    "file again.", 404, who)
        if what is None:
            if upload.error is not None:
                return self._page_error("Enhancement failed", sentence(upload.error),
                                        422, who, back_label="Try another file")
            if upload.outcome is None:
                return Response(pages.progress_page(upload, listen=self.listen, who=who))
            return Response(pages.result_page(upload, listen=self.listen, who=who))
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

    def jobs_list(self, query: dict[str, list[str]], who: Who) -> Response:
        state = query.get("state", [""])[0] or None
        if state is not None and state not in JOB_STATES:
            return self._page_error("Unknown state", f"{state!r} is not a job state; one of {', '.join(JOB_STATES)}",
                                    400, who, back="/jobs", back_label="All jobs")
        listed = self.state.jobs(state=state, limit=200)
        deliveries = {j.id: self.state.deliveries(j.id) for j in listed}
        pending = self.state.pending_series()
        html = pages.jobs_page(self.state.counts(), pending, listed, deliveries, state=state, listen=self.listen,
                               who=who)
        return Response(html)

    def job_view(self, job_id: int, index: str | None, kind: str | None, who: Who) -> Response:
        try:
            if index is not None and kind is not None:
                values = jobs.slice_values(self.state, self.spool, job_id, int(index), kind)
                if values is None:
                    return Response("no such image in the spool", 404, "text/plain")
                # little-endian float32, row-major: what the page's Float32Array reads (shape in the slice info)
                return Response(values.astype("<f4", copy=False).tobytes(), content_type="application/octet-stream")
            view = jobs.job_view(self.state, self.spool, job_id)
        except StateError as exc:
            return self._page_error("Job not found", str(exc), 404, who, back="/jobs", back_label="All jobs")
        viewers = [(d.name, d.viewer_url) for d in self.settings.destinations]
        return Response(pages.job_page(view, csrf=who.csrf, flash=self._flash.pop(job_id, None), listen=self.listen,
                                       who=who, enhancer_names=registry.names(), viewers=viewers))

    def job_api(self, job_id: int, index: int | None) -> Response:
        """GET /api/jobs/N: the job's state (what a running job's page polls); /api/jobs/N/slices/I: one slice's
        sizes, window, unit and metrics (what the slice viewer reads before the values)."""
        try:
            if index is None:
                job = self.state.job(job_id)
                return _json({"id": job.id, "state": str(job.state), "updated_at": job.updated_at,
                              "running": job.state in pages.RUNNING_STATES})
            info = jobs.slice_info(self.state, self.spool, job_id, index)
        except StateError as exc:
            return _json({"error": str(exc)}, 404)
        return _json(info) if info is not None else _json({"error": f"job {job_id} has no slice {index}"}, 404)

    def retry(self, job_id: int) -> tuple[Response, str | None]:
        """Re-queue a failed or dead job (what `enhance-gateway retry JOB` does), then show the job.

        Returns the response and, when the gateway refused, its reason (for the audit record)."""
        try:
            target = self.state.retry(job_id)
        except StateError as exc:
            self._flash[job_id] = str(exc)
            return _redirect(f"/jobs/{job_id}"), str(exc)[:300]
        self._flash[job_id] = f"Job {job_id} re-queued as {target}."
        log.info("web.job_retried", job_id=job_id, state=target)
        return _redirect(f"/jobs/{job_id}"), None

    def review(self, job_id: int, decision: str) -> tuple[Response, str | None]:
        """Release or reject a held job: the same code path as `enhance-gateway release|reject JOB`."""
        act = release if decision == "release" else reject
        try:
            job = act(self.settings, self.state, job_id)
        except GatewayError as exc:
            self._flash[job_id] = str(exc)
            return _redirect(f"/jobs/{job_id}"), str(exc)[:300]
        self._flash[job_id] = (
            f"Job {job_id} released: queued for delivery." if job.state == JobState.ENHANCED
            else f"Job {job_id} rejected: its derived series was dropped, the originals are kept."
        )
        return _redirect(f"/jobs/{job_id}"), None

    def reprocess(self, job_id: int, enhancer: str) -> tuple[Response, str | None]:
        """Enhance the job's series again: the same code path as `enhance-gateway reprocess`."""
        try:
            job = self.state.job(job_id)
            done = reprocess(self.settings, self.state, job.study_uid, series_uid=job.series_uid,
                             enhancer=enhancer or None)
        except GatewayError as exc:
            self._flash[job_id] = str(exc)
            return _redirect(f"/jobs/{job_id}"), str(exc)[:300]
        new = done[0].job_id
        self._flash[new] = f"Queued from job {job_id}" + (f" with {enhancer}." if enhancer else ".")
        log.info("web.job_reprocessed", job_id=job_id, new_job_id=new, enhancer=enhancer or None)
        return _redirect(f"/jobs/{new}"), None


def _wants_json(environ: Environ) -> bool:
    return "application/json" in str(environ.get("HTTP_ACCEPT", ""))


def _length(environ: Environ) -> int:
    """Content-Length, or -1 when it is missing or not a number."""
    try:
        return int(str(environ.get("CONTENT_LENGTH") or "-1"))
    except ValueError:
        return -1


def _discard_small_body(environ: Environ) -> None:
    """Read and drop a refused body of at most 64 KB, so the browser reads the answer instead of a reset; a
    larger one is left unread (the server closes the connection after every answer)."""
    length = _length(environ)
    if 0 < length <= forms.MAX_FIELD_BYTES:
        environ["wsgi.input"].read(length)


def _field(form: dict[str, forms.Part], name: str, default: str) -> str:
    part = form.get(name)
    return part.data.decode("utf-8", "replace").strip() if part is not None else default


def _audit_name(name: str) -> str:
    """The actor of a refused login as logged and stored: the typed name only when it could be a user name.

    A refused login's name field is unvalidated and up to a form field long; someone who types the password
    into it must not find it in the log or the audit table.
    """
    if not name:
        return "-"
    return name if valid_name(name) else "(invalid name)"


def _safe_next(target: str) -> str:
    """Where to go after login: a path of this console only (never another site)."""
    if not target.startswith("/") or target.startswith(("//", "/login")) or "\\" in target:
        return "/"
    return target


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: image rendering must not block the progress polls of another tab.

    With HTTPS the TLS handshake runs in the request's own thread with a deadline (`_Handler.timeout`), never
    in the accept loop: a client that connects and says nothing holds one thread for a while, not the console.
    """

    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(_Handler.timeout)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):  # a plain-HTTP client, a scanner, or one that went silent
                return
        super().finish_request(request, client_address)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, without its stderr access log (the console logs one structlog line per request), and
    with a socket timeout: a client that stops sending mid-request frees its thread after this many seconds."""

    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        return


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The HTTPS context of `[web] cert`/`key` (TLS 1.2 or newer); ConfigError that names the file otherwise."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[web] cert = {cert}, key = {key}: cannot load them ({exc}); give a PEM certificate "
                          "and its unencrypted PEM private key") from None
    return ctx


def check_exposure(settings: Settings, host: str, state: StateStore) -> None:
    """Refuse a console reachable from other machines without HTTPS and without a user to log in."""
    if _is_loopback(host):
        return
    if settings.web.cert is None or settings.web.key is None:
        raise ConfigError(
            f"the console would listen on {host}, beyond this machine, without HTTPS: set [web] cert and key (PEM) "
            "in the config, or bind 127.0.0.1 and reach it through an SSH tunnel")
    if not state.users():
        raise ConfigError(
            f"the console would listen on {host} with no user to log in: create an admin first with "
            "`enhance-gateway users add NAME --role admin`")


def make_console_server(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> tuple[_Server, Console]:
    """Build (without starting) the HTTP(S) server and its application; port 0 picks a free port."""
    web = settings.web
    ctx = tls_context(web.cert, web.key) if web.cert is not None and web.key is not None else None
    app = Console(settings, loopback_only=_is_loopback(host), secure=ctx is not None)
    try:
        check_exposure(settings, host, app.state)
        server = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
    except BaseException:
        app.close()
        raise
    server.tls = ctx
    app.listen = f"{host}:{server.server_address[1]}"
    return server, app


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the console in the foreground until SIGINT/SIGTERM."""
    import signal
    import threading

    logs.configure()
    server, app = make_console_server(settings, host, port)
    if not app.auth.has_users():
        log.warning("web.no_users", hint="nobody can log in yet: create the first admin with "
                    "`enhance-gateway users add NAME --role admin`; until then every page says so")

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info("web.started", host=host, port=server.server_address[1], var_dir=str(settings.var_dir),
             https=server.tls is not None)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
        log.info("web.stopped")


__all__ = ["Console", "make_console_server", "serve"]
