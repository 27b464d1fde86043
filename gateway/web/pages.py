"""HTML of the console's pages, built with escaped f-strings.

Why no template engine: a handful of pages do not justify a dependency, and one rule is easy to check by
reading: every value that comes from a file, the state store or the user goes through `esc()`. Patient and
visit fields appear only on the result page of an upload and on a job page (where a user must confirm whose
images these are), folded away in a <details> block, and never on the jobs list.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

import numpy as np

from dicom_utils import private_tags
from enhancers.registry import TASKS, EnhancerInfo, default_enhancer
from gateway import __version__
from gateway.storage.state import JOB_STATES, Delivery, Job
from gateway.web import imaging
from gateway.web.jobs import JobView
from gateway.web.uploads import IMAGE_MODALITIES, Upload, patient_fields


def esc(value: object) -> str:
    """Escape any value for HTML text and attribute context."""
    return escape("" if value is None else str(value), quote=True)


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


def number(value: object, digits: int = 2, unit: str = "") -> str:
    """A metric for display; '-' when absent, '∞' for an infinite PSNR (identical images)."""
    if value is None or value == "":
        return "-"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return esc(value)
    if math.isinf(x) or x >= private_tags.PSNR_INFINITE_AS:
        return "∞ (identical)"
    return f"{x:.{digits}f}{unit}"


@dataclass(frozen=True)
class Who:
    """The logged-in user a page is for: shown in the header (with Log out), and which actions it offers."""

    name: str
    role: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _user_bar(who: Who | None) -> str:
    if who is None:
        return ""
    return f"""<form method="post" action="/logout" class="userbar"><input type="hidden" name="csrf"
value="{esc(who.csrf)}"><span id="user">{esc(who.name)} <span class="muted">({esc(who.role)})</span></span>
<button type="submit" id="logout" class="secondary">Log out</button></form>"""


def layout(title: str, body: str, *, active: str, page: str, listen: str, who: Who | None = None) -> str:
    """The frame of every page: header with navigation and the user (when logged in), content, footer."""
    links = (("upload", "/", "Try an enhancer"), ("jobs", "/jobs", "Jobs")) if who is not None else ()
    nav = "".join(
        f'<a href="{href}" class="{"active" if key == active else ""}">{label}</a>'
        for key, href, label in links
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{esc(title)} · enhance-gateway</title>
<link rel="stylesheet" href="/static/console.css">
</head><body data-page="{esc(page)}">
<header><span class="brand">enhance-gateway console</span><nav>{nav}</nav>{_user_bar(who)}</header>
<main>{body}</main>
<footer>enhance-gateway {esc(__version__)} · console on {esc(listen)} · images uploaded here stay in memory,
never on disk</footer>
<script src="/static/console.js"></script>
</body></html>
"""


def error_page(
    title: str, message: str, *, listen: str, back: str = "/", back_label: str = "Back", who: Who | None = None
) -> str:
    """A page that says what went wrong and where to go from here."""
    body = f"""<h1>{esc(title)}</h1>
<div class="alert error" role="alert" id="error-message">{esc(message)}</div>
<p><a class="button secondary" href="{esc(back)}">{esc(back_label)}</a></p>"""
    return layout(title, body, active="", page="error", listen=listen, who=who)


#: (label, DICOM Modality) of the modality groups the console recommends an enhancer for.
_RECOMMEND_FOR: tuple[tuple[str, str], ...] = (("CT", "CT"), ("MR", "MR"), ("X-ray", "CR"))


def enhancer_options(infos: Sequence[EnhancerInfo]) -> str:
    """The enhancer <select>'s groups: recommended per modality first, then the classical denoisers,
    super-resolution, display filters (they change intensities: never offered as denoising) and the other
    trained models, kept for comparison.

    Each option is one plain line (the enhancer's `summary`), not the architecture's description.
    """
    recommended: dict[str, list[str]] = {}
    for label, modality in _RECOMMEND_FOR:
        for task in TASKS:
            recommended.setdefault(default_enhancer(modality, task), []).append(f"{label} {task}")

    def option(info: EnhancerInfo, lead: str = "") -> str:
        risk = (
            " HALLUCINATION RISK: trained adversarially, it may show structure that is not in the image; never a"
            " default, for comparison only."
            if info.hallucination_risk
            else ""
        )
        text = info.summary or info.description
        return (
            f'<option value="{esc(info.name)}" data-task="{esc(info.task)}">{esc(lead)}{esc(info.name)}: '
            f"{esc(text)}{risk}</option>"
        )

    groups: dict[str, list[str]] = {
        "Recommended": [],
        "Other denoisers": [],
        "Super-resolution (2x)": [],
        "Super-resolution (4x)": [],
        "Deblurring": [],
        "Display filters (change intensities; not denoising)": [],
        "Other trained models (kept for comparison)": [],
    }
    for info in infos:
        if info.name in recommended:
            groups["Recommended"].append(option(info, f"[{', '.join(recommended[info.name])}] "))
        elif info.display_filter:
            groups["Display filters (change intensities; not denoising)"].append(option(info))
        elif info.task in ("sr2x", "sr4x", "deblur"):
            group = {"sr2x": "Super-resolution (2x)", "sr4x": "Super-resolution (4x)", "deblur": "Deblurring"}
            groups[group[info.task]].append(option(info))
        elif info.kind == "classical":
            groups["Other denoisers"].append(option(info))
        else:
            groups["Other trained models (kept for comparison)"].append(option(info))
    auto = '<option value="auto" selected>automatic: the recommended enhancer for the image\'s modality</option>'
    return auto + "".join(
        f'<optgroup label="{esc(label)}">{"".join(opts)}</optgroup>' for label, opts in groups.items() if opts
    )


def upload_page(infos: Sequence[EnhancerInfo], *, csrf: str, max_mb: int, listen: str, who: Who | None = None,
                max_megapixels: float = 30.0) -> str:
    """The form: a file, the task, the enhancer (or the gateway's default), what a PNG/JPEG is like."""
    options = [enhancer_options(infos)]
    modalities = "".join(f'<option value="{k}">{esc(v)}</option>' for k, v in IMAGE_MODALITIES.items())
    body = f"""<h1>Try an enhancer on one image</h1>
<p class="muted">Upload a DICOM image (CT, MR, CR, DX, MG) to see what the gateway would send to PACS: the original,
the enhanced image and their difference, the PSNR/SSIM written in the private tags, and the derived DICOM object.
A PNG or JPEG gives a quick look (no DICOM object). At most {max_mb} MB and {max_megapixels:g} megapixels
(super-resolution 2x: a quarter of that, 4x: a sixteenth).</p>
<div class="card">
<form class="upload" method="post" action="/upload" enctype="multipart/form-data"
      data-max-bytes="{max_mb << 20}">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<label for="file">Image file</label>
<input type="file" id="file" name="file" required
       accept=".dcm,.dicom,.ima,application/dicom,image/png,image/jpeg">
<label for="task">Task</label>
<select id="task" name="task"><option value="denoise" selected>denoise</option>
<option value="sr2x">super-resolution 2x (sr2x)</option>
<option value="sr4x">super-resolution 4x (sr4x): a low-resolution radiograph in, 4x the matrix out</option>
<option value="deblur">deblur (same matrix)</option></select>
<label for="enhancer">Enhancer</label>
<select id="enhancer" name="enhancer">{"".join(options)}</select>
<label for="image_modality">A PNG/JPEG is like</label>
<select id="image_modality" name="image_modality">{modalities}</select>
<span></span><span><button type="submit" id="submit">Enhance</button></span>
</form>
</div>
<div id="progress" class="progress hidden" aria-live="polite"><div class="bar"><div></div></div>
<div class="stage muted"></div></div>
<div id="upload-error" class="alert error hidden" role="alert"></div>
"""
    return layout("Try an enhancer", body, active="upload", page="upload", listen=listen, who=who)


def progress_page(upload: Upload, *, listen: str, who: Who | None = None) -> str:
    """Shown when an upload's page is opened before it is done (refreshes itself, with or without script)."""
    st = upload.status()
    body = f"""<noscript><meta http-equiv="refresh" content="2"></noscript>
<h1>Enhancing…</h1>
<div id="progress" class="progress" data-status="/api/uploads/{esc(upload.token)}" aria-live="polite">
<div class="bar busy"><div></div></div><div class="stage muted">{esc(st["stage"])}</div></div>"""
    return layout("Enhancing", body, active="upload", page="progress", listen=listen, who=who)


def _facts(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; values are already-escaped HTML."""
    return '<table class="facts">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _patient_block(fields: list[tuple[str, str]], where: str) -> str:
    if not fields:
        return ""
    rows = _facts((label, esc(value)) for label, value in fields)
    return f"""<details class="phi"><summary>Patient fields ({esc(where)}): shown only on request</summary>
{rows}</details>"""


def _block_table(block: dict[str, object]) -> str:
    rows = []
    for offset, (key, vr) in private_tags.ELEMENTS.items():
        value = block.get(key)
        shown = number(value, 4) if key in ("psnr", "ssim", "input_psnr", "input_ssim") else esc(value)
        if key == "processing_ms" and value is not None:
            shown = number(value, 1)
        rows.append(
            f"<tr><td><code>({private_tags.PRIVATE_GROUP:04X},10{offset:02X})</code></td><td>{vr}</td>"
            f"<td>{esc(private_tags.NAMES[key])}</td><td>{shown if value not in (None, '') else '-'}</td></tr>"
        )
    return (
        f'<table><tr><th>tag</th><th>VR</th><th>name (creator "{esc(private_tags.PRIVATE_CREATOR)}")</th>'
        f'<th>value</th></tr>{"".join(rows)}</table>'
    )


def result_page(upload: Upload, *, listen: str, who: Who | None = None) -> str:
    """The side-by-side viewer with metrics, window/level and zoom controls, downloads and details."""
    out = upload.outcome
    assert out is not None and upload.values is not None
    token = quote(upload.token)
    base = f"/uploads/{token}/"
    block = out.block
    basis = "enhanced vs uploaded image (fidelity)" if block.get("metric_basis") == "INPUT" else "degrade-restore"
    cards = [
        ("PSNR", number(block.get("psnr"), 2, " dB"), "metric-psnr"),
        ("SSIM", number(block.get("ssim"), 4), "metric-ssim"),
        ("QA flag", f'<span class="badge {esc(block.get("qa_flag"))}">{esc(block.get("qa_flag"))}</span>', "metric-qa"),
        ("processing", number(block.get("processing_ms"), 1, " ms"), "metric-ms"),
    ]
    metrics = "".join(
        f'<div class="metric" id="{mid}"><div class="value">{value}</div><div class="label">{esc(label)}</div></div>'
        for label, value, mid in cards
    )
    lo, hi = float(np.min(upload.values)), float(np.max(upload.values))
    span = max(hi - lo, 1.0)
    center, width = upload.window
    presets = [(f'<option value="file" data-c="{center:g}" data-w="{width:g}" selected>'
               f"{esc(upload.window_source)} ({center:g} / {width:g})</option>")]
    ac, aw = imaging.auto_window(upload.values[0])
    presets.append(f'<option value="auto" data-c="{ac:.6g}" data-w="{aw:.6g}">auto, 0.5–99.5 % ({ac:.6g} / {aw:.6g})</option>')
    presets.append(f'<option value="full" data-c="{(lo + hi) / 2:.6g}" data-w="{span:.6g}">full range</option>')
    if upload.modality == "CT":
        presets += [
            f'<option value="{esc(name)}" data-c="{c:g}" data-w="{w:g}">CT {esc(name)} ({c:g} / {w:g})</option>'
            for name, (c, w) in imaging.CT_PRESETS.items()
        ]
    presets.append('<option value="custom">custom</option>')
    frames = int(upload.values.shape[0])
    frame_control = ""
    if frames > 1:
        frame_control = f"""<div class="group"><label for="frame">Frame</label>
<input type="range" id="frame" min="0" max="{frames - 1}" value="0"> <span id="frame-label">1</span>/{frames}</div>"""
    kinds = (("original", "Original"), ("enhanced", "Enhanced"), ("difference", "Difference"))
    size_note = {
        "original": f"{upload.values.shape[2]}×{upload.values.shape[1]}",
        "enhanced": f"{out.enhanced.shape[2]}×{out.enhanced.shape[1]}",
        "difference": 'enhanced − original, ±<span id="diff-limit">'
        f"{(upload.diff_limits or [0.0])[0]:.3g}</span> = white/black",
    }
    panes = "".join(
        f"""<div class="pane"><h3><span>{esc(title)}</span><span class="muted">{size_note[kind]}</span></h3>
<div class="viewport" data-kind="{kind}"><img id="view-{kind}" data-kind="{kind}" alt="{esc(title)}"></div></div>"""
        for kind, title in kinds
    )
    downloads = [(f'<a class="button secondary" id="download-comparison" href="{base}comparison.png" download>'
                 "Download comparison PNG</a>")]
    if out.derived_bytes is not None:
        downloads.insert(0, f'<a class="button" id="download-dicom" href="{base}enhanced.dcm" download>'
                            "Download enhanced DICOM</a>")
    else:
        downloads.insert(0, f'<a class="button" id="download-png" href="{base}enhanced.png" download>'
                            "Download enhanced PNG</a>")
    summary_rows = [(k.replace("_", " "), esc(v)) for k, v in upload.summary.items() if v not in (None, "")]
    derived_rows: list[tuple[str, str]] = []
    if out.derived is not None:
        d = out.derived
        derived_rows = [
            ("SOP class", esc(d.SOPClassUID.name)),
            ("Image Type", esc("\\".join(str(v) for v in d.get("ImageType", [])))),
            ("Series Description", esc(d.get("SeriesDescription", ""))),
            ("Series Number", esc(d.get("SeriesNumber", ""))),
            ("Derivation", esc(d.get("DerivationDescription", "(per frame, functional groups)"))),
            ("Series Instance UID", f'<span class="uid">{esc(d.SeriesInstanceUID)}</span>'),
            ("SOP Instance UID", f'<span class="uid">{esc(d.SOPInstanceUID)}</span>'),
            ("Transfer syntax", esc(d.file_meta.TransferSyntaxUID.name)),
        ]
    note = f'<div class="alert info">{esc(upload.note)}</div>' if upload.note else ""
    if upload.kind == "image":
        note += (f'<div class="alert info">A {esc(upload.summary.get("format"))} image treated as '
                 f"{esc(IMAGE_MODALITIES.get(upload.modality, upload.modality))}: no DICOM object is made "
                 "from it. Upload the DICOM file for the object the gateway would send.</div>")
    took = (upload.finished or 0) - (upload.started or 0)
    body = f"""<h1>{esc(out.info.name)} {esc(out.info.version)} · {esc(out.task)} · {esc(upload.modality)}</h1>
<p class="muted">{esc(out.info.description)} · {esc(out.info.kind)} · ran on {esc(out.device)} ·
done in {seconds(took)} · PSNR/SSIM as written in the private tags: {esc(basis)}</p>
{note}
<div class="metrics">{metrics}</div>
<div class="toolbar card">
<div class="group"><label for="wl-preset">Window</label><select id="wl-preset">{"".join(presets)}</select></div>
<div class="group"><label for="wl-center">Level</label>
<input type="number" id="wl-center" value="{center:g}" step="any">
<input type="range" id="wl-center-range" min="{lo:g}" max="{hi:g}" step="any" value="{center:g}"></div>
<div class="group"><label for="wl-width">Width</label>
<input type="number" id="wl-width" value="{width:g}" min="1" step="any">
<input type="range" id="wl-width-range" min="1" max="{2 * span:g}" step="any" value="{width:g}"></div>
<div class="group"><label><input type="checkbox" id="invert" {"checked" if upload.invert else ""}> invert
{"(MONOCHROME1)" if upload.invert else ""}</label></div>
<div class="group"><button type="button" class="secondary" id="zoom-out" title="zoom out">−</button>
<span id="zoom-level">100 %</span>
<button type="button" class="secondary" id="zoom-in" title="zoom in">+</button>
<button type="button" class="secondary" id="zoom-fit">fit</button></div>
{frame_control}
<span class="muted">wheel: zoom · drag: pan · shift+drag: window/level</span>
</div>
<div class="viewer" data-base="{base}" data-limits="{esc(json.dumps([round(x, 6) for x in upload.diff_limits]))}">
{panes}</div>
<div class="downloads">{"".join(downloads)}<a class="button secondary" href="/">Enhance another image</a></div>
<h2>Private tags written in the derived object</h2>
<div class="card">{_block_table(block)}</div>
<h2>Uploaded file</h2>
<div class="card">{_facts(summary_rows)}</div>
{"<h2>Derived object</h2><div class='card'>" + _facts(derived_rows) + "</div>" if derived_rows else ""}
{_patient_block(patient_fields(upload.source), "from the uploaded file; the derived object keeps them")}
"""
    return layout("Result", body, active="upload", page="result", listen=listen, who=who)


def _badge(state: str) -> str:
    return f'<span class="badge {esc(state)}">{esc(state)}</span>'


def _deliveries(items: Sequence[Delivery], job_error: str | None) -> str:
    """One line per destination; its last error unless the job's error column already says it."""
    if not items:
        return '<span class="muted">-</span>'
    parts = []
    for d in items:
        tries = f" ×{d.attempts}" if d.attempts else ""
        show = d.last_error and d.state != "done" and d.last_error not in (job_error or "")
        err = f'<div class="error-text">{esc((d.last_error or "")[:160])}</div>' if show else ""
        parts.append(f'<div class="dest">{esc(d.destination)}: {_badge(d.state)}{tries}</div>{err}')
    return "".join(parts)


def jobs_page(
    counts: dict[str, int],
    pending: Sequence[dict[str, object]],
    jobs: Sequence[Job],
    deliveries: dict[int, list[Delivery]],
    *,
    state: str | None,
    listen: str,
    who: Who | None = None,
) -> str:
    """Recent jobs with state, timings, destination results and errors; series still arriving on top."""
    now = time.time()
    chips = ['<a href="/jobs"><span class="badge">all</span></a>']
    for name, n in counts.items():
        href = "/jobs" if name == "received" else f"/jobs?state={quote(name)}"
        chips.append(f'<a href="{href}" id="count-{esc(name)}">{_badge(name)} {n}</a>')
    pend_rows = "".join(
        f"<tr><td class='uid'>{esc(p['series_uid'])}</td><td>{esc(p['modality'])}</td>"
        f"<td class='num'>{esc(p['n'])}</td><td>{seconds(now - float(p['last_at']))} ago</td></tr>"  # type: ignore[arg-type]
        for p in pending
    )
    pending_html = (
        "<h2>Series still arriving (received)</h2><div class='card'><table><tr><th>series</th><th>modality</th>"
        f"<th class='num'>instances</th><th>last instance</th></tr>{pend_rows}</table></div>"
        if pending else ""
    )
    rows = []
    for j in jobs:
        total = (j.finished_at or now) - j.created_at
        flagged = j.qa_verdict in ("WARN", "FAIL")
        detail = j.error or j.skip_reason or (f"QA: {j.qa_reasons}" if flagged and j.qa_reasons else "")
        retry = ""
        if j.state == "failed" and j.next_try_at:
            retry = f"<div class='muted'>next try in {seconds(max(0.0, j.next_try_at - now))}</div>"
        enhancer = f"{esc(j.enhancer)} {esc(j.enhancer_version or '')}" if j.enhancer else "-"
        if flagged:
            enhancer += f" <span class='badge {esc(j.qa_verdict)}' id='qa-{j.id}'>QA {esc(j.qa_verdict)}</span>"
        rows.append(
            f"<tr id='job-{j.id}'><td><a href='/jobs/{j.id}'>{j.id}</a></td><td>{_badge(j.state)}{retry}</td>"
            f"<td>{esc(j.modality)}</td><td class='num'>{esc(j.derived_count if j.derived_count is not None else '-')}"
            f"/{j.instance_count}</td><td>{enhancer}</td><td>{when(j.created_at)}</td>"
            f"<td class='num'>{seconds(j.enhance_seconds)}</td><td class='num'>{seconds(total)}</td>"
            f"<td class='num'>{j.attempts}</td><td>{_deliveries(deliveries.get(j.id, []), j.error)}</td>"
            f"<td class='{'error-text' if j.error else 'muted'}'>{esc(detail[:240])}</td></tr>"
        )
    table = (
        "<table id='jobs'><tr><th>job</th><th>state</th><th>mod</th><th class='num'>derived/in</th>"
        "<th>enhancer</th><th>created</th><th class='num'>enhance</th><th class='num'>total</th>"
        "<th class='num'>tries</th><th>destinations</th><th>error / skip reason</th></tr>"
        + "".join(rows) + "</table>"
        if rows else "<p class='muted' id='no-jobs'>No jobs" + (f" in state {esc(state)}" if state else "") +
        " yet. Push a series to the gateway's AE title and it appears here once complete.</p>"
    )
    title = f"Jobs: {state}" if state else "Jobs"
    body = f"""<h1>{esc(title)}</h1>
<div class="counts">{"".join(chips)}</div>
<div class="actions"><label><input type="checkbox" id="auto-refresh"> refresh every 5 s</label>
<span class="muted">as of {when(now)}</span></div>
{pending_html}
<h2>Recent jobs</h2>
<div class="card">{table}</div>"""
    return layout(title, body, active="jobs", page="jobs", listen=listen, who=who)


def job_page(
    view: JobView, *, csrf: str, flash: str | None, listen: str, enhancer_names: Sequence[str] = (),
    who: Who | None = None,
) -> str:
    """One job: facts and timings, deliveries, metrics, before/after thumbnails, admin actions."""
    j = view.job
    now = time.time()
    facts = [
        ("State", _badge(j.state) + (f" (retry stage: {esc(j.failed_stage)})" if j.failed_stage else "")),
        ("Modality", esc(j.modality)),
        ("Instances received / derived", f"{j.instance_count} / {esc(j.derived_count if j.derived_count is not None else '-')}"),
        ("Enhancer", f"{esc(j.enhancer or '-')} {esc(j.enhancer_version or '')}"),
        ("QA verdict", (f'<span class="badge {esc(j.qa_verdict)}" id="qa-verdict">{esc(j.qa_verdict)}</span>'
                        f" → {esc(j.qa_action)}" if j.qa_verdict else "-")),
        ("Noise sigma / strength", f"{number(j.noise_sigma, 2)} / {number(j.strength, 2)}"),
        ("Mean PSNR / SSIM vs input", f"{number(j.psnr, 2, ' dB')} / {number(j.ssim, 4)}"),
        ("DEGRADE_RESTORE PSNR / SSIM", f"{number(j.dr_psnr, 2, ' dB')} / {number(j.dr_ssim, 4)}"),
        ("Created", when(j.created_at)),
        ("Last update", when(j.updated_at)),
        ("Finished", when(j.finished_at)),
        ("Enhancement time", seconds(j.enhance_seconds)),
        ("Total time", seconds((j.finished_at or now) - j.created_at)),
        ("Attempts", str(j.attempts) + (f", next try {when(j.next_try_at)}" if j.state == "failed" else "")),
        ("Study Instance UID", f'<span class="uid">{esc(j.study_uid)}</span>'),
        ("Series Instance UID", f'<span class="uid">{esc(j.series_uid)}</span>'),
        ("Derived Series UID", f'<span class="uid">{esc(j.derived_series_uid or "-")}</span>'),
    ]
    if j.error:
        facts.append(("Error", f'<span class="error-text" id="job-error">{esc(j.error)}</span>'))
    if j.skip_reason:
        facts.append(("Skip reason", esc(j.skip_reason)))
    if j.qa_reasons and j.qa_verdict in ("WARN", "FAIL"):
        facts.append(("QA reasons", f'<span id="qa-reasons">{esc(j.qa_reasons)}</span>'))
    dests = "".join(
        f"<tr><td>{esc(d.destination)}</td><td>{_badge(d.state)}</td><td class='num'>{d.attempts}</td>"
        f"<td>{when(d.delivered_at)}</td><td class='error-text'>{esc(d.last_error or '')}</td></tr>"
        for d in view.deliveries
    ) or "<tr><td colspan='5' class='muted'>no delivery yet</td></tr>"
    thumbs = []
    for t in view.thumbs:
        def img(kind: str, present: bool, t: int = t.index) -> str:
            if not present:
                gone = "original no longer in the spool" if kind == "original" else "derived file not in the spool"
                return f'<div class="missing">{gone}</div>'
            return (f'<img src="/jobs/{j.id}/thumbs/{t}/{kind}.png" alt="{kind} slice" '
                    f'class="thumb-{kind}" loading="lazy">')
        b = t.block or {}
        metrics = (
            f"PSNR {number(b.get('psnr'), 2, ' dB')} · SSIM {number(b.get('ssim'), 4)} · "
            f"<span class='badge {esc(b.get('qa_flag'))}'>{esc(b.get('qa_flag') or '-')}</span>"
            if t.block else "<span class='muted'>no private block to read</span>"
        )
        thumbs.append(
            f"""<div class="thumb"><div class="muted">instance {esc(t.instance_number)} · {metrics}</div>
<div class="pair"><div><div class="muted">before</div>{img("original", t.has_original)}</div>
<div><div class="muted">after</div>{img("derived", t.has_derived)}</div></div></div>"""
        )
    action = ""
    if j.state in ("failed", "dead"):
        action = f"""<form method="post" action="/jobs/{j.id}/retry" class="actions">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<button type="submit" id="retry">Retry now</button>
<span class="muted">re-queues the job at the stage that failed (same as <code>enhance-gateway retry {j.id}</code>)</span>
</form>"""
    if j.state == "held":
        action += f"""<form method="post" action="/jobs/{j.id}/release" class="actions">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<button type="submit" id="release">Release (deliver)</button>
<span class="muted">delivers the held series as it is, marked "QA {esc(j.qa_verdict)}" (same as
<code>enhance-gateway release {j.id}</code>)</span>
</form>
<form method="post" action="/jobs/{j.id}/reject" class="actions">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<button type="submit" id="reject">Reject</button>
<span class="muted">drops the derived series; the originals stay (same as <code>enhance-gateway reject {j.id}</code>)</span>
</form>"""
    options = "".join(f"<option value='{esc(n)}'>{esc(n)}</option>" for n in enhancer_names)
    action += f"""<form method="post" action="/jobs/{j.id}/reprocess" class="actions">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<select name="enhancer" id="reprocess-enhancer"><option value="">same routing</option>{options}</select>
<button type="submit" id="reprocess">Reprocess series</button>
<span class="muted">a new job over every instance of the series (same as <code>enhance-gateway reprocess
{esc(j.study_uid)} --series {esc(j.series_uid)}</code>); another enhancer makes a new derived series</span>
</form>"""
    if who is not None and not who.admin:
        action = ('<p class="muted" id="admin-only">Retry, reprocess, release and reject are for users with the '
                  f'<code>admin</code> role; you are logged in as {esc(who.name)} ({esc(who.role)}).</p>')
    flash_html = f'<div class="alert info" id="flash" role="status">{esc(flash)}</div>' if flash else ""
    body = f"""<h1>Job {j.id} {_badge(j.state)}</h1>
{flash_html}
<div class="card">{_facts(facts)}</div>
<h2>Destinations</h2>
<div class="card"><table id="deliveries"><tr><th>destination</th><th>state</th><th class="num">attempts</th>
<th>delivered</th><th>last error</th></tr>{dests}</table></div>
<h2>Before / after ({len(view.thumbs)} of {j.instance_count} instances; {view.derived_files} derived files in the
spool)</h2>
<div class="thumbs">{"".join(thumbs) or "<p class='muted'>no instance recorded</p>"}</div>
{_patient_block(patient_fields(view.header), "from the first original")}
<h2>Admin</h2>
<div class="card">{action}</div>
<p><a href="/jobs">← all jobs</a></p>"""
    return layout(f"Job {j.id}", body, active="jobs", page="job", listen=listen, who=who)


def login_page(*, csrf: str, listen: str, has_users: bool, message: str = "", name: str = "",
               next_url: str = "/") -> str:
    """The login form; with no user yet, the command that creates the first admin instead."""
    if not has_users:
        body = """<h1>No console users yet</h1>
<div class="alert info" id="no-users" role="status">The console asks everyone to log in, and nobody can yet. On the
gateway host, create the first admin (it asks for a password of at least 10 characters), then reload this page:
<pre>enhance-gateway --config /etc/enhance-gateway/gateway.toml users add NAME --role admin</pre>
Radiologists who only look at jobs and try enhancers get <code>--role viewer</code>.</div>"""
        return layout("Log in", body, active="", page="login", listen=listen)
    error = f'<div class="alert error" role="alert" id="login-error">{esc(message)}</div>' if message else ""
    body = f"""<h1>Log in</h1>
{error}
<div class="card">
<form class="login" method="post" action="/login">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<input type="hidden" name="next" value="{esc(next_url)}">
<label for="name">User</label>
<input type="text" id="name" name="name" value="{esc(name)}" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<span></span><span><button type="submit" id="login">Log in</button></span>
</form>
</div>
<p class="muted">Accounts are made on the gateway host with <code>enhance-gateway users add</code>.</p>"""
    return layout("Log in", body, active="", page="login", listen=listen)


__all__ = ["JOB_STATES", "Who", "error_page", "job_page", "jobs_page", "login_page", "progress_page", "result_page", "upload_page"]
