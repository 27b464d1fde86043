"""DICOM TLS (PS3.15 Annex B): the SCP's server context from `[gateway.tls]`.

Why a module: one place decides protocol floor and verification so the SCP and tests agree. TLS 1.2 is the
floor (BCP 195 profile); with `require_client_cert` the peer must present a certificate signed by `ca`
(mutual TLS), otherwise the handshake fails and no association is made.
"""

from __future__ import annotations

import ssl

from gateway.settings import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(cafile=str(tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
