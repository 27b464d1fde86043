"""The console's pages: Jinja2 templates (gateway/web/templates/) with autoescape, and what they are given.

Why a template engine with autoescape: every value from a file, the state store or the user is escaped by
default, so a Series Description holding `<script>` renders as text whatever page shows it; only what this
module marks `Markup` (a badge or a UID span it built from escaped parts) is inserted as HTML. Patient and visit
fields appear only on the result page of an upload and on a job page (where a user must confirm whose images
these are), folded away in a <details> block, and never on the jobs list.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from dicom_utils import private_tags
from dicom_utils.enhancement import Task
from enhancers.registry import TASKS, EnhancerInfo, default_enhancer
from gateway import __version__
from gateway.storage.state import Delivery, Job, JobState
from gateway.web import imaging
from gateway.web.jobs import JobView
from gateway.web.uploads import IMAGE_MODALITIES, Upload, patient_fields

#: Job states in which the gateway is still working on the job (the job page refreshes itself).
RUNNING_STATES = (JobState.QUEUED, JobState.ENHANCING, JobState.ENHANCED, JobState.SENDING, JobState.FAILED)


def when(ts: float | None) -> str:
    """Local date and time of a timestamp, '-' when unset."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def seconds(value: float | None) -> str:
    """A duration for people: 0.42 s, 12.3 s, 4.5 min, 2.1 h."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def millis(value: object) -> str:
    """A processing time in milliseconds as a time: 850 ms, 1.20 s, 2.5 min; '-' when absent.

    Why its own formatter: durations once went through the PSNR formatter, whose 999 (the private tag's stand-in
    for an infinite PSNR) turned every processing time of a second or more into "∞ (identical)".
    """
    try:
        ms = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(ms) or ms < 0:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else seconds(ms / 1000.0)


def number(value: object, digits: int = 2, unit: str = "") -> str:
    """A PSNR or SSIM for display; '-' when absent, '∞ (identical)' for an infinite PSNR (identical images)."""
    if value is None or value == "":
        return "-"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(x) or x >= private_tags.PSNR_INFINITE_AS:
        return "∞ (identical)"
    return f"{x:.{digits}f}{unit}"


_ENV = Environment(loader=PackageLoader("gateway.web"), autoescape=select_autoescape(), trim_blocks=False)
_ENV.filters.update(when=when, seconds=seconds, millis=millis, metric=number)
_ENV.globals.update(version=__version__)


def render(template: str, **context: Any) -> str:
    """One page: `template` from gateway/web/templates/ with `context` (escaped unless it is `Markup`)."""
    return _ENV.get_template(template).render(**context)


@dataclass(frozen=True)
class Who:
    """The logged-in user a page is for: shown in the header (with Log out), and which actions it offers."""

    name: str
    role: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _page(template: str, title: str, *, active: str, page: str, listen: str, who: Who | None, **kw: Any) -> str:
    return render(template, title=title, active=active, page=page, listen=listen, who=who, **kw)


def error_page(
    title: str, message: str, *, listen: str, back: str = "/", back_label: str = "Back", who: Who | None = None
) -> str:
    """A page that says what went wrong and where to go from here."""
    return _page("error.html", title, active="", page="error", listen=listen, who=who, message=message, back=back,
                 back_label=back_label)


#: (label, DICOM Modality) of the modality groups the console recommends an enhancer for.
_RECOMMEND_FOR: tuple[tuple[str, str], ...] = (("CT", "CT"), ("MR", "MR"), ("X-ray", "CR"))


def enhancer_options(infos: Sequence[EnhancerInfo], *, quality: bool = False) -> Markup:
    """The enhancer <select>'s options: recommended per modality first, then the other variant of each
    recommended model, the classical denoisers, super-resolution, display filters (they change intensities:
    never offered as denoising) and the other trained models, kept for comparison.

    `quality`: whether this gateway gives unrouted series the quality variants (`routing.wants_quality`);
    "automatic" and "Recommended" then name what the gateway itself would run, and the fast variants are the
    alternatives (and the other way round). Each option is one plain line (the enhancer's `summary`), not the
    architecture's description.
    """
    recommended: dict[str, list[str]] = {}
    alternative: dict[str, list[str]] = {}
    for label, modality in _RECOMMEND_FOR:
        for task in TASKS:
            chosen = default_enhancer(modality, task, quality=quality)
            recommended.setdefault(chosen, []).append(f"{label} {task}")
            other = default_enhancer(modality, task, quality=not quality)
            if other != chosen:
                speed = "faster" if quality else "slower, higher quality"
                alternative.setdefault(other, []).append(f"{label} {task}, {speed}")

    def option(info: EnhancerInfo, lead: str = "") -> dict[str, str]:
        risk = (
            " HALLUCINATION RISK: trained adversarially, it may show structure that is not in the image; never a"
            " default, for comparison only."
            if info.hallucination_risk
            else ""
        )
        return {"name": info.name, "task": info.task, "lead": lead, "text": info.summary or info.description,
                "risk": risk}

    groups: dict[str, list[dict[str, str]]] = {
        "Recommended": [],
        "Other variants of the recommended models": [],
        "Other denoisers": [],
        "Super-resolution (2x)": [],
        "Super-resolution (4x)": [],
        "Deblurring": [],
        "Display filters (change intensities; not denoising)": [],
        "Other trained models (kept for comparison)": [],
    }
    sr: dict[str, str] = {
        Task.SR2X: "Super-resolution (2x)", Task.SR4X: "Super-resolution (4x)", Task.DEBLUR: "Deblurring",
    }
    for info in infos:
        if info.name in recommended:
            groups["Recommended"].append(option(info, f"[{', '.join(recommended[info.name])}] "))
        elif info.name in alternative:
            groups["Other variants of the recommended models"].append(
                option(info, f"[{', '.join(alternative[info.name])}] ")
            )
        elif info.display_filter:
            groups["Display filters (change intensities; not denoising)"].append(option(info))
        elif info.task in sr:
            groups[sr[info.task]].append(option(info))
        elif info.kind == "classical":
            groups["Other denoisers"].append(option(info))
        else:
            groups["Other trained models (kept for comparison)"].append(option(info))
    variant = "highest-quality" if quality else "fast"
    return Markup(render("enhancer_options.html", groups=[(k, v) for k, v in groups.items() if v],
                         automatic=f"{variant} variants, as this gateway runs unrouted series"))


def upload_page(infos: Sequence[EnhancerInfo], *, csrf: str, max_mb: int, listen: str, who: Who | None = None,
                max_megapixels: float = 30.0, quality: bool = False) -> str:
    """The form: a file, the task, the enhancer (or the gateway's default), what a PNG/JPEG is like."""
    return _page("upload.html", "Try an enhancer", active="upload", page="upload", listen=listen, who=who, csrf=csrf,
                 max_mb=max_mb, max_megapixels=max_megapixels, options=enhancer_options(infos, quality=quality),
                 image_modalities=IMAGE_MODALITIES)


def progress_page(upload: Upload, *, listen: str, who: Who | None = None) -> str:
    """Shown when an upload's page is opened before it is done (refreshes itself, with or without script)."""
    return _page("progress.html", "Enhancing", active="upload", page="progress", listen=listen, who=who,
                 upload=upload, stage=upload.status()["stage"])


def _uid(value: object) -> Markup:
    return Markup('<span class="uid">{}</span>').format(value if value not in (None, "") else "-")


def _badge(state: str | None) -> Markup:
    return Markup('<span class="badge {0}">{0}</span>').format(state or "-")


def _tag_rows(block: Mapping[str, object]) -> list[tuple[str, str, str, str]]:
    """(tag, VR, name, value shown) of every element of the private block, in tag order."""
    rows = []
    for offset, (key, vr) in private_tags.ELEMENTS.items():
        value = block.get(key)
        if value in (None, ""):
            shown = "-"
        elif key == "processing_ms":
            shown = millis(value)
        elif key in ("psnr", "ssim", "input_psnr", "input_ssim"):
            shown = number(value, 4)
        else:
            shown = str(value)
        rows.append((f"({private_tags.PRIVATE_GROUP:04X},10{offset:02X})", vr, private_tags.NAMES[key], shown))
    return rows


def result_page(upload: Upload, *, listen: str, who: Who | None = None) -> str:
    """The side-by-side viewer with metrics, window/level and zoom controls, downloads and details.

    A PNG/JPEG upload has no derived DICOM object, so its page speaks of measurements, not of private tags.
    """
    out = upload.outcome
    assert out is not None and upload.values is not None
    block = out.block
    dicom = out.derived is not None
    basis = "enhanced vs uploaded image (fidelity)" if block.get("metric_basis") == "INPUT" else "degrade-restore"
    lo, hi = float(np.min(upload.values)), float(np.max(upload.values))
    span = max(hi - lo, 1.0)
    center, width = upload.window
    presets: list[dict[str, object]] = [
        {"value": "file", "c": f"{center:g}", "w": f"{width:g}", "label": f"{upload.window_source} ({center:g} / {width:g})"}
    ]
    ac, aw = imaging.auto_window(upload.values[0])
    presets.append({"value": "auto", "c": f"{ac:.6g}", "w": f"{aw:.6g}", "label": f"auto, 0.5–99.5 % ({ac:.6g} / {aw:.6g})"})
    presets.append({"value": "full", "c": f"{(lo + hi) / 2:.6g}", "w": f"{span:.6g}", "label": "full range"})
    if upload.modality == "CT":
        presets += [{"value": name, "c": f"{c:g}", "w": f"{w:g}", "label": f"CT {name} ({c:g} / {w:g})"}
                    for name, (c, w) in imaging.CT_PRESETS.items()]
    presets.append({"value": "custom", "c": None, "w": None, "label": "custom"})
    limit = Markup('enhanced − original, ±<span id="diff-limit">{}</span> = white/black').format(
        f"{(upload.diff_limits or [0.0])[0]:.3g}")
    panes = [
        ("original", "Original", f"{upload.values.shape[2]}×{upload.values.shape[1]}"),
        ("enhanced", "Enhanced", f"{out.enhanced.shape[2]}×{out.enhanced.shape[1]}"),
        ("difference", "Difference", limit),
    ]
    derived_rows: list[tuple[str, object]] = []
    if out.derived is not None:
        d = out.derived
        derived_rows = [
            ("SOP class", d.SOPClassUID.name),
            ("Image Type", "\\".join(str(v) for v in d.get("ImageType", []))),
            ("Series Description", d.get("SeriesDescription", "")),
            ("Series Number", d.get("SeriesNumber", "")),
            ("Derivation", d.get("DerivationDescription", "(per frame, functional groups)")),
            ("Series Instance UID", _uid(d.SeriesInstanceUID)),
            ("SOP Instance UID", _uid(d.SOPInstanceUID)),
            ("Transfer syntax", d.file_meta.TransferSyntaxUID.name),
        ]
    measures = [
        ("PSNR vs the uploaded image", number(block.get("psnr"), 2, " dB")),
        ("SSIM vs the uploaded image", number(block.get("ssim"), 4)),
        ("QA verdict", block.get("qa_flag") or "-"),
        ("QA reasons", block.get("qa_reasons") or "-"),
        ("Noise sigma (image units)", number(block.get("noise_sigma"), 3)),
        ("Processing time per frame", millis(block.get("processing_ms"))),
        ("Enhancer", f"{block.get('enhancer')} {block.get('version')}"),
    ]
    return _page(
        "result.html", "Result", active="upload", page="result", listen=listen, who=who, upload=upload, out=out,
        block=block, dicom=dicom, basis=basis, took=(upload.finished or 0) - (upload.started or 0),
        modality_label=IMAGE_MODALITIES.get(upload.modality, upload.modality), presets=presets, center=center,
        width=width, lo=lo, hi=hi, span=span, frames=int(upload.values.shape[0]), panes=panes,
        base=f"/uploads/{quote(upload.token)}/", limits=json.dumps([round(x, 6) for x in upload.diff_limits]),
        creator=private_tags.PRIVATE_CREATOR, tags=_tag_rows(block), measures=measures,
        summary_rows=[(k.replace("_", " "), v) for k, v in upload.summary.items() if v not in (None, "")],
        derived_rows=derived_rows, patient=patient_fields(upload.source),
    )


def jobs_page(
    counts: dict[str, int],
    pending: Sequence[Any],
    jobs: Sequence[Job],
    deliveries: dict[int, list[Delivery]],
    *,
    state: str | None,
    listen: str,
    who: Who | None = None,
) -> str:
    """Recent jobs with state, timings, destination results and errors; series still arriving on top.

    `pending`: the state store's pending series (read by attribute or key: the template does either)."""
    title = f"Jobs: {state}" if state else "Jobs"
    return _page("jobs.html", title, active="jobs", page="jobs", listen=listen, who=who, counts=counts,
                 pending=pending, jobs=jobs, deliveries=deliveries, state=state, now=time.time())


def _job_facts(j: Job, now: float) -> list[tuple[str, object]]:
    derived = "-" if j.derived_count is None else j.derived_count
    facts: list[tuple[str, object]] = [
        ("State", _badge(j.state) + (f" (retry stage: {j.failed_stage})" if j.failed_stage else "")),
        ("Modality", j.modality),
        ("Instances received / derived", f"{j.instance_count} / {derived}"),
        ("Enhancer", f"{j.enhancer or '-'} {j.enhancer_version or ''}"),
        ("QA verdict", Markup('<span class="badge {0}" id="qa-verdict">{0}</span> → {1}').format(j.qa_verdict, j.qa_action)
         if j.qa_verdict else "-"),
        ("Noise sigma / strength", f"{number(j.noise_sigma, 2)} / {number(j.strength, 2)}"),
        ("Mean PSNR / SSIM vs input", f"{number(j.psnr, 2, ' dB')} / {number(j.ssim, 4)}"),
        ("DEGRADE_RESTORE PSNR / SSIM", f"{number(j.dr_psnr, 2, ' dB')} / {number(j.dr_ssim, 4)}"),
        ("Created", when(j.created_at)),
        ("Last update", when(j.updated_at)),
        ("Finished", when(j.finished_at)),
        ("Enhancement time", seconds(j.enhance_seconds)),
        ("Total time", seconds((j.finished_at or now) - j.created_at)),
        ("Attempts", str(j.attempts) + (f", next try {when(j.next_try_at)}" if j.state == JobState.FAILED else "")),
        ("Study Instance UID", _uid(j.study_uid)),
        ("Series Instance UID", _uid(j.series_uid)),
        ("Derived Series UID", _uid(j.derived_series_uid)),
    ]
    if j.error:
        facts.append(("Error", Markup('<span class="error-text" id="job-error">{}</span>').format(j.error)))
    if j.skip_reason:
        facts.append(("Skip reason", j.skip_reason))
    if j.qa_reasons and j.qa_verdict in ("WARN", "FAIL"):
        facts.append(("QA reasons", Markup('<span id="qa-reasons">{}</span>').format(j.qa_reasons)))
    return facts


def viewer_links(templates: Iterable[tuple[str, str]], study_uid: str) -> dict[str, str]:
    """Destination name -> its PACS viewer's URL for the study (`viewer_url` with `{study}` filled in, quoted)."""
    return {name: url.replace("{study}", quote(study_uid, safe="")) for name, url in templates if url}


def job_page(
    view: JobView, *, csrf: str, flash: str | None, listen: str, enhancer_names: Sequence[str] = (),
    who: Who | None = None, viewers: Iterable[tuple[str, str]] = (),
) -> str:
    """One job: facts and timings, deliveries (with a link to the study in each PACS viewer configured), every
    slice in a viewer (values, ROI, flicker), admin actions; refreshes itself while the gateway works on it.

    `viewers`: (destination name, `viewer_url` template) pairs."""
    j = view.job
    facts = _job_facts(j, time.time())
    if view.header is not None:
        facts.insert(2, ("Series Description", str(view.header.get("SeriesDescription", "") or "-")))
    return _page(
        "job.html", f"Job {j.id}", active="jobs", page="job", listen=listen, who=who, view=view, j=j, csrf=csrf,
        flash=flash, enhancer_names=enhancer_names, admin=who is None or who.admin, fact_rows=facts,
        running=j.state in RUNNING_STATES, refresh_key=f"{j.state}/{j.updated_at}",
        viewer_links=viewer_links(viewers, j.study_uid), delivered_to={d.destination for d in view.deliveries},
        patient=patient_fields(view.header),
    )


def login_page(*, csrf: str, listen: str, has_users: bool, message: str = "", name: str = "",
               next_url: str = "/") -> str:
    """The login form; with no user yet, the command that creates the first admin instead."""
    return _page("login.html", "Log in", active="", page="login", listen=listen, who=None, csrf=csrf,
                 has_users=has_users, message=message, name=name, next_url=next_url)


__all__ = ["Who", "error_page", "job_page", "jobs_page", "login_page", "millis", "number", "progress_page",
           "render", "result_page", "upload_page", "viewer_links"]
