"""Drill 4: hostile and broken input over real associations; the gateway must answer clearly and keep serving.

Each case below talks to the running gateway over the network (pynetdicom as the SCU, or raw TCP where the
point is bytes no SCU would send) and says what a correct answer is:
- a C-STORE whose dataset cannot be a complete instance (truncated, wrong element lengths, Rows x Columns far
  beyond the pixel data) must get a failure status (0xC210 and friends), never 0x0000;
- an unknown transfer syntax is refused at negotiation (presentation context result 4);
- bytes that are not DICOM upper layer PDUs get an A-ABORT or a closed connection within seconds;
- an association aborted or dropped in the middle of an instance leaves nothing stored and no temp file;
- after every case a fresh association gets a C-ECHO answered, and at the end a good series pushed before
  the barrage and one pushed after it both come out enhanced at the destination.

Why raw C-STOREs go through `STORE_SEND_CHUNKED_DATASET`: pynetdicom then streams the file's bytes after the
File Meta Information as they are, so a deliberately broken dataset reaches the gateway byte for byte on an
otherwise well-formed association. The fuzz run (`fuzz.py`) uses the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bench.drills.common import (
    CT_SOURCE,
    FAST_ROUTE,
    GATEWAY_AET,
    SUCCESS_CODES,
    DrillGateway,
    DrillResult,
    Modality,
    account,
    census,
    dataset_problem,
    destination_files,
    gateway_errors,
    spool_problems,
    stop_gateway,
    wait_until,
)
from gateway.storage.state import State
from tests.realdata import make_series, testfile

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; fixed-length suffixes keep byte layouts stable
# VRs whose Explicit VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


# --------------------------------------------------------------------------------------------------------------
# building broken C-STOREs


def fresh_instance(tag: str, study: str, series: str) -> Dataset:
    """The real CT slice with its own SOP Instance UID (fixed length, derived from `tag`) in a given series."""
    ds = pydicom.dcmread(testfile(CT_SOURCE))
    number = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big")
    digits = str(10**19 + number % (9 * 10**19))  # 20 digits, no leading zero: a valid, reproducible component
    ds.SOPInstanceUID = UID_ROOT + "7." + digits
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    return ds


def body_of(ds: Dataset) -> bytes:
    """The dataset encoded as it travels in P-DATA (no preamble, no File Meta Information)."""
    ts = ds.file_meta.TransferSyntaxUID
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None, "pydicom could not encode the template instance"
    return data


def find_element(body: bytes, group: int, element: int) -> int:
    """Offset of a top-level element's tag in an Explicit VR Little Endian body (the template's syntax)."""
    pos = 0
    while pos + 8 <= len(body):
        g, e = struct.unpack_from("<HH", body, pos)
        vr = body[pos + 4 : pos + 6]
        if (g, e) == (group, element):
            return pos
        if vr in LONG_VRS:
            length = struct.unpack_from("<I", body, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", body, pos + 6)[0]
            pos += 8 + length
    raise KeyError(f"({group:04X},{element:04X}) not in the body")


def patch_length(body: bytes, group: int, element: int, length: int) -> bytes:
    """Overwrite one element's length field, leaving its value bytes as they are."""
    pos = find_element(body, group, element)
    out = bytearray(body)
    if body[pos + 4 : pos + 6] in LONG_VRS:
        struct.pack_into("<I", out, pos + 8, length)
    else:
        struct.pack_into("<H", out, pos + 6, length)
    return bytes(out)


def part10(meta: FileMetaDataset, body: bytes) -> bytes:
    """Preamble + File Meta Information + `body` exactly as given (possibly broken)."""
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + body


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """Make `send_c_store(path)` stream the file's dataset bytes verbatim (no decode, no re-encode)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def store_raw(assoc: Any, meta: FileMetaDataset, body: bytes, scratch: Path) -> int | None:
    """C-STORE `body` under `meta`'s SOP class/instance/syntax; the status, or None when no response came."""
    path = scratch / f"{meta.MediaStorageSOPInstanceUID}.dcm"
    path.write_bytes(part10(meta, body))
    try:
        with chunked_send():
            status = assoc.send_c_store(path)
    except (RuntimeError, ValueError, OSError):
        return None
    finally:
        path.unlink(missing_ok=True)
    return int(status.Status) if "Status" in status else None


def associate(port: int, contexts: list[tuple[str, list[str]]], *, timeout: float = 15.0) -> Any:
    ae = AE(ae_title="BADINPUT")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)


def echo_ok(port: int) -> bool:
    """A fresh association answers a C-ECHO with success: the gateway still serves."""
    assoc = associate(port, [(Verification, ["1.2.840.10008.1.2"])], timeout=10)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def raw_exchange(port: int, payload: bytes, wait: float = 5.0, keep_open: float = 0.0) -> str:
    """Send raw bytes on a new TCP connection; what came back: 'abort', 'reject', 'closed' or 'no answer'."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(payload)
        if keep_open:
            time.sleep(keep_open)
        try:
            data = sock.recv(64)
        except TimeoutError:
            return "no answer"
        except OSError:
            return "closed"
    if not data:
        return "closed"
    return {0x07: "abort", 0x03: "reject"}.get(data[0], f"pdu 0x{data[0]:02X}")


# --------------------------------------------------------------------------------------------------------------
# the cases


@dataclass
class Outcome:
    """What the gateway answered, and whether that is a correct answer to this input."""

    answer: str
    ok: bool


class Bench:
    """The running gateway plus what the cases share: a scratch folder and the fuzz study/series UIDs."""

    def __init__(self, gw: DrillGateway, scratch: Path) -> None:
        self.gw = gw
        self.scratch = scratch
        self.study = UID_ROOT + "7.1"
        self.series = UID_ROOT + "7.2"
        self.counter = 0

    def instance(self) -> Dataset:
        self.counter += 1
        return fresh_instance(f"case-{self.counter}-{time.time_ns()}", self.study, self.series)

    def store_one(self, meta: FileMetaDataset, body: bytes) -> tuple[int | None, Any]:
        assoc = associate(self.gw.port, [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])])
        if not assoc.is_established:
            return None, assoc
        try:
            return store_raw(assoc, meta, body, self.scratch), assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def expect_failure_status(self, meta: FileMetaDataset, body: bytes) -> Outcome:
        """A broken dataset: a failure status is right. Success is wrong (the modality believes its image is
        safe), and so is 0xA7xx "out of resources": it invites the modality to retry, forever, an instance that
        can never be stored. No answer at all is wrong too."""
        status, assoc = self.store_one(meta, body)
        if status is None:
            return Outcome("abort" if assoc.is_aborted else "no answer", assoc.is_aborted)
        sop = str(meta.MediaStorageSOPInstanceUID)
        if status == 0 or status in SUCCESS_CODES:
            stored = list((self.gw.var_dir / "spool" / "incoming").glob(f"*/*/{sop}.dcm"))
            why = dataset_problem(stored[0]) if stored else "not found in the spool"
            return Outcome(f"0x{status:04X} (accepted; stored file: {why or 'complete'})", False)
        if status >> 8 == 0xA7:
            return Outcome(f"0x{status:04X} (out of resources: the modality will retry it forever)", False)
        return Outcome(f"0x{status:04X}", True)


def case_truncated_headers(b: Bench) -> Outcome:
    """Dataset cut after 1000 bytes: the UIDs arrive, the image never does."""
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, body_of(ds)[:1000])


def case_truncated_pixels(b: Bench) -> Outcome:
    ds = b.instance()
    body = body_of(ds)
    return b.expect_failure_status(ds.file_meta, body[: len(body) // 2])


def case_truncated_last_byte(b: Bench) -> Outcome:
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, body_of(ds)[:-1])


def case_length_too_long(b: Bench) -> Outcome:
    """Patient's Name declares 0xFFF0 bytes: every element after it is misread."""
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, patch_length(body_of(ds), 0x0010, 0x0010, 0xFFF0))


def case_length_odd(b: Bench) -> Outcome:
    """Rows (US, 2 bytes) declared as 3 bytes: odd length, misaligned from there on."""
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, patch_length(body_of(ds), 0x0028, 0x0010, 3))


def case_pixel_length_beyond_data(b: Bench) -> Outcome:
    """Pixel Data declares 1 GiB; 512 KiB follow."""
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, patch_length(body_of(ds), 0x7FE0, 0x0010, 1 << 30))


def case_rows_columns_huge(b: Bench) -> Outcome:
    """Rows x Columns 16384 x 16384 declared for a 512 x 512 image."""
    ds = b.instance()
    ds.Rows = ds.Columns = 16384
    return b.expect_failure_status(ds.file_meta, body_of(ds))


def case_series_uid_not_a_uid(b: Bench) -> Outcome:
    """Series Instance UID with letters and spaces: not a UID, cannot name a spool folder."""
    ds = b.instance()
    ds.SeriesInstanceUID = "1.2.3.series one"
    return b.expect_failure_status(ds.file_meta, body_of(ds))


def case_unknown_transfer_syntax(b: Bench) -> Outcome:
    """A made-up transfer syntax must be refused at negotiation (result 4: transfer syntaxes not supported)."""
    made_up = UID_ROOT + "999.1"
    assoc = associate(b.gw.port, [("1.2.840.10008.5.1.4.1.1.2", [made_up])])
    if assoc.is_established:
        assoc.release()
        return Outcome("accepted the association with the made-up syntax", False)
    results = [int(cx.result) for cx in assoc.rejected_contexts]
    return Outcome(f"context rejected, result {results}", results == [4])


def case_garbage_bytes(b: Bench) -> Outcome:
    answer = raw_exchange(b.gw.port, b"\xff" * 64)
    return Outcome(answer, answer in ("abort", "closed"))


def case_http_request(b: Bench) -> Outcome:
    answer = raw_exchange(b.gw.port, b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
    return Outcome(answer, answer in ("abort", "closed"))


def case_random_associate_rq(b: Bench) -> Outcome:
    """A-ASSOCIATE-RQ PDU header with a consistent length and 200 bytes of noise as its body."""
    noise = bytes((i * 73 + 11) % 256 for i in range(200))
    answer = raw_exchange(b.gw.port, struct.pack(">BBI", 0x01, 0, len(noise)) + noise)
    return Outcome(answer, answer in ("abort", "reject", "closed"))


def with_item_overrun(body: bytes, overrun: int) -> bytes:
    """`body` with a Referenced Image Sequence (0008,1140) of defined length inserted, whose one item declares
    `overrun` bytes more than the sequence holds (0: a well-formed sequence). pydicom clips such an item to its
    sequence; dcmtk reads on into the following elements: the two disagree on what the data set holds."""
    uid = b"1.2.840.10008.5.1.4.1.1.2\x00"
    element = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", len(uid)) + uid
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(element) + overrun) + element
    sequence = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(item)) + item
    pos = _first_after(body, 0x00081140)
    return body[:pos] + sequence + body[pos:]


def _first_after(body: bytes, tag: int) -> int:
    """Offset of the first top-level element whose tag is above `tag` (Explicit VR Little Endian body)."""
    pos = 0
    while pos + 8 <= len(body):
        g, e = struct.unpack_from("<HH", body, pos)
        if (g << 16 | e) > tag:
            return pos
        vr = body[pos + 4 : pos + 6]
        pos += 12 + struct.unpack_from("<I", body, pos + 8)[0] if vr in LONG_VRS else 8 + struct.unpack_from("<H", body, pos + 6)[0]
    return pos


def case_item_longer_than_its_sequence(b: Bench) -> Outcome:
    ds = b.instance()
    return b.expect_failure_status(ds.file_meta, with_item_overrun(body_of(ds), 20))


def case_bogus_pdu_in_association(b: Bench) -> Outcome:
    """A PDU of unknown type 0x09 on an established association."""
    assoc = associate(b.gw.port, [(Verification, ["1.2.840.10008.1.2"])])
    if not assoc.is_established:
        return Outcome("association refused", False)
    assoc.dul.socket.send(struct.pack(">BBI", 0x09, 0, 4) + b"junk")
    ended = wait_until(lambda: not assoc.is_established, 10, interval=0.05)
    if not ended:
        assoc.abort()
        return Outcome("no reaction within 10 s", False)
    return Outcome("abort" if assoc.is_aborted else "released", bool(assoc.is_aborted))


def _half_an_instance(b: Bench) -> tuple[Any, str]:
    """Open an association and send the command plus half the dataset fragments of one C-STORE."""
    ds = b.instance()
    assoc = associate(b.gw.port, [(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])])
    assert assoc.is_established, "the gateway refused a plain association"
    context = assoc.accepted_contexts[0]
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = io.BytesIO(body_of(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    fragments = list(message.encode_msg(int(context.context_id), 16384))
    for pdata in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(pdata)
    time.sleep(0.3)
    return assoc, str(ds.SOPInstanceUID)


def _nothing_stored(b: Bench, sop: str) -> bool:
    state = State(b.gw.var_dir / "state.db")
    try:
        recorded = state.instance_purged(sop) is not None
    finally:
        state.close()
    on_disk = list((b.gw.var_dir / "spool" / "incoming").glob(f"*/*/{sop}.dcm"))
    return not recorded and not on_disk


def case_aborted_mid_instance(b: Bench) -> Outcome:
    assoc, sop = _half_an_instance(b)
    assoc.abort()
    time.sleep(0.5)
    clean = _nothing_stored(b, sop)
    return Outcome("A-ABORT sent; " + ("nothing stored" if clean else "PARTIAL INSTANCE STORED"), clean)


def case_dropped_mid_instance(b: Bench) -> Outcome:
    """The modality's network goes away mid-instance: the TCP connection closes without an A-ABORT."""
    assoc, sop = _half_an_instance(b)
    raw = assoc.dul.socket.socket
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    time.sleep(0.5)
    assoc.kill()
    clean = _nothing_stored(b, sop)
    return Outcome("connection dropped; " + ("nothing stored" if clean else "PARTIAL INSTANCE STORED"), clean)


def stalled_pdu(port: int, wait: float) -> Outcome:
    """A PDU header that promises 16 bytes, 3 sent, then silence: the gateway must drop it within `wait` s.

    Why it matters: a peer that stalls mid-PDU (a crashed modality behind a NAT, a cable pulled) holds an
    association slot; 32 of them lock every modality out.
    """
    started = time.monotonic()
    answer = raw_exchange(port, struct.pack(">BBI", 0x01, 0, 16) + b"abc", wait=wait)
    return Outcome(f"{answer} after {time.monotonic() - started:.0f} s", answer != "no answer")


CASES: dict[str, Callable[[Bench], Outcome]] = {
    "truncated after the headers": case_truncated_headers,
    "truncated mid pixel data": case_truncated_pixels,
    "truncated by one byte": case_truncated_last_byte,
    "element length too long": case_length_too_long,
    "odd element length": case_length_odd,
    "Pixel Data length beyond the data": case_pixel_length_beyond_data,
    "Rows x Columns far beyond the data": case_rows_columns_huge,
    "Series Instance UID not a UID": case_series_uid_not_a_uid,
    "unknown transfer syntax": case_unknown_transfer_syntax,
    "garbage bytes instead of a PDU": case_garbage_bytes,
    "HTTP request on the DICOM port": case_http_request,
    "A-ASSOCIATE-RQ full of noise": case_random_associate_rq,
    "sequence item longer than its sequence": case_item_longer_than_its_sequence,
    "unknown PDU type in an association": case_bogus_pdu_in_association,
    "association aborted mid-instance": case_aborted_mid_instance,
    "connection dropped mid-instance": case_dropped_mid_instance,
}


# --------------------------------------------------------------------------------------------------------------
# the drill


class GoodTraffic:
    """The good series pushed before and after the barrage: nothing of it may be lost."""

    def __init__(self, work: Path, slices: int) -> None:
        self.before = make_series(CT_SOURCE, slices, work / "good-before", seed=f"badinput-before-{slices}")
        self.after = make_series(CT_SOURCE, slices, work / "good-after", seed=f"badinput-after-{slices}")
        self.acked: dict[str, int] = {}

    def push(self, gw: DrillGateway, files: list[Path], timeout: float = 120.0) -> list[Path]:
        modality = Modality(gw.port, files)
        stop = threading.Event()
        modality.start(stop).join(timeout)
        stop.set()
        self.acked.update(modality.acked)
        return modality.unacked

    def series_uids(self) -> set[str]:
        return {str(pydicom.dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID) for f in (self.before,
                                                                                              self.after)}


def start_gateway(work: Path) -> tuple[DrillGateway, Path]:
    archive = work / "archive"
    gw = DrillGateway(
        work / "gateway", destinations=[{"name": "archive", "type": "folder", "path": str(archive)}],
        routes=FAST_ROUTE, stable_seconds=1.0, sender={"base_seconds": 0.5, "cap_seconds": 2.0, "max_attempts": 20},
    )
    return gw.start(), archive  # type: ignore[return-value]


def finish_good_traffic(result: DrillResult, gw: DrillGateway, archive: Path, good: GoodTraffic,
                        timeout: float) -> None:
    """Wait for the good series' jobs, then account for them at the destination."""
    state = State(gw.var_dir / "state.db")
    wanted = good.series_uids()
    try:
        def finished() -> bool:
            # pending first: once instances are in a job, that job is in jobs() (one transaction makes both)
            pending = [r for r in state.pending_series() if r.series_uid in wanted]
            jobs = [j for j in state.jobs() if j.series_uid in wanted]
            return len({j.series_uid for j in jobs}) == len(wanted) and not pending and all(
                j.state in ("done", "dead") for j in jobs)

        ok = wait_until(finished, timeout, interval=0.25)
        jobs = [(j.id, j.series_uid[-6:], j.state, j.error) for j in state.jobs() if j.series_uid in wanted]
        result.check(bool(ok) and all(j[2] == "done" for j in jobs), f"good series jobs did not finish: {jobs}")
    finally:
        state.close()
    found = census(destination_files(archive), sources=set(good.acked))
    account(result, good.acked, found, series=2)
    result.derived += len(found.copies)


def bad_input_drill(work: Path, *, slices: int = 5, stall_seconds: float = 0.0, timeout: float = 300.0) -> DrillResult:
    """Run every case against one gateway between two good series; `stall_seconds` > 0 adds the stalled-PDU
    case (it needs more than the gateway's 60 s network timeout to be meaningful)."""
    started = time.monotonic()
    result = DrillResult("bad input (cases)")
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    good = GoodTraffic(work, slices)
    gw, archive = start_gateway(work)
    outcomes: dict[str, str] = {}
    try:
        left = good.push(gw, good.before)
        result.check(not left, f"{len(left)} good instances not acknowledged before the barrage")
        bench = Bench(gw, scratch)
        cases = dict(CASES)
        if stall_seconds > 0:
            cases["PDU stalled mid-way"] = lambda b: stalled_pdu(b.gw.port, stall_seconds)
        for name, case in cases.items():
            result.runs += 1
            try:
                outcome = case(bench)
            except Exception as exc:  # noqa: BLE001 - a case that blows up on our side is reported, not raised
                outcome = Outcome(f"drill error {type(exc).__name__}: {exc}", False)
            outcomes[name] = outcome.answer
            if not result.check(outcome.ok, f"{name}: {outcome.answer}"):
                result.errors[f"{name}: {outcome.answer.split(' (')[0]}"] += 1
            alive = gw.alive() and echo_ok(gw.port)
            if not result.check(alive, f"after '{name}' the gateway no longer answers a C-ECHO"):
                break
        left = good.push(gw, good.after)
        result.check(not left, f"{len(left)} good instances not acknowledged after the barrage")
        finish_good_traffic(result, gw, archive, good, timeout)
    finally:
        stop_gateway(result, gw)
    result.details["answers"] = outcomes
    result.errors.update({f"log {k}": v for k, v in gateway_errors(gw).items() if k != "store.refused"})
    problems = [p for p in spool_problems(gw.var_dir) if UID_ROOT + "7." not in p]
    result.check(not problems, f"spool problems in the good series: {problems[:3]}")
    result.seconds = time.monotonic() - started
    return result


def run(work: Path, **kwargs: Any) -> DrillResult:
    """Entry point for the report script."""
    return bad_input_drill(work, **kwargs)

