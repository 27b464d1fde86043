"""C-STORE requests written straight to the association's socket; their responses picked out in the DUL thread.

Why: with pynetdicom's `send_c_store` the sender spent ~3.6 ms of CPU per 512x512 CT instance (bench/send.py):
it read the file meta with pydicom, encoded the command set with pydicom, queued each P-DATA primitive to the
DUL thread, which ran the state machine and encoded each PDU, and the response crossed the same layers and two
thread hand-offs back. Here the file's bytes are cut into P-DATA-TF PDUs and sent with one `sendall` from the
sending thread, and the DUL thread's `PDataRouter` takes the awaited C-STORE response out of the incoming PDU
(`gateway.dimse.fast.pdata`) and wakes the sender. Association set-up, release, abort and every other message stay
pynetdicom's.

Where pynetdicom's own `send_c_store` is still used (`gateway.dimse.scu` decides): files whose File Meta the
hand scan does not understand, files sent decoded because their exact context was rejected, and associations
that `netopts` did not upgrade (the fast path off: `gateway.dimse.fast.compat.REASON` says why).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dicom_utils.part10 import FileMeta
from gateway.dimse.fast.netopts import EventDrivenDUL, TunedSocket
from gateway.dimse.fast.pdata import PDataRouter, StoreRequest, store_request_pdus


class FastStoreSCU:
    """Sends C-STOREs on one established association; one request outstanding at a time (as storescu)."""

    def __init__(self, assoc: Any, dul: EventDrivenDUL, sock: TunedSocket) -> None:
        self._assoc = assoc
        self._socket = sock
        self._cond = threading.Condition()
        self._awaited: int | None = None
        self._status: int | None = None
        self._message_id = 0
        dul.pdata_router = PDataRouter(
            assoc, contexts=lambda: assoc._accepted_cx, send=sock.send, on_response=self._on_response
        )

    @classmethod
    def for_association(cls, assoc: Any) -> FastStoreSCU | None:
        """The fast sender for an established association, or None if `netopts` did not upgrade it."""
        dul = assoc.dul
        if isinstance(dul, EventDrivenDUL) and isinstance(dul.socket, TunedSocket):
            return cls(assoc, dul, dul.socket)
        return None

    def _on_response(self, message_id: int, status: int) -> bool:
        """Called in the DUL thread for every C-STORE response; True if it is the one awaited."""
        with self._cond:
            if message_id != self._awaited:
                return False  # not ours (a pynetdicom send_c_store's): pynetdicom takes it
            self._status = status
            self._awaited = None
            self._cond.notify_all()
            return True

    def send(self, data: bytes, meta: FileMeta, context_id: int, timeout: float) -> int | None:
        """Send the data set of a Part 10 file's bytes; its response status, or None (no response in `timeout`
        seconds, or the association ended), in which case the caller must abort the association."""
        self._message_id = self._message_id % 0xFFFF + 1
        request = StoreRequest(context_id, self._message_id, meta.sop_class_uid, meta.sop_instance_uid)
        pdus = store_request_pdus(
            request, memoryview(data)[meta.data_offset :], int(self._assoc.dimse.maximum_pdu_size or 0)
        )
        with self._cond:
            self._awaited, self._status = request.message_id, None
        self._socket.send(pdus)  # a failed send queues Evt17: the association ends and the wait below sees it
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._status is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._assoc.is_established:
                    self._awaited = None
                    return None
                self._cond.wait(min(left, 0.05))
            return self._status
