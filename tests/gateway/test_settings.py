"""Settings: the shipped default loads; each invalid value is refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import settings
from gateway.errors import ConfigError


def _doc(**gateway: object) -> dict[str, object]:
    return {
        "gateway": gateway,
        "destinations": [{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
    }


def test_default_config_loads_with_embedded_defaults() -> None:
    cfg = settings.load(environ={})
    assert cfg.ae_title == "ENHANCE_GW"
    assert cfg.port == 11112
    assert cfg.var_dir == Path("var")
    assert cfg.destinations[0].path == Path("var/archive")
    assert cfg.state_db == Path("var/state.db")


@pytest.mark.parametrize(
    ("gateway", "fragment"),
    [
        ({"port": 70000}, "gateway.port"),
        ({"port": "11112"}, "gateway.port"),
        ({"ae_title": "A" * 17}, "gateway.ae_title"),
        ({"ae_title": "   "}, "gateway.ae_title"),
        ({"stable_seconds": -1}, "gateway.stable_seconds"),
        ({"allowed_calling_aets": "CT01"}, "gateway.allowed_calling_aets"),
        ({"max_pdu": 16384}, "gateway.max_pdu"),
        ({"portt": 1}, "portt"),
    ],
)
def test_invalid_gateway_values_name_the_key(gateway: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        settings.parse(_doc(**gateway), environ={})


def test_destination_and_route_errors_say_the_fix() -> None:
    doc = _doc()
    doc["destinations"] = [{"name": "pacs", "type": "dicom", "host": "h", "port": 4242}]
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.ae_title is missing"):
        settings.parse(doc, environ={})
    doc = _doc()
    doc["destinations"] = [{"name": "x", "type": "ftp"}]
    with pytest.raises(ConfigError, match="expected \"folder\", \"dicom\" or \"dicomweb\""):
        settings.parse(doc, environ={})
    doc = _doc()
    doc["routes"] = [{"modality": "MR", "enhancer": "nlm", "task": "sr3x"}]
    with pytest.raises(ConfigError, match=r"routes\[0\]\.task"):
        settings.parse(doc, environ={})
    doc = _doc()
    doc["destinations"] = []
    with pytest.raises(ConfigError, match="no \\[\\[destinations\\]\\]"):
        settings.parse(doc, environ={})


def test_environment_and_command_line_overrides(tmp_path: Path) -> None:
    cfg = settings.parse(_doc(), environ={"ENHANCE_GW_PORT": "4000", "ENHANCE_GW_AE_TITLE": "GW2"})
    assert (cfg.port, cfg.ae_title) == (4000, "GW2")
    moved = cfg.with_overrides(port=0, var_dir=tmp_path)
    assert moved.port == 0
    assert moved.state_db == tmp_path / "state.db"
    assert moved.destinations[0].path == tmp_path / "archive"  # folder destinations under var_dir follow it


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        settings.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings.load(bad)


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"gateway\.tls\.key is missing"):
        settings.parse(_doc(tls={"cert": str(cert)}), environ={})
    with pytest.raises(ConfigError, match="no such file"):
        settings.parse(_doc(tls={"cert": str(cert), "key": str(tmp_path / "missing.key")}), environ={})
    with pytest.raises(ConfigError, match="needs gateway.tls.ca"):
        settings.parse(_doc(tls={"cert": str(cert), "key": str(cert), "require_client_cert": True}), environ={})
    cfg = settings.parse(_doc(tls={"cert": str(cert), "key": str(cert)}), environ={})
    assert cfg.tls is not None and cfg.tls.ca is None


def test_routes_are_checked_against_the_registry() -> None:
    from gateway.enhance import routing
    from gateway.settings import Route

    routing.validate([Route(enhancer="nlm", modality="CT"), Route(enhancer="bicubic", task="sr2x")])
    with pytest.raises(ConfigError, match="not a registered enhancer"):
        routing.validate([Route(enhancer="no-such-model")])
    with pytest.raises(ConfigError, match="does task 'sr2x'"):
        routing.validate([Route(enhancer="bicubic", task="denoise")])
    with pytest.raises(ConfigError, match="not US"):
        routing.validate([Route(enhancer="nlm", modality="US")])


def test_sources_retrieve_and_dicomweb_settings_are_checked() -> None:
    src = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    doc = _doc()
    assert settings.parse(doc | {"sources": [src]}, environ={}).sources[0].retrieve == "get"
    assert settings.parse(doc | {"sources": [src | {"retrieve": "move"}]}, environ={}).sources[0].retrieve == "move"
    with pytest.raises(ConfigError, match=r"sources\[0\]\.retrieve = 'fetch'.*move destination"):
        settings.parse(doc | {"sources": [src | {"retrieve": "fetch"}]}, environ={})
    with pytest.raises(ConfigError, match="HTTPS"):
        settings.parse(doc | {"dicomweb": {"enabled": True, "host": "0.0.0.0"}}, environ={})
    with pytest.raises(ConfigError, match="at least 16 characters"):
        settings.parse(doc | {"dicomweb": {"tokens": ["short"]}}, environ={})


def test_dicomweb_sources_are_checked() -> None:
    doc = _doc()
    web = {"name": "web", "type": "dicomweb", "url": "https://pacs.example.org/dicom-web/"}
    (src,) = settings.parse(doc | {"sources": [web | {"token": "t" * 20}]}, environ={}).sources
    assert (src.type, src.url, src.verify) == ("dicomweb", "https://pacs.example.org/dicom-web", True)
    with pytest.raises(ConfigError, match="service root"):
        settings.parse(doc | {"sources": [web | {"url": "pacs.example.org"}]}, environ={})
    with pytest.raises(ConfigError, match="not both"):
        settings.parse(doc | {"sources": [web | {"token": "t" * 20, "username": "u", "password": "p"}]}, environ={})
    with pytest.raises(ConfigError, match="go together"):
        settings.parse(doc | {"sources": [web | {"username": "u"}]}, environ={})


def test_study_trigger_routes_are_checked() -> None:
    doc = _doc()
    route = {"enhancer": "gaussian", "modality": "CT", "trigger": "study", "required": [{"series_description": "AX"}],
             "on_timeout": "discard", "study_timeout": 60}
    (parsed,) = settings.parse(doc | {"routes": [route]}, environ={}).routes
    assert (parsed.trigger, parsed.on_timeout, parsed.study_timeout) == ("study", "discard", 60.0)
    assert parsed.required[0].matches("CT", "AX 1mm") and not parsed.required[0].matches("CT", "COR")
    with pytest.raises(ConfigError, match="trigger = 'exam'"):
        settings.parse(doc | {"routes": [route | {"trigger": "exam"}]}, environ={})
    with pytest.raises(ConfigError, match="need trigger"):
        settings.parse(doc | {"routes": [{"enhancer": "gaussian", "on_timeout": "process"}]}, environ={})
    with pytest.raises(ConfigError, match="on_timeout = 'drop'"):
        settings.parse(doc | {"routes": [route | {"on_timeout": "drop"}]}, environ={})


def test_config_discovery_order(tmp_path: Path) -> None:
    """--config, then $ENHANCE_GW_CONFIG, then ./config/gateway.toml, then the system file, then the package's."""
    explicit, named, system = tmp_path / "explicit.toml", tmp_path / "named.toml", tmp_path / "etc.toml"
    local = tmp_path / "site" / "config" / "gateway.toml"
    for path in (explicit, named, system, local):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    cwd = local.parent.parent
    env = {settings.ENV_CONFIG: str(named)}

    def pick(flag: Path | None, environ: dict[str, str], where: Path) -> tuple[Path, str]:
        found = settings.discover(flag, environ=environ, cwd=where, system=system)
        return found.path, found.origin

    assert pick(explicit, env, cwd) == (explicit, "--config")
    assert pick(None, env, cwd) == (named, "$ENHANCE_GW_CONFIG")
    assert pick(None, {}, cwd) == (local, "./config/gateway.toml")
    assert pick(None, {}, tmp_path) == (system, str(system))
    system.unlink()
    fallback = settings.discover(None, environ={}, cwd=tmp_path, system=system)
    assert fallback.packaged and fallback.path == settings.PACKAGED_CONFIG
    assert fallback.describe().startswith("WARNING: no configuration file found")
    assert str(system) in fallback.describe() and str(tmp_path / "config" / "gateway.toml") in fallback.describe()
    with pytest.raises(ConfigError, match=r"nope\.toml \(--config\) not found"):
        settings.discover(tmp_path / "nope.toml", environ=env, cwd=cwd)
    with pytest.raises(ConfigError, match=r"from \$ENHANCE_GW_CONFIG\) not found"):
        settings.discover(None, environ={settings.ENV_CONFIG: str(tmp_path / "gone.toml")}, cwd=cwd)


def test_the_config_variable_is_not_a_gateway_key_override(tmp_path: Path) -> None:
    cfg = settings.parse(_doc(), environ={settings.ENV_CONFIG: str(tmp_path / "x.toml"), "ENHANCE_GW_PORT": "4001"})
    assert cfg.port == 4001


def test_the_packaged_default_is_the_documented_example() -> None:
    """The copy inside the package (what runs when no file is found) never drifts from config/gateway.toml."""
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.toml"
    assert settings.PACKAGED_CONFIG.read_bytes() == example.read_bytes()
    assert settings.load(settings.PACKAGED_CONFIG, environ={}).var_dir == Path("var")


def test_a_route_task_is_the_task_enum_and_keeps_its_config_string() -> None:
    """`Task` replaces the literals in code; configs, dumps and messages keep the plain strings."""
    import dataclasses
    import json

    from dicom_utils.enhancement import TASKS, Task
    from enhancers import registry
    from gateway.enhance import routing

    assert TASKS == tuple(registry.TASKS) == ("denoise", "sr2x", "sr4x", "deblur")  # one list of tasks everywhere
    doc = _doc()
    doc["routes"] = [{"modality": "CT", "enhancer": "bicubic", "task": "sr2x"}, {"enhancer": "nlm"}]
    cfg = settings.parse(doc, environ={})
    assert [r.task for r in cfg.routes] == [Task.SR2X, Task.DENOISE]
    assert all(type(r.task) is Task for r in cfg.routes)
    assert json.dumps([dataclasses.asdict(r)["task"] for r in cfg.routes]) == '["sr2x", "denoise"]'
    assert routing.choose(cfg.routes, "MR", "") == ("nlm", "denoise")
    with pytest.raises(ConfigError, match="the route says 'sr2x'$"):
        routing.validate([dataclasses.replace(cfg.routes[0], enhancer="nlm")])


def test_config_check_prints_no_password_or_token(tmp_path: Path) -> None:
    """`enhance-gateway config check` prints the effective settings: every secret masked, the rest readable."""
    import json
    import os
    import subprocess
    import sys

    from tests.gateway.harness import REPO, write_config

    secrets = ["pg-S3cret-pw", "dw-S3cret-pw", "dw-S3cret-token-0123456789", "stow-S3cret-token-0123456789"]
    config = write_config(
        tmp_path / "site.toml", var_dir=tmp_path / "var", port=11112,
        destinations=[
            {"name": "pacs", "type": "dicomweb", "url": "https://pacs.example/dicom-web", "username": "gw",
             "password": secrets[1]},
            {"name": "cloud", "type": "dicomweb", "url": "https://cloud.example/dicom-web", "token": secrets[2]},
        ],
        dicomweb={"tokens": [secrets[3]]},
        state={"url": f"postgresql://gw:{secrets[0]}@db.example:5432/gateway"},
    )
    env = {k: v for k, v in os.environ.items() if k != settings.ENV_CONFIG} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "gateway.admin.cli", "config", "check", str(config)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    pacs, cloud = shown["destinations"]
    assert (pacs["username"], pacs["password"], pacs["token"], pacs["url"]) == (
        "gw", "***", "", "https://pacs.example/dicom-web")  # an unset secret stays visibly unset
    assert cloud["token"] == "***"
    assert shown["dicomweb"]["tokens"] == ["***"]
    assert shown["state"]["url"] == "postgresql://gw:***@db.example:5432/gateway"
    assert shown["ae_title"] == "ENHANCE_GW" and shown["routes"] == []
    parsed = settings.load(config, environ={})
    assert secrets[1] not in repr(parsed) and secrets[3] not in repr(parsed)  # nor in a traceback's repr
