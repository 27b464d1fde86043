"""C-GET of purged originals from a source PACS, so `reprocess` works after `purge`.

Why C-GET rather than C-MOVE: the instances come back on the same association, so the source PACS does not
need the gateway registered as a move destination, and every retrieved instance goes through the same
durable path as a C-STORE (spool write with fsync + rename, then the state store) before it counts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_utils.pixels import DECODABLE_TRANSFER_SYNTAXES
from gateway import logs
from gateway.dimse.scu import Peer, requestor_ae
from gateway.dimse.status import MOVE_DESTINATION_UNKNOWN, OUT_OF_RESOURCES, SUCCESS, WARNING
from gateway.errors import DeliveryError
from gateway.storage.spool import InstanceKey, Spool
from gateway.storage.state import StateStore

log = logs.get("gateway.retrieve")


def retrieve_series(
    peer: Peer, state: StateStore, spool: Spool, study_uid: str, series_uid: str, sop_classes: Sequence[str],
    *, timeout: float = 60.0,
) -> int:
    """C-GET one series from `peer` into the spool; returns the number of instances restored."""
    restored = 0

    def on_store(event: Any) -> int:
        nonlocal restored
        try:
            ds = event.dataset
            sop = str(ds.SOPInstanceUID)
            key = InstanceKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop)
            spool.put(key, event.encoded_dataset(include_meta=True))
            state.mark_restored(sop)
        except Exception as exc:  # noqa: BLE001 - a handler never raises: the peer gets a status
            log.warning("retrieve.store_failed", reason=str(exc)[:300])
            return OUT_OF_RESOURCES
        restored += 1
        return SUCCESS

    ae = requestor_ae(peer, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    classes = list(dict.fromkeys(sop_classes))[:127]
    for uid in classes:
        ae.add_requested_context(uid, DECODABLE_TRANSFER_SYNTAXES)
    roles: list[Any] = [build_role(uid, scp_role=True) for uid in classes]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        raise DeliveryError(f"no association with source {peer.ae_title}@{peer.host}:{peer.port} for C-GET")
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    final = None
    try:
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status and "Status" in status:
                final = int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
    if final not in (SUCCESS, WARNING):
        raise DeliveryError(
            f"C-GET of series {series_uid} from {peer.ae_title} ended with status "
            f"{'none' if final is None else f'0x{final:04X}'}"
        )
    log.info("retrieve.done", study_uid=study_uid, series_uid=series_uid, restored=restored, source=peer.ae_title)
    return restored


def move_series(
    peer: Peer, state: StateStore, study_uid: str, series_uid: str, sop_uids: Sequence[str], move_destination: str,
    *, timeout: float = 60.0, settle: float = 10.0,
) -> int:
    """C-MOVE one series from `peer` to the gateway's own AE title; returns how many of `sop_uids` came back.

    Why the instances are not stored here: with C-MOVE the source opens its own association to the running
    gateway's SCP, so every instance takes the SCP's path (checks, spool write with fsync + rename, then the
    state row, restoring the purged row) before the source is told it arrived. The final C-MOVE response thus
    comes after the last instance was recorded; this function then matches the moved instances to the ones
    `reprocess` asked for (waiting up to `settle` seconds for a slow last store) and raises DeliveryError
    naming what is missing, so no job is queued over originals that are not in the spool.
    """
    ae = requestor_ae(peer, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"no association with source {peer.ae_title}@{peer.host}:{peer.port} for C-MOVE")
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    final, failed = None, 0
    try:
        for status, _ in assoc.send_c_move(query, move_destination, StudyRootQueryRetrieveInformationModelMove):
            if status and "Status" in status:
                final = int(status.Status)
                failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
    finally:
        if assoc.is_established:
            assoc.release()
    if final not in (SUCCESS, WARNING):
        # MOVE_DESTINATION_UNKNOWN says it; Orthanc, among others, gives no final status for an unknown move destination
        hint = (f" (is {move_destination} registered at the source as a move destination, with the gateway's host"
                " and port? C-MOVE needs that, C-GET does not)" if final in (None, MOVE_DESTINATION_UNKNOWN) else "")
        raise DeliveryError(
            f"C-MOVE of series {series_uid} from {peer.ae_title} ended with status "
            f"{'none' if final is None else f'0x{final:04X}'}{hint}"
        )
    deadline = time.monotonic() + settle
    while True:
        missing = [u for u in sop_uids if state.instance_purged(u) is not False]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    restored = len(sop_uids) - len(missing)
    log.info("retrieve.done", study_uid=study_uid, series_uid=series_uid, restored=restored, source=peer.ae_title,
             how="move", failed_suboperations=failed)
    if missing:
        raise DeliveryError(
            f"C-MOVE of series {series_uid} from {peer.ae_title}: {len(missing)} of {len(sop_uids)} purged originals"
            " did not arrive (is the gateway running, and does the source send to its address?); nothing was queued"
        )
    return restored
