"""Login, roles, audit, rate limits, origin and HTTPS of the console (issue 15, defect 5), over real HTTP.

Before the fix any local user could read the job pages (patient fields) and POST retry/reprocess; every test
here would fail on that console. Users are made with the real `enhance-gateway users` command; the audit is
read back from the state database the console writes, and from its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.storage.state import State
from tests.peers import free_port
from tests.web.harness import REPO, USERS, ConsoleProcess, add_user, form_token, login, write_config


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    root = tmp_path_factory.mktemp("auth")
    config = write_config(root / "gateway.toml", root / "var", web="actions_per_minute = 5\nlogin_failures = 3")
    users = dict(USERS, rita=("admin", "rate-limit-0123"), lou=("viewer", "locked-out-0123"))
    proc = ConsoleProcess(config, root / "console.log", users=users).start()
    try:
        yield proc
    finally:
        proc.stop()


def _state(console: ConsoleProcess) -> State:
    return State(console.config.parent / "var" / "state.db")


def _cli(console: ConsoleProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.admin.cli", "--config", str(console.config), "users", *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False,
                          env=os.environ | {"PYTHONPATH": str(REPO)})


def test_every_page_needs_a_login(console: ConsoleProcess) -> None:
    anon = requests.Session()
    for path in ("/", "/jobs", "/jobs/1", "/uploads/abcdefgh12345678"):
        r = anon.get(console.url + path, allow_redirects=False, timeout=30)
        assert r.status_code == 303 and r.headers["Location"].startswith("/login"), path
    assert anon.get(console.url + "/api/uploads/abcdefgh12345678", timeout=30).status_code == 401
    assert anon.post(console.url + "/jobs/1/retry", data={"csrf": "x"}, timeout=30).status_code == 401
    assert anon.get(console.url + "/healthz", timeout=30).status_code == 200
    assert anon.get(console.url + "/static/console.css", timeout=30).status_code == 200


def test_login_gives_a_signed_httponly_samesite_cookie_and_wrong_passwords_fail(console: ConsoleProcess) -> None:
    session = requests.Session()
    r = login(session, console.url, "ada", USERS["ada"][1])
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    assert session.get(console.url + "/jobs", timeout=30).status_code == 200
    # a cookie with a forged signature is no session
    forged = requests.Session()
    value = session.cookies["egw_session"]
    forged.cookies.set("egw_session", value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB"))
    assert forged.get(console.url + "/jobs", allow_redirects=False, timeout=30).status_code == 303
    wrong = login(requests.Session(), console.url, "ada", "not-the-password")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    nobody = login(requests.Session(), console.url, "nobody", "whatever-1234")
    assert nobody.status_code == 401 and "Wrong user name or password" in nobody.text  # same answer
    hashes = [u.password_hash for u in _state(console).users()]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert USERS["ada"][1] not in (console.config.parent / "var" / "state.db").read_bytes().decode("latin-1")


def test_repeated_failed_logins_lock_the_name_out(console: ConsoleProcess) -> None:
    for _ in range(3):  # login_failures = 3
        assert login(requests.Session(), console.url, "lou", "guess-guess-guess").status_code == 401
    r = login(requests.Session(), console.url, "lou", USERS.get("lou", ("", "locked-out-0123"))[1])
    assert r.status_code == 429 and "Too many failed logins" in r.text  # even with the right password
    assert login(requests.Session(), console.url, "vic", USERS["vic"][1]).status_code == 303  # others still can


def test_a_refused_login_never_logs_or_stores_a_name_that_is_no_user_name(console: ConsoleProcess) -> None:
    # a password typed into the name field: not a valid user name (space, !) so it must not reach the audit
    typed = "my secret pass! 9271"
    assert login(requests.Session(), console.url, typed, "whatever-1234").status_code == 401
    assert login(requests.Session(), console.url, "x" * 5000, "whatever-1234").status_code == 401
    assert login(requests.Session(), console.url, "nobody.else", "whatever-1234").status_code == 401
    refused = [a for a in _state(console).audit(limit=50) if a.action == "login" and a.outcome == "refused"]
    actors = {a.actor for a in refused}
    assert "(invalid name)" in actors and "nobody.else" in actors  # a plausible name is still kept
    assert all(len(a) <= 64 for a in actors)
    log = console.log_text()
    assert typed not in log and "x" * 65 not in log
    assert typed not in (console.config.parent / "var" / "state.db").read_bytes().decode("latin-1")


def test_viewer_reads_but_cannot_change_jobs_and_admin_actions_are_audited(console: ConsoleProcess) -> None:
    viewer = console.session("vic")
    token = form_token(viewer.get(console.url + "/", timeout=30).text)
    r = viewer.post(console.url + "/jobs/7/retry", data={"csrf": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "needs the admin role" in r.text
    admin = console.session("ada")
    token = form_token(admin.get(console.url + "/", timeout=30).text)
    r = admin.post(console.url + "/jobs/7/retry", data={"csrf": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303  # to the job page, which says there is no job 7
    audit = _state(console).audit(limit=50)
    mine = [a for a in audit if a.target == "job 7"]
    assert {(a.actor, a.role, a.action, a.outcome) for a in mine} == {
        ("vic", "viewer", "retry", "refused"), ("ada", "admin", "retry", "refused")}
    assert all(a.at > 0 and a.source == "127.0.0.1" for a in mine)
    assert any(a.actor == "ada" and a.action == "login" and a.outcome == "ok" for a in audit)
    log = console.log_text()
    assert '"event": "web.audit"' in log and '"action": "retry"' in log


def test_form_token_and_origin_are_both_checked(console: ConsoleProcess) -> None:
    admin = console.session("ada")
    token = form_token(admin.get(console.url + "/", timeout=30).text)
    other = {"Origin": "http://evil.example"}
    r = admin.post(console.url + "/jobs/8/retry", data={"csrf": token}, headers=other, allow_redirects=False,
                   timeout=30)
    assert r.status_code == 403 and "another web site" in r.text
    # another service on this host (same site, other port) is another origin too
    for headers in ({"Origin": "http://127.0.0.1:1"}, {"Sec-Fetch-Site": "same-site"}):
        r = admin.post(console.url + "/jobs/8/retry", data={"csrf": token}, headers=headers, allow_redirects=False,
                       timeout=30)
        assert r.status_code == 403, headers
    same = {"Origin": console.url}
    r = admin.post(console.url + "/jobs/8/retry", data={"csrf": "stale"}, headers=same, allow_redirects=False,
                   timeout=30)
    assert r.status_code == 403 and "out of date" in r.text
    r = admin.post(console.url + "/jobs/8/retry", data={"csrf": token}, headers=same, allow_redirects=False,
                   timeout=30)
    assert r.status_code == 303
    # another user's token is not this session's token
    viewer_token = form_token(console.session("vic").get(console.url + "/", timeout=30).text)
    r = admin.post(console.url + "/jobs/8/retry", data={"csrf": viewer_token}, allow_redirects=False, timeout=30)
    assert r.status_code == 403


def test_state_changing_actions_are_rate_limited_per_user(console: ConsoleProcess) -> None:
    rita = console.session("rita")
    token = form_token(rita.get(console.url + "/", timeout=30).text)
    codes = [rita.post(console.url + "/jobs/9/retry", data={"csrf": token}, allow_redirects=False,
                       timeout=30).status_code for _ in range(6)]
    assert codes[:5] == [303] * 5  # actions_per_minute = 5
    assert codes[5] == 429
    r = rita.post(console.url + "/jobs/9/retry", data={"csrf": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "actions_per_minute" in r.text
    assert any(a.actor == "rita" and a.detail == "rate limit" for a in _state(console).audit(limit=20))


def test_users_command_adds_lists_and_removes_and_removal_ends_the_session(console: ConsoleProcess) -> None:
    done = add_user(console.config, "tmp.user", "viewer", "temporary-pass-1")
    assert done.returncode == 0, done.stderr
    assert _cli(console, "add", "tmp.user", "--role", "viewer", "--password-stdin",
                stdin="temporary-pass-1\n").returncode == 1  # exists
    short = _cli(console, "add", "shorty", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr
    listed = _cli(console, "list")
    assert "tmp.user" in listed.stdout and "viewer" in listed.stdout and "argon2" not in listed.stdout
    session = requests.Session()
    assert login(session, console.url, "tmp.user", "temporary-pass-1").status_code == 303
    assert session.get(console.url + "/jobs", allow_redirects=False, timeout=30).status_code == 200
    assert _cli(console, "remove", "tmp.user").returncode == 0
    assert session.get(console.url + "/jobs", allow_redirects=False, timeout=30).status_code == 303
    actions = {(a.action, a.target) for a in _state(console).audit(limit=50) if a.actor.startswith("cli:")}
    assert {("user_add", "user tmp.user"), ("user_remove", "user tmp.user")} <= actions
    assert "user_remove" in _cli(console, "audit").stdout


def test_no_users_yet_every_page_says_how_to_create_the_first_admin(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", tmp_path / "var")
    proc = ConsoleProcess(config, tmp_path / "console.log", users={}).start()
    try:
        r = requests.get(proc.url + "/jobs", timeout=30)
        assert r.url.endswith("/login?next=%2Fjobs") and "No console users yet" in r.text
        assert "users add NAME --role admin" in r.text
        assert "web.no_users" in proc.log_text()
    finally:
        proc.stop()


def test_non_loopback_address_without_https_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.web", "--config", str(config), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, check=False, env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 1 and "without HTTPS" in done.stderr and "[web] cert and key" in done.stderr


def test_https_console_with_a_silent_client_connected(tmp_path: Path) -> None:
    """[web] cert/key: HTTPS with a Secure cookie; a TCP client that never starts its handshake blocks nobody."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=120)
    config = write_config(tmp_path / "gateway.toml", tmp_path / "var", web=f'cert = "{cert}"\nkey = "{key}"')
    proc = ConsoleProcess(config, tmp_path / "console.log", scheme="https").start()
    silent = socket.create_connection(("127.0.0.1", proc.port))
    try:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override `verify`
        session.verify = str(cert)
        r = login(session, proc.url, "ada", USERS["ada"][1])
        assert r.status_code == 303 and "Secure" in r.headers["Set-Cookie"]
        assert session.get(proc.url + "/jobs", timeout=30).status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{proc.port}/healthz", timeout=30)  # no plain HTTP on the HTTPS port
    finally:
        silent.close()
        proc.stop()
