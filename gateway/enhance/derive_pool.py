"""The host side of enhancement around the model: decoding the received instances, and the derive step of a
computed batch (metrics, QA checks, derived object, durable write), in the worker's own threads or in a pool
of processes beside it.

Why processes: per 512x512 slice the host side after the model (INPUT PSNR/SSIM ~7 ms, the QA gate ~12 ms,
building and encoding the derived object ~5 ms, the durable write ~7 ms) holds the GIL most of the time
(scipy's filters, pydicom), so a second derive thread adds nothing (bench/worker_job.py measures both) and one
thread caps a worker at ~30 slices/s while a GPU enhances thousands. N processes lift that cap N-fold on a
host with the cores.

Who does what: a process decodes a received instance (`decode`: read, checks, modality values) and hands the
values back; the worker batches them, runs the model and keeps the series' QA gate; a process gets a computed
batch (the sources' spool keys and the enhanced values), reads and decodes the sources again itself (cheaper
for the worker than sending them: its thread is the one that must keep up), measures, derives, writes, and
hands back each instance's INPUT metrics and slice checks, which the worker records in its gate. Arrays
travel in shared memory (`Shared`). The worker renews its lease and watches its service between batches; a
process only checks that its worker is alive, so an orphan never writes a file that the job's next worker
writes (the derived UIDs are the same). bench/README.md ("Issue 19, second part") has the measurements.

Both modes call `finish_batch` and write the same derived objects: pixels, UIDs, metrics, QA flags and verdicts
(test_derive_pool.py; only the creation times differ).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_utils.classify import skip_reason
from dicom_utils.derive import DerivationOptions
from dicom_utils.enhancement import Task
from dicom_utils.pixels import frame_rescale, modality_frames, stored_range, value_range
from enhancers.registry import EnhancerInfo
from gateway import logs
from gateway.enhance.finish import SeriesFacts, build_derived, input_metrics, to_input_grid
from gateway.enhance.qa import SeriesGate, SliceResult, worst
from gateway.settings import QaSettings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.spool import InstanceKey, OutputKey, Spool

#: At most this many processes per worker: past it the worker's own process (~6.5 ms per slice: batching,
#: the model call, shared-memory copies, the gate's bookkeeping) is the limit, not the derive step.
MAX_PROCESSES = 8


def pool_size(setting: int | None, *, device: str, workers: int, cpus: int | None = None) -> int:
    """How many derive processes a worker starts: the setting, or for `auto` (None) none on CPU (the model
    needs the cores and waits for nothing) and min(8, cores per worker - 2) beside a GPU (2 cores stay for
    the worker's decode and model threads)."""
    if setting is not None:
        return setting
    if not device.startswith("cuda"):
        return 0
    per_worker = (cpus or os.cpu_count() or 1) // max(1, workers)
    return max(1, min(MAX_PROCESSES, per_worker - 2))


@dataclass(frozen=True)
class Decoded:
    """A received instance as the model and the derive step need it, without its data set (which stays in the
    spool: a process that derives reads it again)."""

    frames: np.ndarray  # (frames, rows, cols) float32 modality values
    vrange: tuple[float, float]  # the modality values its stored representation can hold
    number: int | None  # Instance Number, when usable (reasons and the SR name slices by it)
    rescale: tuple[tuple[float, float], ...]  # (slope, intercept) per frame
    stored: tuple[int, int]  # smallest and largest stored value

    @classmethod
    def of(cls, ds: Dataset) -> Decoded:
        """Decode `ds` (raises PixelDecodeError and the like for what cannot be decoded)."""
        try:
            number: int | None = int(ds.get("InstanceNumber"))
        except (TypeError, ValueError):
            number = None
        return cls(modality_frames(ds), value_range(ds), number, tuple(frame_rescale(ds)), stored_range(ds))


def decode(spool: Spool, key: InstanceKey) -> tuple[Dataset | None, Decoded | str]:
    """Read and decode one received instance: (its data set, its values), or (data set or None, why not).

    A `skip_reason` (not an image to enhance) comes back with the data set; an undecodable file without it.
    """
    try:
        with spool.open(key) as fh:
            ds = pydicom.dcmread(fh)
    except Exception as exc:  # noqa: BLE001 - one unreadable instance must not fail its series
        return None, str(exc)
    try:
        reason = skip_reason(ds)
        return ds, Decoded.of(ds) if reason is None else reason
    except Exception as exc:  # noqa: BLE001 - see above
        return None, str(exc)


@dataclass(frozen=True)
class SeriesSpec:
    """What every batch of one job shares (pickled to a process once per batch: small)."""

    job_id: int
    info: EnhancerInfo
    task: Task
    facts: SeriesFacts
    options: DerivationOptions
    qa: QaSettings | None  # None: the gate is off
    group: str | None
    sigma: float
    count: int  # instances in the series: the gate's sampling of full checks depends on it


@dataclass(frozen=True)
class Slot:
    """One instance of a batch: where its original is, its place in the job, its Instance Number."""

    key: InstanceKey
    index: int
    number: int | None


@dataclass
class BatchWork:
    """One computed batch: the instances, their decoded input values and the enhanced values (frames in order)."""

    series: SeriesSpec
    slots: list[Slot]
    #: per instance: (frames, rows, cols) modality values as received; empty: decoded again from the data set
    #: (a process does that rather than receive them: it reads the data set anyway, and its CPU is the one
    #: to spend, not the worker's)
    before: list[np.ndarray]
    after: np.ndarray  # the batch's enhanced values, the instances' frames one after the other
    per_ms: float  # model time per instance, for the private block


@dataclass(frozen=True)
class Derived:
    """What the worker records for one written instance (and what its SR report needs to reference it)."""

    sop_uid: str  # the derived instance's
    index: int  # its source's position in the job
    number: int | None  # its source's Instance Number
    psnr: float | None
    ssim: float | None
    slices: tuple[SliceResult, ...]  # the gate's checks of its frames (empty with the gate off)
    qa_seconds: float


def finish_batch(
    spool: Spool,
    work: BatchWork,
    sources: Sequence[Dataset | None] = (),
    check: Callable[[], None] = lambda: None,
) -> list[Derived]:
    """Metrics, QA checks, derived object and durable write for each instance of `work`.

    `sources`: the originals' data sets where the caller has them (the worker's thread); the others (None, or
    all when empty) are read from the spool. `check` runs before each instance and before each write: it
    raises to stop (a lost lease, a dead worker).
    """
    spec = work.series
    gate = SeriesGate(spec.qa, group=spec.group, sigma=spec.sigma, count=spec.count) if spec.qa else None
    done: list[Derived] = []
    offset = 0
    for i, slot in enumerate(work.slots):
        check()
        ds = sources[i] if sources else None
        if ds is None:
            with spool.open(slot.key) as fh:
                ds = pydicom.dcmread(fh)
        before = work.before[i] if work.before else modality_frames(ds)
        n = before.shape[0]
        values = work.after[offset : offset + n]
        offset += n
        p, s = input_metrics(before, values, spec.task)
        results: tuple[SliceResult, ...] = ()
        t0 = time.monotonic()
        if gate is not None:  # measured here, recorded by the worker's gate (it decides on the whole series)
            on_grid = to_input_grid(values, spec.task)
            results = tuple(
                gate.measure(slot.index, slot.number, before[f], on_grid[f], ssim=s, frame=f, frames=n)
                for f in range(n)
            )
        qa_seconds = time.monotonic() - t0
        result, data, p, s = build_derived(
            ds,
            before,
            values,
            info=spec.info,
            task=spec.task,
            processing_ms=work.per_ms,
            options=spec.options,
            metrics=(p, s),
            flag=worst([r.verdict for r in results]) if gate is not None else None,
            series=spec.facts,
        )
        check()
        spool.put(OutputKey(spec.job_id, str(result.SOPInstanceUID)), data)
        done.append(Derived(str(result.SOPInstanceUID), slot.index, slot.number, p, s, results, qa_seconds))
    return done


class WorkerGone(Exception):
    """The worker that started this derive process is gone: write nothing more."""


# A derive process's own state, set once by `_start` (each process derives for one worker, from one spool).
_spool: LocalSpool | None = None
_worker_pid = 0


def _worker_alive() -> None:
    if os.getppid() != _worker_pid:
        raise WorkerGone("the worker of this derive process is gone")


def _watch_worker() -> None:
    """Exit as soon as the worker is gone, even while idle: a killed worker must not leave processes behind."""
    while os.getppid() == _worker_pid:
        time.sleep(0.5)
    os._exit(0)


def _start(spool_dir: str, min_free_mb: float, worker_pid: int) -> None:
    """Initializer of a derive process: its spool (its own temp folder), logs, and no signal handling of its
    own: the service stops the worker, and the worker stops its pool after the job in hand."""
    global _spool, _worker_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker_pid = worker_pid
    logs.configure()
    _spool = LocalSpool(Path(spool_dir), min_free_mb=min_free_mb)
    threading.Thread(target=_watch_worker, name="watch-worker", daemon=True).start()


@dataclass(frozen=True)
class Shared:
    """An array in a POSIX shared-memory segment, which is what crosses between the worker and its processes.

    Why not the array itself: a pickled 512x512 slice costs the sending process a copy into the pipe and the
    receiver a copy out of it, under the GIL; measured, that cost the worker's feeder thread about as much as
    deriving cost the process. One memcpy into the segment and one out of it are ~10x cheaper.
    Ownership: the receiver `take`s it (copy out, unlink); an array never taken is `drop`ped by whoever gives
    up on it. A segment left by a killed process is removed by multiprocessing's resource tracker at exit.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def put(cls, array: np.ndarray) -> Shared:
        shm = SharedMemory(create=True, size=max(1, array.nbytes))
        view: np.ndarray = np.ndarray(array.shape, array.dtype, buffer=shm.buf)
        view[...] = array
        del view  # the segment cannot be closed while an array still points into it
        shm.close()
        return cls(shm.name, tuple(array.shape), array.dtype.str)

    def take(self) -> np.ndarray:
        shm = SharedMemory(name=self.name)
        view: np.ndarray = np.ndarray(self.shape, np.dtype(self.dtype), buffer=shm.buf)
        out = view.copy()
        del view
        shm.close()
        shm.unlink()
        return out

    def drop(self) -> None:
        try:
            shm = SharedMemory(name=self.name)
        except FileNotFoundError:
            return
        shm.close()
        shm.unlink()


@dataclass(frozen=True)
class _SharedBatch:
    """A `BatchWork` on its way to a process: the enhanced values in shared memory, no input values."""

    series: SeriesSpec
    slots: list[Slot]
    after: Shared
    per_ms: float

    def drop(self) -> None:
        self.after.drop()


def _run(batch: _SharedBatch) -> list[Derived]:
    if _spool is None:
        raise RuntimeError("derive process not initialised")
    work = BatchWork(batch.series, batch.slots, [], batch.after.take(), batch.per_ms)
    return finish_batch(_spool, work, check=_worker_alive)


def _decode(key: InstanceKey) -> tuple[bool, Decoded | str, Shared | None]:
    """`decode` in a process: (whether the instance was read, its values or why not, its frames); the data set
    stays here, and the frames travel in shared memory (the returned Decoded holds an empty array)."""
    if _spool is None:
        raise RuntimeError("derive process not initialised")
    ds, got = decode(_spool, key)
    if isinstance(got, str):
        return ds is not None, got, None
    return True, replace(got, frames=np.empty((0,), np.float32)), Shared.put(got.frames)


def _drop_unused(future: Future[list[Derived]], batch: _SharedBatch) -> None:
    """A batch that no process took (cancelled, or its process died): its segments go."""
    if future.cancelled() or isinstance(future.exception(), BrokenProcessPool):
        batch.drop()


def received(result: tuple[bool, Decoded | str, Shared | None]) -> tuple[bool, Decoded | str]:
    """What `DerivePool.decode` got, with its frames out of shared memory."""
    read, got, frames = result
    if frames is not None and isinstance(got, Decoded):
        return read, replace(got, frames=frames.take())
    return read, got


def discard(result: tuple[bool, Decoded | str, Shared | None]) -> None:
    """A decoded instance nobody will use (the job stopped): free its segment."""
    if result[2] is not None:
        result[2].drop()


class DerivePool:
    """`processes` spawned derive processes writing into the worker's spool (each opens the same folder)."""

    def __init__(self, processes: int, spool: LocalSpool) -> None:
        self.processes = processes
        self._executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that may hold CUDA
            initializer=_start,
            initargs=(str(spool.root), float(spool.min_free_mb), os.getpid()),
        )

    def submit(self, work: BatchWork) -> Future[list[Derived]]:
        batch = _SharedBatch(work.series, work.slots, Shared.put(work.after), work.per_ms)
        future = self._executor.submit(_run, batch)
        future.add_done_callback(lambda f: _drop_unused(f, batch))
        return future

    def decode(self, key: InstanceKey) -> Future[tuple[bool, Decoded | str, Shared | None]]:
        """Decode in a process; the result goes through `received` (or `discard`)."""
        return self._executor.submit(_decode, key)

    def close(self) -> None:
        """Stop the processes (queued batches are dropped; a running one finishes first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
