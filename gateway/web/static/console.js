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

  // ---------------------------------------------------------------- job page: live state, slice viewer
  // While the gateway works on the job, poll its state and reload the page when it changes; a finished job's
  // page carries no data-refresh, so polling stops there.
  function initRefresh() {
    const url = document.body.dataset.refresh;
    if (!url) return;
    const key = document.body.dataset.refreshKey;
    const tick = () => {
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
        .then((r) => r.json())
        .then((st) => {
          if (st.state + "/" + st.updated_at !== key) window.location.reload();
          else setTimeout(tick, 3000);
        })
        .catch(() => setTimeout(tick, 10000));
    };
    setTimeout(tick, 3000);
  }

  // The slice viewer works on modality values (HU for CT), not on rendered grey levels: the value under the
  // cursor and an ROI's mean/std are numbers a radiologist can compare between original and enhanced.
  function initJob() {
    initRefresh();
    const root = $("#slice-viewer");
    if (!root) return;
    const job = root.dataset.job, count = Number(root.dataset.count);
    const slider = $("#slice"), label = $("#slice-label");
    const center = $("#job-wl-center"), width = $("#job-wl-width");
    const panes = $(".slice-panes", root), flicker = $("#flicker"), flickerState = $("#flicker-state");
    const kinds = ["original", "derived"];
    const shown = {};  // kind -> { values: Float32Array, rows, columns }
    let info = null, roi = null, seq = 0, invert = false, windowSet = false;
    const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
    const unit = () => (info && info.unit ? " " + info.unit : "");

    const draw = (kind) => {
      const canvas = $("#canvas-" + kind), data = shown[kind];
      const missing = $(".missing", canvas.parentNode);
      if (!data) { canvas.classList.add("hidden"); missing.classList.remove("hidden"); return; }
      canvas.classList.remove("hidden"); missing.classList.add("hidden");
      canvas.width = data.columns; canvas.height = data.rows;
      const ctx = canvas.getContext("2d"), img = ctx.createImageData(data.columns, data.rows);
      const w = Math.max(Number(width.value) || 1, 1e-6), lo = Number(center.value) - w / 2, k = 255 / w;
      const v = data.values, px = img.data;
      for (let i = 0; i < v.length; i++) {
        let g = (v[i] - lo) * k;
        g = g < 0 ? 0 : g > 255 ? 255 : g;
        if (invert) g = 255 - g;
        px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = g; px[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      if (roi) {
        const s = data.columns / shown.original.columns;
        ctx.strokeStyle = "#f0b54a"; ctx.lineWidth = Math.max(1, data.columns / 400);
        ctx.strokeRect(roi.x0 * s, roi.y0 * s, (roi.x1 - roi.x0) * s, (roi.y1 - roi.y0) * s);
      }
    };
    const drawAll = () => kinds.forEach(draw);

    // mean and std of the values in an ROI given in the original's pixel grid (scaled to a super-resolved grid)
    const stats = (kind) => {
      const data = shown[kind];
      if (!data || !shown.original) return null;
      const s = data.columns / shown.original.columns;
      const x0 = Math.floor(roi.x0 * s), x1 = Math.ceil(roi.x1 * s), y0 = Math.floor(roi.y0 * s), y1 = Math.ceil(roi.y1 * s);
      let n = 0, sum = 0, sq = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
        const v = data.values[y * data.columns + x]; n++; sum += v; sq += v * v;
      }
      if (!n) return null;
      const mean = sum / n;
      return { n, mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
    };
    const showRoi = () => {
      const box = $("#roi");
      if (!roi) { box.textContent = ""; return; }
      const a = stats("original"), b = stats("derived");
      let text = "ROI " + (roi.x1 - roi.x0) + "×" + (roi.y1 - roi.y0) + " px";
      if (a) text += " · original mean " + fmt(a.mean) + unit() + ", std " + fmt(a.std);
      if (b) text += " · enhanced mean " + fmt(b.mean) + unit() + ", std " + fmt(b.std);
      if (a && b && a.std > 0) text += " (std " + Math.round(100 * (b.std / a.std - 1)) + " %)";
      box.textContent = text;
      box.dataset.rect = [roi.x0, roi.y0, roi.x1, roi.y1].join(",");
      box.dataset.originalMean = a ? a.mean : ""; box.dataset.originalStd = a ? a.std : "";
      box.dataset.derivedMean = b ? b.mean : ""; box.dataset.derivedStd = b ? b.std : "";
    };

    const fetchValues = (kind, meta) => {
      if (!meta) return Promise.resolve(null);
      return fetch("/jobs/" + job + "/slices/" + slider.value + "/" + kind + ".f32", { cache: "no-store" })
        .then((r) => (r.ok ? r.arrayBuffer() : null))
        .then((buf) => (buf ? { values: new Float32Array(buf), rows: meta.rows, columns: meta.columns } : null));
    };
    const load = () => {
      const mine = ++seq, index = slider.value;
      label.textContent = String(Number(index) + 1);
      fetch("/api/jobs/" + job + "/slices/" + index, { headers: { Accept: "application/json" }, cache: "no-store" })
        .then((r) => r.json())
        .then((meta) => Promise.all([meta, fetchValues("original", meta.original), fetchValues("derived", meta.derived)]))
        .then(([meta, original, derived]) => {
          if (mine !== seq) return;  // the user moved on to another slice meanwhile
          info = meta; shown.original = original; shown.derived = derived;
          if (!windowSet && meta.window) {
            center.value = Number(meta.window.center.toPrecision(6)); width.value = Number(meta.window.width.toPrecision(6));
            invert = meta.window.invert; windowSet = true;
          }
          $$(".pane", panes).forEach((pane) => {
            const d = shown[pane.dataset.kind];
            $("[data-size]", pane).textContent = d ? d.columns + "×" + d.rows : "";
            $(".missing", pane).textContent = pane.dataset.kind === "original"
              ? "original no longer in the spool" : "no derived image for this slice (not enhanced yet, or cleaned up)";
          });
          const m = meta.metrics;
          $("#slice-metrics").textContent = "instance " + (meta.instance_number || "?") +
            (m ? " · PSNR " + (m.psnr === null ? "-" : m.psnr >= 999 ? "∞" : m.psnr.toFixed(2) + " dB") +
                 " · SSIM " + (m.ssim === null ? "-" : m.ssim.toFixed(4)) + " · QA " + (m.qa_flag || "-") : "");
          drawAll(); showRoi();
          root.dataset.loaded = index;
        })
        .catch(() => { $("#slice-metrics").textContent = "could not load this slice"; });
    };

    const step = (d) => {
      const next = Math.max(0, Math.min(count - 1, Number(slider.value) + d));
      if (String(next) !== slider.value) { slider.value = next; load(); }
    };
    slider.addEventListener("input", load);
    [center, width].forEach((el) => el.addEventListener("input", drawAll));
    panes.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); }, { passive: false });
    const toggle = () => {
      const on = !panes.classList.contains("flicker");
      if (on) { panes.classList.add("flicker"); panes.dataset.show = "derived"; }
      else if (panes.dataset.show === "derived") panes.dataset.show = "original";
      else { panes.classList.remove("flicker"); panes.dataset.show = "original"; }
      const mode = panes.classList.contains("flicker");
      flicker.setAttribute("aria-pressed", mode ? "true" : "false");
      flickerState.textContent = mode ? "showing " + (panes.dataset.show === "derived" ? "enhanced" : "original") +
        " (F again to switch)" : "";
    };
    // F flips between the two; the button cycles side-by-side -> enhanced -> original -> side-by-side
    flicker.addEventListener("click", toggle);
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      if (e.key === "f" || e.key === "F") {
        if (!panes.classList.contains("flicker")) toggle();
        else { panes.dataset.show = panes.dataset.show === "derived" ? "original" : "derived";
               flickerState.textContent = "showing " + (panes.dataset.show === "derived" ? "enhanced" : "original") + " (F again to switch)"; }
      } else if (e.key === "ArrowDown" || e.key === "ArrowRight") { e.preventDefault(); step(1); }
      else if (e.key === "ArrowUp" || e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    });

    // cursor -> pixel of the original's grid (each canvas is shown at its aspect ratio, width 100 %)
    const pixel = (canvas, e) => {
      const r = canvas.getBoundingClientRect(), data = shown.original;
      if (!data || !r.width) return null;
      const x = Math.floor((e.clientX - r.left) / r.width * data.columns);
      const y = Math.floor((e.clientY - r.top) / r.height * data.rows);
      return { x: Math.max(0, Math.min(data.columns - 1, x)), y: Math.max(0, Math.min(data.rows - 1, y)) };
    };
    const valueAt = (kind, p) => {
      const data = shown[kind];
      if (!data) return null;
      const s = data.columns / shown.original.columns;
      return data.values[Math.floor(p.y * s) * data.columns + Math.floor(p.x * s)];
    };
    kinds.forEach((kind) => {
      const canvas = $("#canvas-" + kind);
      canvas.addEventListener("mousemove", (e) => {
        const p = pixel(canvas, e);
        if (!p) return;
        const a = valueAt("original", p), b = valueAt("derived", p);
        const probe = $("#probe");
        probe.textContent = "x " + p.x + ", y " + p.y + ": original " + fmt(a) + unit() +
          (b === null ? "" : " · enhanced " + fmt(b) + unit());
        probe.dataset.original = a; probe.dataset.derived = b === null ? "" : b;
      });
      canvas.addEventListener("pointerdown", (e) => {
        const start = pixel(canvas, e);
        if (!start) return;
        roi = null;  // a click without a drag clears the ROI
        canvas.setPointerCapture(e.pointerId);
        const move = (m) => {
          const p = pixel(canvas, m);
          roi = { x0: Math.min(start.x, p.x), y0: Math.min(start.y, p.y), x1: Math.max(start.x, p.x) + 1, y1: Math.max(start.y, p.y) + 1 };
          drawAll();
        };
        const up = () => {
          canvas.removeEventListener("pointermove", move); canvas.removeEventListener("pointerup", up);
          if (roi && (roi.x1 - roi.x0) * (roi.y1 - roi.y0) <= 1) roi = null;
          drawAll(); showRoi();
        };
        canvas.addEventListener("pointermove", move);
        canvas.addEventListener("pointerup", up);
      });
    });
    load();
  }

  if (page === "upload") initUpload();
  if (page === "progress") initProgress();
  if (page === "result") initResult();
  if (page === "jobs") initJobs();
  if (page === "job") initJob();
})();
