"""A WADO-RS answer cut off mid-body is a DeliveryError that names the source (what `reprocess` reports), not a
raw urllib3 exception: reading `response.raw` bypasses requests' own exception wrapping."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from gateway.deliver.dicomweb import wado_series
from gateway.errors import DeliveryError
from gateway.receive.stow import InstanceSink
from gateway.settings import Destination
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import State


def _cutting_server() -> tuple[socket.socket, threading.Thread]:
    """Answers one request with a 200 that promises 100000 bytes, sends 20, and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: multipart/related; type=\"application/dicom\";"
                         b" boundary=b0\r\nContent-Length: 100000\r\n\r\n--b0\r\nContent-Type: appl")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_a_wado_answer_cut_off_is_a_delivery_error(tmp_path: Path) -> None:
    server, thread = _cutting_server()
    state = State(tmp_path / "state.db")
    try:
        peer = Destination(name="web-pacs", type="dicomweb", url=f"http://127.0.0.1:{server.getsockname()[1]}")
        with pytest.raises(DeliveryError, match="web-pacs"):
            wado_series(peer, InstanceSink(state, LocalSpool(tmp_path / "spool")), "1.2.3", "1.2.3.4", ["1.2.3.4.5"],
                        timeout=10)
    finally:
        thread.join(10)
        server.close()
        state.close()
