"""Admin operations shared by the CLI and the web console: reprocess, purge, release and reject held jobs.

Why a module: the console's reprocess button must take the same code path as `enhance-gateway reprocess`
(same checks, same C-GET of purged originals, same jobs), so neither keeps its own copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pydicom
from structlog.contextvars import bound_contextvars

from enhancers.registry import names
from gateway import logs
from gateway.dimse.retrieve import move_series, retrieve_series
from gateway.dimse.scu import Peer
from gateway.enhance.routing import choose, modality_mismatch, mr_strength_risk
from gateway.errors import GatewayError
from gateway.settings import STRENGTH_RANGE, Settings
from gateway.storage.local_spool import LocalSpool
from gateway.storage.state import Instance, Job, StateStore

log = logs.get("gateway.admin")


@dataclass(frozen=True)
class Reprocessed:
    series_uid: str
    job_id: int
    instances: int
    retrieved: int
    source: str | None
    #: why this request may harm the images (an MR model above strength 1), for the admin; None when not
    warning: str | None = None


def reprocess(
    settings: Settings,
    state: StateStore,
    study_uid: str,
    *,
    series_uid: str | None = None,
    enhancer: str | None = None,
    destination: str | None = None,
    strength: float | None = None,
) -> list[Reprocessed]:
    """Queue a new job per series of the study (or the one series), retrieving purged originals first.

    A new enhancer (or version) gives a new derived series; the same one gives the same UIDs (idempotent).
    An enhancer not made for a series' modality is refused (GatewayError naming the series and the fix)
    before anything is retrieved or queued.
    """
    if enhancer and enhancer not in names():
        raise GatewayError(f"enhancer {enhancer!r} is not registered; known: {', '.join(names())}")
    if strength is not None and not STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]:
        raise GatewayError(
            f"--strength {strength:g}: strength is a number from {STRENGTH_RANGE[0]:g} to {STRENGTH_RANGE[1]:g}"
            " (0 = leave the image as received, 1 = remove the estimated noise, 2 = twice as strong)"
        )
    if destination and destination not in {d.name for d in settings.destinations}:
        raise GatewayError(f"destination {destination!r} is not configured")
    rows = state.series_instances(study_uid, series_uid)
    if not rows:
        raise GatewayError(
            f"the gateway has received no instance of study {study_uid}"
            + (f" series {series_uid}" if series_uid else "")
        )
    by_series: dict[str, list[Instance]] = {}
    for row in rows:
        by_series.setdefault(row.series_uid, []).append(row)
    if enhancer:  # refuse before queueing anything: a job that can never run would only fail in the worker
        wrong = {
            series: reason
            for series, members in by_series.items()
            if (reason := modality_mismatch(enhancer, str(members[0].modality))) is not None
        }
        if wrong:
            series, reason = next(iter(wrong.items()))
            others = f" (and {len(wrong) - 1} more series)" if len(wrong) > 1 else ""
            fits = [s for s in by_series if s not in wrong]
            raise GatewayError(
                f"series {series}{others}: {reason}"
                + (f"; --series {fits[0]} would fit" if fits and not series_uid else "")
                + "; nothing was queued"
            )
    spool = LocalSpool(settings.spool_dir, min_free_mb=settings.min_free_mb)
    done: list[Reprocessed] = []
    for series, members in by_series.items():
        missing = [r for r in members if r.purged_at is not None or not spool.exists(r.key)]
        got, source = 0, None
        if missing:
            if not settings.sources:
                raise GatewayError(
                    f"{len(missing)} originals of series {series} were purged and no [[sources]] PACS is"
                    " configured to retrieve them from"
                )
            src = settings.sources[0]
            peer = Peer.for_destination(src, settings.ae_title)
            if src.type == "dicomweb":  # WADO-RS, stored through the STOW-RS receiver's checks and durable path
                from gateway.deliver.dicomweb import wado_series
                from gateway.receive.stow import InstanceSink

                got = wado_series(src, InstanceSink(state, spool), study_uid, series,
                                  [r.sop_uid for r in missing])
            elif src.retrieve == "move":  # the source sends them to the running gateway's SCP
                got = move_series(peer, state, study_uid, series, [r.sop_uid for r in missing],
                                  settings.ae_title)
            else:
                got = retrieve_series(peer, state, spool, study_uid, series,
                                      [r.sop_class_uid for r in missing])
            source = src.name
        job_id = state.make_reprocess_job(
            series, enhancer=enhancer, only_destination=destination, strength=strength
        )
        risk = None if strength is None else _strength_risk(settings, spool, members[0], enhancer, strength)
        done.append(Reprocessed(series, job_id, len(members), got, source, risk))
    return done


def _strength_risk(
    settings: Settings, spool: LocalSpool, first: Instance, enhancer: str | None, strength: float
) -> str | None:
    """`mr_strength_risk` for the enhancer the worker will run on this series: the one asked for, else the
    route's, chosen as the worker chooses it (modality and Series Description, read from one stored header)."""
    modality = str(first.modality or "")
    if enhancer is None:
        description = ""
        try:  # the job is queued already: a header that cannot be read only makes the warning less exact
            with spool.open(first.key) as f:
                header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesDescription"])
            description = str(header.get("SeriesDescription", ""))
        except (OSError, pydicom.errors.InvalidDicomError):
            pass
        enhancer = choose(settings.routes, modality, description)[0]
    return mr_strength_risk(enhancer, modality, strength)


@dataclass(frozen=True)
class Purged:
    originals: int
    bytes: int
    jobs: int


def purge(settings: Settings, state: StateStore, older_than_days: float, *, dry_run: bool) -> Purged:
    """Remove originals and outputs of finished work older than the retention; never an unfinished job's."""
    instances, jobs = state.purgeable(time.time() - older_than_days * 86400)
    if not dry_run:
        spool = LocalSpool(settings.spool_dir)
        for row in instances:
            spool.delete(row.key)
        state.mark_purged([r.sop_uid for r in instances])
        for job_id in jobs:
            spool.clear_outputs(job_id)
    return Purged(len(instances), sum(r.size for r in instances), len(jobs))


def release(settings: Settings, state: StateStore, job_id: int) -> Job:
    """Deliver a held job as it is (its QA verdict and marker stay in the files); logs `job.released`."""
    job = state.release(job_id)
    with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
        log.info("job.released", qa_verdict=job.qa_verdict, qa_reasons=job.qa_reasons,
                 destinations=[d.destination for d in state.deliveries(job.id)])
    return job


def reject(settings: Settings, state: StateStore, job_id: int) -> Job:
    """Drop a held job's outputs (the originals are never touched); the job ends rejected. Logs `job.rejected`."""
    job = state.reject(job_id)
    LocalSpool(settings.spool_dir).clear_outputs(job.id)
    with bound_contextvars(job_id=job.id, study_uid=job.study_uid, series_uid=job.series_uid):
        log.info("job.rejected", qa_verdict=job.qa_verdict, qa_reasons=job.qa_reasons)
    return job
