"""Drill 4b: a hypothesis-driven fuzz run of dataset mutations, each sent as a C-STORE over a real association.

The seed is a real 512 x 512 CT slice; each input applies one to three byte-level mutations to its encoded
dataset (a value overwritten, a length field rewritten, a VR or tag replaced, bytes inserted or deleted, the
stream truncated, pixel bytes scrambled) and optionally one header-level change made with pydicom before
encoding (Rows, Columns, Bits Allocated, Number of Frames, Photometric Interpretation... set to arbitrary
values, or an element dropped). Every input gets its own SOP Instance UID so a stored one is never mistaken
for a duplicate.

What must hold for every input: an answer comes back (a status, or an A-ABORT) within the DIMSE timeout; the
gateway process stays up and answers a C-ECHO; and when it answers 0x0000 the file it stored is a complete,
well-formed instance (a success status on a broken dataset tells the modality its image is safe when it is
not). Around the run, a good series before and one after must come out enhanced at the destination.

Why hypothesis without shrinking: the gateway is slow to examine compared with a pure function, so the run
generates `examples` inputs from a fixed seed (reproducible) and records every anomaly with the mutation that
caused it, instead of stopping at the first one and spending minutes shrinking it.
"""

from __future__ import annotations

import copy
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import UID

from bench.drills.badinput import (
    LONG_VRS,
    UID_ROOT,
    GoodTraffic,
    associate,
    body_of,
    echo_ok,
    finish_good_traffic,
    fresh_instance,
    start_gateway,
    store_raw,
)
from bench.drills.common import (
    SUCCESS_CODES,
    DrillGateway,
    DrillResult,
    dataset_problem,
    gateway_errors,
    stop_gateway,
)

BYTE_OPS = ("value", "length", "vr", "tag", "truncate", "insert", "delete", "pixels")
VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
       b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
       b"UT", b"XX", b"\x00\x00"]
HEADER_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                   "PixelRepresentation", "NumberOfFrames", "PlanarConfiguration", "PhotometricInterpretation",
                   "RescaleSlope", "RescaleIntercept", "WindowWidth", "Modality", "SOPClassUID", "PixelData",
                   "StudyInstanceUID", "SeriesInstanceUID", "TransferSyntax")


@dataclass(frozen=True)
class Element:
    """Where one top-level element sits in an Explicit VR Little Endian byte stream."""

    pos: int
    vr: bytes
    length_at: int
    length_size: int
    value_at: int
    length: int


def elements(body: bytes) -> list[Element]:
    """Top-level elements of a (possibly already mutated) body, as far as its structure can be followed."""
    out: list[Element] = []
    pos = 0
    while pos + 8 <= len(body):
        vr = body[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(body):
                break
            length = struct.unpack_from("<I", body, pos + 8)[0]
            element = Element(pos, vr, pos + 8, 4, pos + 12, length)
        else:
            length = struct.unpack_from("<H", body, pos + 6)[0]
            element = Element(pos, vr, pos + 6, 2, pos + 8, length)
        out.append(element)
        if length == 0xFFFFFFFF:
            end = body.find(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", element.value_at)
            if end < 0:
                break
            pos = end + 8
        else:
            pos = element.value_at + length
    return out


Op = tuple[str, int, int, bytes]


def apply(body: bytes, op: Op) -> tuple[bytes, str]:
    """Apply one byte-level mutation; returns the new body and a short description of what was done."""
    kind, a, b, blob = op
    if not body:
        return body, f"{kind}: empty"
    if kind == "truncate":
        cut = a % len(body)
        return body[:cut], f"truncate@{cut}"
    if kind == "insert":
        at = a % len(body)
        return body[:at] + blob + body[at:], f"insert {len(blob)}B@{at}"
    if kind == "delete":
        at, n = a % len(body), 1 + b % 64
        return body[:at] + body[at + n :], f"delete {n}B@{at}"
    table = elements(body)
    if not table:
        return body, f"{kind}: no elements"
    out = bytearray(body)
    if kind == "pixels":
        pixel = next((e for e in table if body[e.pos : e.pos + 4] == b"\xe0\x7f\x10\x00"), None)
        if pixel is None or pixel.length in (0, 0xFFFFFFFF):
            return body, "pixels: no Pixel Data"
        at = pixel.value_at + a % max(1, min(pixel.length, len(body) - pixel.value_at) - len(blob))
        out[at : at + len(blob)] = blob
        return bytes(out[: len(body)]), f"pixels {len(blob)}B@{at}"
    e = table[a % len(table)]
    tag = struct.unpack_from("<HH", body, e.pos)
    where = f"({tag[0]:04X},{tag[1]:04X})"
    if kind == "value":
        if e.length in (0, 0xFFFFFFFF) or e.value_at >= len(body):
            return body, f"value {where}: empty"
        at = e.value_at + b % e.length
        out[at : at + len(blob)] = blob
        return bytes(out[: len(body)]), f"value {where} {len(blob)}B@{at - e.value_at}"
    if kind == "length":
        limit = (1 << (8 * e.length_size)) - 1
        choices = [0, 1, e.length + 1, max(0, e.length - 1), e.length * 2, limit, b]
        new = choices[b % len(choices)] & limit
        out[e.length_at : e.length_at + e.length_size] = new.to_bytes(e.length_size, "little")
        return bytes(out), f"length {where} {e.length}->{new}"
    if kind == "vr":
        vr = VRS[b % len(VRS)]
        out[e.pos + 4 : e.pos + 6] = vr
        return bytes(out), f"vr {where} {e.vr.decode('latin-1')}->{vr.decode('latin-1')}"
    raw = (blob * 4)[:4]
    out[e.pos : e.pos + 4] = raw
    return bytes(out), f"tag {where}->{raw.hex()}"


def header_change(ds: Dataset, keyword: str, value: int) -> str:
    """Set (or drop) one header element with pydicom before encoding; returns a description."""
    if value % 7 == 0 and keyword != "TransferSyntax":
        if keyword in ds:
            delattr(ds, keyword)
        return f"drop {keyword}"
    if keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                   "PixelRepresentation", "PlanarConfiguration"):
        setattr(ds, keyword, value % 65536)
    elif keyword in ("NumberOfFrames", "WindowWidth", "RescaleIntercept"):
        setattr(ds, keyword, str(value % 100000))
    elif keyword == "RescaleSlope":
        setattr(ds, keyword, str((value % 2000 - 1000) / 7.0)[:16])
    elif keyword == "PhotometricInterpretation":
        setattr(ds, keyword, ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ"][value % 5])
    elif keyword == "Modality":
        setattr(ds, keyword, ["MR", "CR", "SEG", "RTSTRUCT", "", "OT"][value % 6])
    elif keyword == "PixelData":
        ds.PixelData = bytes(ds.PixelData)[: value % len(ds.PixelData)]
    elif keyword == "TransferSyntax":  # dataset still Explicit VR LE, file meta claims another syntax
        ds.file_meta.TransferSyntaxUID = UID(["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
                                              "1.2.840.10008.1.2.4.90"][value % 4])
        return f"meta says {ds.file_meta.TransferSyntaxUID.name}"
    else:
        setattr(ds, keyword, f"1.2.{value % 1000000}")
    return f"{keyword}={getattr(ds, keyword, None)!s:.20}"


@dataclass
class FuzzLedger:
    """Every input tried, what the gateway answered, and the anomalies with the mutation behind each."""

    tried: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    accepted: int = 0


class Fuzzer:
    """Sends mutated instances to the gateway on a shared association (re-opened after an abort)."""

    def __init__(self, gw: DrillGateway, scratch: Path, dimse_timeout: float) -> None:
        self.gw = gw
        self.scratch = scratch
        self.dimse_timeout = dimse_timeout
        self.template = fresh_instance("fuzz-template", UID_ROOT + "8.1", UID_ROOT + "8.2")
        self.ledger = FuzzLedger()
        self._assoc: dict[str, Any] = {}

    def _association(self, meta: Dataset) -> Any:
        key = f"{meta.MediaStorageSOPClassUID}|{meta.TransferSyntaxUID}"
        assoc = self._assoc.get(key)
        if assoc is None or not assoc.is_established:
            assoc = associate(self.gw.port, [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])],
                              timeout=self.dimse_timeout)
            self._assoc[key] = assoc
        return assoc

    def close(self) -> None:
        for assoc in self._assoc.values():
            if assoc.is_established:
                assoc.release()

    def one(self, ops: list[Op], header: tuple[str, int] | None) -> None:
        ledger = self.ledger
        ledger.tried += 1
        ds = copy.deepcopy(self.template)
        sop = UID(f"{UID_ROOT}8.{10**9 + ledger.tried}")
        ds.SOPInstanceUID = sop
        meta = copy.deepcopy(ds.file_meta)
        meta.MediaStorageSOPInstanceUID = sop
        what = []
        if header is not None:
            what.append(header_change(ds, *header))
            meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
            ds.file_meta.TransferSyntaxUID = self.template.file_meta.TransferSyntaxUID
        body = body_of(ds)
        for op in ops:
            body, text = apply(body, op)
            what.append(text)
        label = f"#{ledger.tried} " + "; ".join(what)
        assoc = self._association(meta)
        if not assoc.is_established:
            ledger.answers["association refused"] += 1
            ledger.anomalies.append(f"{label}: the gateway refused a new association")
            return
        status = store_raw(assoc, meta, body, self.scratch)
        if status is None:
            if assoc.is_aborted:
                ledger.answers["abort"] += 1
            else:
                ledger.answers["no answer"] += 1
                ledger.anomalies.append(f"{label}: no answer within {self.dimse_timeout:.0f} s")
                assoc.abort()
        elif status == 0 or status in SUCCESS_CODES:
            ledger.answers[f"0x{status:04X}"] += 1
            ledger.accepted += 1
            stored = list((self.gw.var_dir / "spool" / "incoming").glob(f"*/*/{sop}.dcm"))
            why = dataset_problem(stored[0]) if stored else "acknowledged but not in the spool"
            if why:
                ledger.anomalies.append(f"{label}: acknowledged 0x{status:04X} but stored file is {why}")
        else:
            ledger.answers[f"0x{status:04X}"] += 1
            if status >> 8 == 0xA7:
                ledger.anomalies.append(f"{label}: 0x{status:04X} out of resources for a malformed dataset "
                                        "(the modality would retry it forever)")
        if not self.gw.alive():
            ledger.anomalies.append(f"{label}: the gateway process died")
            raise RuntimeError("gateway died")
        if ledger.tried % 50 == 0 and not echo_ok(self.gw.port):
            ledger.anomalies.append(f"{label}: no C-ECHO answer after this input")


_op = st.tuples(st.sampled_from(BYTE_OPS), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                st.binary(min_size=1, max_size=32))
_header = st.none() | st.tuples(st.sampled_from(HEADER_KEYWORDS), st.integers(0, 2**31 - 1))


def run_fuzz(fuzzer: Fuzzer, examples: int, seed: int) -> None:
    """Generate `examples` inputs (reproducible from `seed`) and send each through `fuzzer`."""

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(ops=st.lists(_op, min_size=0, max_size=3), header=_header)
    def one(ops: list[Op], header: tuple[str, int] | None) -> None:
        if not ops and header is None:
            ops = [("value", 0, 0, b"\0")]
        fuzzer.one(ops, header)

    one()


def fuzz_drill(
    work: Path, *, examples: int = 300, seed: int = 6, slices: int = 5, dimse_timeout: float = 20.0,
    timeout: float = 300.0,
) -> DrillResult:
    """Fuzz the running gateway with `examples` mutated C-STOREs between two good series."""
    started = time.monotonic()
    result = DrillResult(f"fuzz ({examples} inputs)")
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    good = GoodTraffic(work, slices)
    gw, archive = start_gateway(work)
    fuzzer = Fuzzer(gw, scratch, dimse_timeout)
    try:
        left = good.push(gw, good.before)
        result.check(not left, f"{len(left)} good instances not acknowledged before the fuzz run")
        try:
            run_fuzz(fuzzer, examples, seed)
        except RuntimeError as exc:
            result.check(False, f"fuzz run stopped: {exc}")
        finally:
            fuzzer.close()
        result.check(gw.alive() and echo_ok(gw.port), "the gateway does not answer a C-ECHO after the fuzz run")
        left = good.push(gw, good.after)
        result.check(not left, f"{len(left)} good instances not acknowledged after the fuzz run")
        finish_good_traffic(result, gw, archive, good, timeout)
    finally:
        stop_gateway(result, gw)
    ledger = fuzzer.ledger
    result.runs = ledger.tried
    result.drill = f"fuzz ({ledger.tried} inputs)"
    result.errors.update({f"answer {k}": v for k, v in ledger.answers.items()})
    for anomaly in ledger.anomalies:
        result.failures.append(anomaly)
    result.details.update(
        inputs_tried=ledger.tried, answers=dict(ledger.answers), accepted=ledger.accepted,
        anomalies=len(ledger.anomalies), gateway_log=dict(gateway_errors(gw)),
    )
    result.seconds = time.monotonic() - started
    return result


def run(work: Path, **kwargs: Any) -> DrillResult:
    """Entry point for the report script."""
    return fuzz_drill(work, **kwargs)
