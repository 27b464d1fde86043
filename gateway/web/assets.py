"""The console's stylesheet and script, served from /static/.

Why Python strings and not files: the console must work from an installed wheel without package-data wiring,
and the Content-Security-Policy forbids inline scripts and styles (a page must never run what an uploaded
file or a header value could inject), so both live at fixed URLs of their own. No framework, no build step:
the script is small enough to read in one sitting.
"""

from __future__ import annotations

CSS = """
:root { --bg: #15171a; --panel: #1f2227; --line: #343841; --text: #e6e6e6; --muted: #9aa0aa;
        --accent: #f0b54a; --ok: #3fb66b; --warn: #e5a93a; --bad: #e05252; --info: #5b9bd5; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.45 system-ui, sans-serif; }
header { display: flex; align-items: center; gap: 24px; padding: 10px 20px; background: #0d0e10;
         border-bottom: 1px solid var(--line); }
header .brand { font-weight: 600; color: var(--accent); }
header nav a { color: var(--text); text-decoration: none; margin-right: 16px; padding: 4px 0; }
header nav a.active { border-bottom: 2px solid var(--accent); }
main { padding: 16px 20px 40px; max-width: 1700px; }
footer { color: var(--muted); font-size: 12px; padding: 8px 20px; border-top: 1px solid var(--line); }
h1 { font-size: 20px; margin: 4px 0 12px; }
h2 { font-size: 16px; margin: 20px 0 8px; }
a { color: #8cc4ff; }
.muted { color: var(--muted); }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 14px 16px; }
form.upload { display: grid; grid-template-columns: 170px 1fr; gap: 10px 14px; align-items: center;
              max-width: 860px; }
form.upload label { color: var(--muted); }
form.login { display: grid; grid-template-columns: 170px 1fr; gap: 10px 14px; align-items: center; max-width: 520px; }
form.login label { color: var(--muted); }
form.userbar { margin-left: auto; display: flex; gap: 10px; align-items: center; }
input[type=text], input[type=password] { background: #2a2e35; color: var(--text);
       border: 1px solid var(--line); border-radius: 4px; padding: 5px 7px; font: inherit; }
select, input[type=number], input[type=file] { background: #2a2e35; color: var(--text);
       border: 1px solid var(--line); border-radius: 4px; padding: 5px 7px; font: inherit; }
button, .button { background: var(--accent); color: #111; border: 0; border-radius: 4px; padding: 7px 14px;
       font: inherit; font-weight: 600; cursor: pointer; text-decoration: none; display: inline-block; }
button.secondary, .button.secondary { background: #3a3f48; color: var(--text); font-weight: 500; }
button:disabled { opacity: .45; cursor: not-allowed; }
.alert { border-radius: 6px; padding: 10px 14px; margin: 12px 0; }
.alert.error { background: #3a1d1f; border: 1px solid var(--bad); }
.alert.info { background: #1c2a3a; border: 1px solid var(--info); }
.hidden { display: none !important; }
.progress { margin: 14px 0; max-width: 860px; }
.bar { height: 10px; background: #2a2e35; border-radius: 5px; overflow: hidden; }
.bar > div { height: 100%; width: 0; background: var(--accent); transition: width .25s; }
.bar.failed > div { background: var(--bad); }
.bar.busy > div { background-image: linear-gradient(90deg, var(--accent) 0%, #ffe3a3 50%, var(--accent) 100%);
                  background-size: 200% 100%; animation: slide 1.2s linear infinite; }
@keyframes slide { from { background-position: 200% 0; } to { background-position: 0 0; } }
.metrics { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 14px; }
.metric { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
          min-width: 120px; }
.metric .value { font-size: 20px; font-weight: 600; }
.metric .label { color: var(--muted); font-size: 12px; }
.toolbar { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center; margin: 8px 0 10px; }
.toolbar .group { display: flex; gap: 6px; align-items: center; }
.toolbar input[type=number] { width: 90px; }
.toolbar input[type=range] { width: 160px; }
.viewer { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; }
.pane { background: #000; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
.pane h3 { margin: 0; font-size: 13px; font-weight: 600; padding: 6px 10px; background: var(--panel);
           border-bottom: 1px solid var(--line); display: flex; justify-content: space-between; gap: 8px;
           white-space: nowrap; overflow: hidden; }
.pane h3 span { overflow: hidden; text-overflow: ellipsis; }
.viewport { position: relative; overflow: hidden; aspect-ratio: 1 / 1; cursor: grab; background: #000; }
.viewport img { position: absolute; left: 0; top: 0; width: 100%; height: 100%; object-fit: contain;
                transform-origin: 0 0; user-select: none; -webkit-user-drag: none; }
.viewport.pixelated img { image-rendering: pixelated; }
.viewport.loading::after { content: "rendering..."; position: absolute; right: 8px; bottom: 6px;
                           color: var(--muted); font-size: 11px; }
.downloads { display: flex; gap: 10px; margin: 14px 0; flex-wrap: wrap; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 500; font-size: 12px; text-transform: uppercase; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts th { width: 220px; text-transform: none; font-size: 13px; }
code, .uid { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         background: #3a3f48; }
.badge.done, .badge.PASS { background: #1e4d2f; color: #9be3b3; }
.badge.failed, .badge.pending, .badge.WARN { background: #4d3b17; color: #ffd98a; }
.badge.dead, .badge.held, .badge.FAIL { background: #4d1e1e; color: #ffaaaa; }
.badge.enhancing, .badge.sending, .badge.queued, .badge.enhanced { background: #1c2f4a; color: #a9cdf5; }
.badge.skipped, .badge.rejected { background: #33363c; color: #c4c8cf; }
.counts { display: flex; gap: 8px; flex-wrap: wrap; margin: 6px 0 14px; }
.counts a { text-decoration: none; color: var(--text); }
.dest { white-space: nowrap; }
.error-text { color: #ffb4b4; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
.thumb { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.thumb .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.thumb img { width: 100%; background: #000; display: block; }
.thumb .missing { aspect-ratio: 1 / 1; display: flex; align-items: center; justify-content: center;
                  background: #000; color: var(--muted); font-size: 12px; text-align: center; padding: 6px; }
details.phi { margin: 12px 0; }
details.phi summary { cursor: pointer; color: var(--muted); }
.actions { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
@media (max-width: 900px) { .viewer { grid-template-columns: 1fr; } }
"""

JS = r"""
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const page = document.body.dataset.page;

  function showError(box, message) {
    box.textContent = message;
    box.classList.remove("hidden");
  }

  function setProgress(root, fraction, text, busy) {
    root.classList.remove("hidden");
    const bar = $(".bar", root);
    $(".bar > div", root).style.width = Math.round(Math.max(0.02, Math.min(1, fraction)) * 100) + "%";
    bar.classList.toggle("busy", !!busy);
    bar.classList.remove("failed");
    $(".stage", root).textContent = text;
  }

  // Poll an upload's status until it is done; resolve with the final status.
  function poll(statusUrl, onStatus) {
    return new Promise((resolve, reject) => {
      const tick = () => {
        fetch(statusUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
          .then((r) => r.json())
          .then((st) => {
            onStatus(st);
            if (st.done) resolve(st); else setTimeout(tick, 350);
          })
          .catch(reject);
      };
      tick();
    });
  }

  function stageText(st) {
    return st.stage + " (" + st.seconds.toFixed(1) + " s)";
  }

  // ---------------------------------------------------------------- upload page
  function initUpload() {
    const form = $("form.upload");
    const task = $("#task");
    const enhancer = $("#enhancer");
    const errorBox = $("#upload-error");
    const progress = $("#progress");
    const filterEnhancers = () => {
      $$("option", enhancer).forEach((opt) => {
        const ok = !opt.dataset.task || opt.dataset.task === task.value;
        opt.hidden = !ok;
        opt.disabled = !ok;
      });
      if (enhancer.selectedOptions[0] && enhancer.selectedOptions[0].disabled) enhancer.value = "auto";
    };
    task.addEventListener("change", filterEnhancers);
    filterEnhancers();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      errorBox.classList.add("hidden");
      const file = $("#file").files[0];
      if (!file) { showError(errorBox, "Choose a DICOM, PNG or JPEG file first."); return; }
      const maxBytes = Number(form.dataset.maxBytes || 0);
      if (maxBytes && file.size > maxBytes) {
        showError(errorBox, "The file is larger than " + Math.round(maxBytes / 1048576) + " MB, the most this console takes.");
        return;
      }
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      // the token as a header too: the console checks it before it reads a byte of the file
      xhr.setRequestHeader("X-CSRF-Token", $("input[name=csrf]", form).value);
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) {
          setProgress(progress, 0.05 * e.loaded / e.total, "uploading " + Math.round(100 * e.loaded / e.total) + " %", false);
        }
      });
      xhr.addEventListener("error", () => {
        button.disabled = false;
        progress.classList.add("hidden");
        showError(errorBox, "The upload failed: the console did not answer. Is it still running?");
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = { error: "unexpected answer (HTTP " + xhr.status + ")" }; }
        if (xhr.status !== 202) {
          button.disabled = false;
          progress.classList.add("hidden");
          showError(errorBox, body.error || ("HTTP " + xhr.status));
          return;
        }
        setProgress(progress, 0.05, "waiting for the enhancer", true);
        poll(body.status_url, (st) => setProgress(progress, st.progress, stageText(st), !st.done))
          .then((st) => {
            if (st.error) {
              button.disabled = false;
              setProgress(progress, st.progress, "failed after " + st.seconds.toFixed(1) + " s", false);
              $(".bar", progress).classList.add("failed");
              showError(errorBox, st.error);
            } else {
              window.location.assign(body.page_url);
            }
          })
          .catch(() => { button.disabled = false; showError(errorBox, "Lost contact with the console while waiting."); });
      });
      xhr.send(new FormData(form));
    });
  }

  // ---------------------------------------------------------------- progress page (no-JS friendly fallback)
  function initProgress() {
    const progress = $("#progress");
    poll(progress.dataset.status, (st) => setProgress(progress, st.progress, stageText(st), !st.done))
      .then(() => window.location.reload());
  }

  // ---------------------------------------------------------------- result page: the viewer
  function initResult() {
    const viewer = $(".viewer");
    const base = viewer.dataset.base;
    const center = $("#wl-center"), width = $("#wl-width");
    const centerRange = $("#wl-center-range"), widthRange = $("#wl-width-range");
    const preset = $("#wl-preset"), invert = $("#invert"), frame = $("#frame");
    const zoomLabel = $("#zoom-level");
    const comparison = $("#download-comparison");
    const view = { scale: 1, tx: 0, ty: 0 };
    let timer = null;

    const params = (withWindow) => {
      const q = new URLSearchParams();
      q.set("frame", frame ? frame.value : "0");
      if (withWindow) {
        q.set("c", center.value);
        q.set("w", width.value);
        q.set("inv", invert.checked ? "1" : "0");
      }
      return q.toString();
    };
    const render = () => {
      $$(".viewport img").forEach((img) => {
        const kind = img.dataset.kind;
        const url = base + kind + ".png?" + params(kind !== "difference");
        if (img.getAttribute("src") !== url) {
          img.closest(".viewport").classList.add("loading");
          img.setAttribute("src", url);
        }
      });
      comparison.setAttribute("href", base + "comparison.png?" + params(true));
      const fl = $("#frame-label");
      if (fl && frame) fl.textContent = String(Number(frame.value) + 1);
      const dl = $("#diff-limit");
      if (dl && frame) dl.textContent = (JSON.parse(viewer.dataset.limits)[Number(frame.value)] || 0).toPrecision(3);
    };
    const later = () => { clearTimeout(timer); timer = setTimeout(render, 120); };
    $$(".viewport img").forEach((img) => img.addEventListener("load", () => img.closest(".viewport").classList.remove("loading")));

    const syncRanges = () => { centerRange.value = center.value; widthRange.value = width.value; };
    center.addEventListener("input", () => { syncRanges(); preset.value = "custom"; later(); });
    width.addEventListener("input", () => { syncRanges(); preset.value = "custom"; later(); });
    centerRange.addEventListener("input", () => { center.value = centerRange.value; preset.value = "custom"; later(); });
    widthRange.addEventListener("input", () => { width.value = widthRange.value; preset.value = "custom"; later(); });
    preset.addEventListener("change", () => {
      const opt = preset.selectedOptions[0];
      if (opt && opt.dataset.c !== undefined) {
        center.value = opt.dataset.c; width.value = opt.dataset.w; syncRanges(); render();
      }
    });
    invert.addEventListener("change", render);
    if (frame) frame.addEventListener("input", later);

    // Zoom and pan: one transform for the three panes, so they always show the same region.
    const apply = () => {
      $$(".viewport img").forEach((img) => {
        img.style.transform = "translate(" + view.tx + "px," + view.ty + "px) scale(" + view.scale + ")";
      });
      $$(".viewport").forEach((vp) => vp.classList.toggle("pixelated", view.scale >= 2));
      zoomLabel.textContent = Math.round(view.scale * 100) + " %";
    };
    const zoomAt = (factor, x, y) => {
      const next = Math.max(1, Math.min(32, view.scale * factor));
      const k = next / view.scale;
      view.tx = x - k * (x - view.tx);
      view.ty = y - k * (y - view.ty);
      view.scale = next;
      if (view.scale === 1) { view.tx = 0; view.ty = 0; }
      apply();
    };
    const centre = () => { const r = $(".viewport").getBoundingClientRect(); return [r.width / 2, r.height / 2]; };
    $("#zoom-in").addEventListener("click", () => zoomAt(2, ...centre()));
    $("#zoom-out").addEventListener("click", () => zoomAt(0.5, ...centre()));
    $("#zoom-fit").addEventListener("click", () => { view.scale = 1; view.tx = 0; view.ty = 0; apply(); });
    $$(".viewport").forEach((vp) => {
      vp.addEventListener("wheel", (e) => {
        e.preventDefault();
        const r = vp.getBoundingClientRect();
        zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
      }, { passive: false });
      vp.addEventListener("pointerdown", (e) => {
        const start = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty,
                        c: Number(center.value), w: Number(width.value) };
        const windowing = e.shiftKey && vp.dataset.kind !== "difference";
        vp.setPointerCapture(e.pointerId);
        const move = (m) => {
          const dx = m.clientX - start.x, dy = m.clientY - start.y;
          if (windowing) {
            width.value = Math.max(1, Math.round(start.w + dx * start.w / 200));
            center.value = Math.round(start.c + dy * start.w / 400);
            preset.value = "custom"; syncRanges(); later();
          } else {
            view.tx = start.tx + dx; view.ty = start.ty + dy; apply();
          }
        };
        const up = () => { vp.removeEventListener("pointermove", move); vp.removeEventListener("pointerup", up); };
        vp.addEventListener("pointermove", move);
        vp.addEventListener("pointerup", up);
      });
    });
    apply();
    render();
  }

  // ---------------------------------------------------------------- jobs page
  function initJobs() {
    const box = $("#auto-refresh");
    if (!box) return;
    box.checked = localStorage.getItem("jobs-auto-refresh") === "1";
    let handle = null;
    const arm = () => {
      clearInterval(handle);
      if (box.checked) handle = setInterval(() => window.location.reload(), 5000);
    };
    box.addEventListener("change", () => { localStorage.setItem("jobs-auto-refresh", box.checked ? "1" : "0"); arm(); });
    arm();
  }

  if (page === "upload") initUpload();
  if (page === "progress") initProgress();
  if (page === "result") initResult();
  if (page === "jobs") initJobs();
})();
"""
