"""Completion: received series become jobs; series of a study-level route wait for their study.

Why a stage of its own: "complete" is a guess made from silence (DICOM has no end-of-study message), and the
guess differs by route. Series-level (the default): a series quiet for `stable_seconds` is a job. Study-level
(`trigger = "study"`): a model that needs several series of a study (or a radiologist who wants the derived
series of a study to arrive together) must wait until the study is complete, which is judged as:

- complete: no instance of the route's series of the study for `stable_seconds`, and every `required` series
  (modality and/or Series Description regex) is among the study's series (received now or before);
- timed out: `study_timeout` seconds after the study's first instance, once quiet, a required series is still
  missing: `on_timeout = "process"` makes the jobs of what is there (log `study.timeout`), `"discard"` makes them
  skipped with the reason (log `study.discarded`; `reprocess` can still run them).

The jobs of a complete study are made in one transaction with one `study_group`; the sender delivers none of
them until none of them is still to be enhanced (`gateway.storage.state.STUDY_GROUP_READY`), so the derived series
arrive together. Failure modes (the README's "Completion rules"): a slow modality that pauses longer than
`stable_seconds` mid-study splits it (the later series form a new group, delivered after the first); a series
sent after its study was processed is a group of its own, processed once quiet (its required series are
found among the study's earlier ones); a required series that never comes costs `study_timeout`.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from structlog.contextvars import bound_contextvars

from gateway import logs
from gateway.enhance.routing import route_for
from gateway.settings import Route
from gateway.storage.spool import InstanceKey, Spool
from gateway.storage.state import StateStore

log = logs.get("gateway.completion")

#: Series Descriptions kept in memory (least recently used dropped first). Why a bound: the cache is read on
#: every pass for the pending series and for the earlier series of their studies; unbounded, a gateway that
#: runs for months holds one entry per series it ever saw. 4096 covers the pending series of a busy site many
#: times over (an entry is a few hundred bytes); past it a description is read again from a file header.
DESCRIPTIONS_KEPT = 4096


@dataclass(frozen=True)
class _Series:
    uid: str
    modality: str
    description: str
    first_at: float
    last_at: float


class Completion:
    """One pass (`run_once`) turns what is complete into jobs; the service's completion thread calls it."""

    def __init__(self, state: StateStore, spool: Spool, routes: Sequence[Route], stable_seconds: float,
                 descriptions_kept: int = DESCRIPTIONS_KEPT) -> None:
        self.state = state
        self.spool = spool
        self.routes = list(routes)
        self.stable_seconds = stable_seconds
        self._study_routes = any(r.trigger == "study" for r in self.routes)
        self._descriptions: OrderedDict[str, str] = OrderedDict()  # series UID -> Series Description, LRU
        self._descriptions_kept = descriptions_kept

    def _description(self, series_uid: str, sample: InstanceKey) -> str:
        """Series Description of a series, from one of its spooled files (headers only), cached (LRU)."""
        if series_uid in self._descriptions:
            self._descriptions.move_to_end(series_uid)
        else:
            try:
                with self.spool.open(sample) as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["SeriesDescription"])
                text = str(ds.get("SeriesDescription", "") or "")
            except Exception:  # noqa: BLE001 - an unreadable file routes like a series without a description
                text = ""
            self._descriptions[series_uid] = text
            if len(self._descriptions) > self._descriptions_kept:
                self._descriptions.popitem(last=False)
        return self._descriptions[series_uid]

    def run_once(self, now: float | None = None) -> list[int]:
        """Make the jobs that are due now; returns their ids (study-level first)."""
        now = time.time() if now is None else now
        held: set[str] = set()
        made: list[int] = []
        if self._study_routes:
            groups: dict[tuple[str, int], list[_Series]] = defaultdict(list)
            for row in self.state.pending_series():
                series = _Series(row.series_uid, row.modality, self._description(row.series_uid, row.sample),
                                 row.first_at, row.last_at)
                route = route_for(self.routes, series.modality, series.description)
                if route is not None and route.trigger == "study":
                    groups[(row.study_uid, self.routes.index(route))].append(series)
            for (study_uid, index), members in groups.items():
                jobs = self._decide(study_uid, index, members, now)
                if jobs is None:
                    held.update(m.uid for m in members)
                else:
                    made.extend(jobs)
        made.extend(self.state.make_jobs_for_stable_series(self.stable_seconds, now, exclude=held))
        return made

    def _decide(self, study_uid: str, index: int, members: list[_Series], now: float) -> list[int] | None:
        """The jobs of one study's series under one study-level route, or None while the study is incomplete."""
        route = self.routes[index]
        quiet = max(m.last_at for m in members) <= now - self.stable_seconds
        if not quiet:
            return None
        study = [
            (r.modality, self._description(r.series_uid, r.sample), r.first_at)
            for r in self.state.study_series(study_uid)
        ]
        missing = [str(m) for m in route.required if not any(m.matches(mod, desc) for mod, desc, _ in study)]
        waited = now - min(first for _, _, first in study)
        uids = [m.uid for m in members]
        group = f"{study_uid}/{index}/{now:.3f}"
        with bound_contextvars(study_uid=study_uid):
            if not missing:
                jobs = self.state.make_study_jobs(uids, group)
                log.info("study.complete", route=index, series=len(uids), jobs=jobs, waited_seconds=round(waited, 1))
                return jobs
            if waited < route.study_timeout:
                return None
            if route.on_timeout == "discard":
                reason = (f"study incomplete after routes[{index}].study_timeout = {route.study_timeout:g} s:"
                          f" missing {', '.join(missing)}; discarded (on_timeout = \"discard\")")
                jobs = self.state.make_study_jobs(uids, group, skip_reason=reason)
                log.warning("study.discarded", route=index, series=len(uids), missing=missing, jobs=jobs,
                            waited_seconds=round(waited, 1))
                return jobs
            jobs = self.state.make_study_jobs(uids, group)
            log.warning("study.timeout", route=index, action="process", series=len(uids), missing=missing,
                        jobs=jobs, waited_seconds=round(waited, 1))
            return jobs
