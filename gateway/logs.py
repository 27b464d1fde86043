"""Structured logging: structlog, JSON lines to stdout (console renderer on a TTY), ids via contextvars.

Why here: one place decides the format for every process, silences pynetdicom's identifier logging (it
prints datasets, i.e. PHI, at debug level) and provides the PHI scrubber that is the last line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

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


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog and the stdlib loggers once per process."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.dict_tracebacks if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    quiet_pynetdicom()


def quiet_pynetdicom() -> None:
    """pynetdicom logs identifiers and whole datasets at debug level: keep it at WARNING, flag off."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Its "standard" handlers format debug lines for every PDU and DIMSE message even with the logger at
    # WARNING: ~15% of the sender's CPU and a measurable share of the SCP's, for lines nobody sees.
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)


def get(name: str = "gateway") -> Any:
    """A structlog logger; bind job/study/series ids with structlog.contextvars.bound_contextvars."""
    return structlog.get_logger(name)
