"""The fence around pynetdicom/pydicom internals (gateway.dimse.fast.compat) agrees with setup.cfg and the code.

Why: the pins, the version check and the list of private names are three statements of one fact ("the fast path
was tested with these"); a pin moved without the check, or a private name used without being listed, would let
an untested pynetdicom run the fast path, or break it without the reason being said. Inside the pinned range the
fast path must be on: these tests fail, never skip.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest
import structlog
from packaging.requirements import Requirement

from gateway.dimse.fast import compat, netopts
from gateway.errors import GatewayError
from gateway.receive import admission
from gateway.receive.scp import Receiver
from gateway.settings import Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State

ROOT = Path(__file__).resolve().parents[2]
#: Modules that reach into pynetdicom or pydicom internals (their private names must be in compat.PRIVATE_NAMES).
USERS = ["gateway/dimse/fast/netopts.py", "gateway/dimse/fast/pdata.py", "gateway/dimse/fast/store_scu.py",
         "gateway/dimse/scu.py", "gateway/dimse/retrieve.py", "gateway/receive/scp.py", "gateway/receive/admission.py",
         "gateway/receive/stow.py"]


def _pins() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {req.name.lower(): req for req in reqs}


@pytest.mark.parametrize("package", sorted(compat.TESTED_SERIES))
def test_the_version_check_is_the_setup_cfg_pin(package: str) -> None:
    spec = _pins()[package].specifier
    major, minor = compat.TESTED_SERIES[package]
    candidates = [f"{major}.{minor}.0", f"{major}.{minor}.7", f"{major}.{minor}.99", f"{major}.{minor + 1}.0",
                  f"{major + 1}.0.0", f"{major}.{minor - 1}.9" if minor else f"{major - 1}.99.0"]
    assert [spec.contains(v) for v in candidates] == [compat.in_tested_range(package, v) for v in candidates]
    assert any(compat.in_tested_range(package, v) for v in candidates)
    assert not all(compat.in_tested_range(package, v) for v in candidates)


def test_inside_the_pinned_range_the_fast_path_is_on() -> None:
    if not compat.IN_TESTED_RANGE:
        pytest.skip(f"installed versions outside the pinned series (pip refuses this): {compat.REASON}")
    assert compat.FAST_PATH, compat.REASON
    compat.configure_process()  # no required internal missing


def _private_uses(path: Path) -> set[str]:
    """`_name` attributes read or written outside `__init__`, and `_name`s imported, that the module does not define."""
    tree = ast.parse(path.read_text())
    defined: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
            if node.name == "__init__":
                defined.update(n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names if alias.name.startswith("_"))
    return used - defined


def test_every_private_name_the_gateway_uses_is_listed() -> None:
    listed = {p.name for p in compat.PRIVATE_NAMES} | {"_config"}
    unlisted = {f"{module}: {name}" for module in USERS for name in _private_uses(ROOT / module) if name not in listed}
    assert not unlisted, f"add these to gateway.dimse.fast.compat.PRIVATE_NAMES: {sorted(unlisted)}"
    overridden = {
        f"{cls.__name__}.{name}"
        for cls in (netopts.EventDrivenDUL, netopts.EventDrivenAssociation, netopts.TunedSocket,
                    netopts.TunedRequestHandler, netopts.TunedAE, admission.GuardedServer)
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and any(hasattr(base, name) for base in cls.__mro__[1:])
        and name not in listed
    }
    assert not overridden, f"pynetdicom internals overridden but not listed in compat: {sorted(overridden)}"


def test_a_missing_fast_path_name_turns_it_off_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom.dul import DULServiceProvider

    monkeypatch.delattr(DULServiceProvider, "_decode_pdu")
    on, reason, required = compat._verdict()
    assert not on
    assert "DULServiceProvider._decode_pdu" in reason and "stock pynetdicom" in reason
    assert required == ()


def test_a_missing_name_without_fallback_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom.transport import RequestHandler

    monkeypatch.delattr(RequestHandler, "_create_association")
    on, _, required = compat._verdict()
    assert not on
    assert [p.name for p in required] == ["_create_association"]
    monkeypatch.setattr(compat, "_REQUIRED_MISSING", required)
    with pytest.raises(GatewayError, match=r"RequestHandler\._create_association.*pip install 'pynetdicom>=3\.0,<3\.1'"):
        compat.configure_process()


def test_scp_listening_says_whether_the_fast_path_is_on(tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, var_dir=tmp_path, min_free_mb=0)
    state = State(settings.state_db)
    receiver = Receiver(settings, state, LocalSpool(settings.spool_dir))
    try:
        with structlog.testing.capture_logs() as logs:
            receiver.start()
    finally:
        receiver.stop()
        state.close()
    [line] = [entry for entry in logs if entry["event"] == "scp.listening"]
    assert line["fast_path"] is compat.FAST_PATH
    assert line["fast_path_reason"] == compat.REASON
