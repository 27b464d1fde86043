"""Structured logging: structlog, JSON lines to stdout (console renderer on a TTY), ids via contextvars.

Why here: one place decides the format for every process, silences pynetdicom's identifier logging (it
prints datasets, i.e. PHI, at debug level) and provides the PHI scrubber that is the last line of defence.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
import structlog.tracebacks

# Keys that must never reach a log line, whatever a caller passes by mistake.
PHI_KEYS = frozenset(
    {
        "patient_name", "patientname", "PatientName",
        "patient_id", "patientid", "PatientID",
        "patient_birth_date", "birth_date", "PatientBirthDate",
        "accession_number", "accession", "AccessionNumber",
        "OtherPatientIDs", "PatientAddress", "ReferringPhysicianName",
    }
)


def _drop_phi(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in PHI_KEYS.intersection(event_dict):
        event_dict[key] = "[removed]"
    return event_dict


#: Tracebacks as dicts (JSON logs), frames only. Why not structlog's `dict_tracebacks`: it shows each frame's
#: local variables, i.e. truncated reprs of datasets (patient name, id, birth date), file names and strings:
#: every logged exception would be a PHI leak. File, line and function are enough to find the bug.
_JSON_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _console_renderer() -> structlog.dev.ConsoleRenderer:
    """The TTY renderer, its tracebacks without locals (its rich default shows them, same leak as above)."""
    formatter: Any = structlog.dev.plain_traceback  # never shows locals
    if importlib.util.find_spec("rich") is not None:  # rich is optional
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.ConsoleRenderer(exception_formatter=formatter)


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog and the stdlib loggers once per process."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else _console_renderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            _JSON_TRACEBACKS if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    quiet_pynetdicom()


def quiet_pynetdicom() -> None:
    """pynetdicom logs identifiers and whole datasets at debug level: keep its logger at WARNING (its flags that
    log identifiers are turned off at process start: `gateway.dimse.fast.compat.configure_process`)."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)


def get(name: str = "gateway") -> Any:
    """A structlog logger; bind job/study/series ids with structlog.contextvars.bound_contextvars."""
    return structlog.get_logger(name)


class Outage:
    """A loop's recurring failure, logged when it starts, when its kind changes and when it ends: never per try.

    Why: a loop that polls twice a second and logs each failure with a traceback floods the journal (a full
    disk gave two tracebacks a second, for as long as it lasted) and buries the one line an admin needs. Each
    try after a failure also waits longer (`failed` returns the wait: `base` doubling up to `cap` seconds), so
    a broken dependency is not hammered either. A full disk is logged with a hint and no traceback (it is not
    a bug); any other kind once with its traceback (frames only, see `configure`).
    """

    def __init__(
        self, logger: Any, *, failing: str, recovered: str, base: float = 0.5, cap: float = 30.0
    ) -> None:
        self.log = logger
        self.failing_event = failing
        self.recovered_event = recovered
        self.base = base
        self.cap = cap
        self.failures = 0
        self.kind: str | None = None
        self._since = 0.0

    @property
    def active(self) -> bool:
        return self.kind is not None

    def delay(self) -> float:
        """Seconds to wait before the next try: 0 when healthy, else `base` doubling per failure up to `cap`."""
        if not self.failures:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(self.failures - 1, 30)))

    def failed(self, exc: BaseException, **fields: Any) -> float:
        """Count one failed try; log it only if the outage starts or changes kind. Returns seconds to wait."""
        from gateway.errors import describe, is_disk_full

        disk = is_disk_full(exc)
        kind = "disk_full" if disk else type(exc).__qualname__
        self.failures += 1
        if kind != self.kind:
            if self.kind is None:
                self._since = time.monotonic()
            self.kind = kind
            if disk:
                self.log.error(
                    self.failing_event, kind=kind, error=describe(exc), retry_in=self.delay(),
                    hint="free space under var_dir (or lower gateway.min_free_mb); work waits, nothing is lost",
                    **fields,
                )
            else:
                self.log.error(self.failing_event, kind=kind, error=describe(exc), exc_info=exc, **fields)
        return self.delay()

    def ok(self, **fields: Any) -> None:
        """A try succeeded: log the end of the outage, once."""
        if self.kind is not None:
            self.log.info(
                self.recovered_event, kind=self.kind, failures=self.failures,
                seconds=round(time.monotonic() - self._since, 1), **fields,
            )
        self.kind = None
        self.failures = 0
