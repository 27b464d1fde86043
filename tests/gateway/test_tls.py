"""DICOM TLS with a real peer: dcmtk storescu over mutual TLS is accepted; a wrong or no certificate is not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.gateway.harness import GatewayProcess
from tests.peers import storescu
from tests.realdata import make_series


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(cwd: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)


def _signed(cwd: Path, name: str, ca: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd)


def test_mutual_tls_accepts_signed_peers_and_refuses_others(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _ca(pki, "siteca")
    _ca(pki, "otherca")
    _signed(pki, "gateway", "siteca")
    _signed(pki, "modality", "siteca")
    _signed(pki, "intruder", "otherca")
    files = make_series("693_UNCR.dcm", 2, tmp_path / "in", seed="tls")
    tls = {"cert": str(pki / "gateway.pem"), "key": str(pki / "gateway.key"), "ca": str(pki / "siteca.pem"),
           "require_client_cert": True}
    gw = GatewayProcess(tmp_path, destinations=[{"name": "archive", "type": "folder", "path": "{var_dir}/archive"}],
                        routes=[{"enhancer": "gaussian"}], gateway={"tls": tls}).start()
    try:
        def push(cert: str | None) -> subprocess.CompletedProcess[str]:
            extra = ["+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.pem"), "+cf", str(pki / "siteca.pem")] if cert else []
            return storescu(gw.port, files, called_aet="ENHANCE_GW", extra=["-R", *extra], check=False)

        assert push("intruder").returncode != 0  # certificate from another CA: handshake refused
        assert push(None).returncode != 0  # plain TCP to a TLS port: no association
        assert gw.state().instance_count() == 0
        ok = push("modality")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert gw.state().instance_count() == 2
        assert any(e["event"] == "scp.listening" and e["tls"] == "mutual" for e in gw.events())
        gw.wait_jobs({"done"}, 1)
    finally:
        gw.stop()
