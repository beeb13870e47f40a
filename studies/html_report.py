"""``vaenas report STUDY``: one self-contained HTML page of a study that works offline (no script,
style or image is fetched: the data is embedded as JSON, the pictures as base64 PNG, the plots are
drawn as SVG by a small script in the page).

What is on it: an interactive Pareto front (pick the x objective; hover a point for its spec,
per-layer bits and widths, figures and its reconstructions/samples), hypervolume over trials and
over wall time, a sortable table of every trial with its state and failure reason, the knee's and
each front point's reconstructions and samples, and in supernet mode the estimate vs the
measurement of each re-measured spec. Colour = parameter-weighted mean weight bits, in the PNG
plots' bands (2, 3, 4, 6, 8, 16, 32 bits).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from strategies.pareto import hypervolume, knee_point
from search_space import ArchSpec

from .plots import BIT_COLOURS, BIT_EDGES, BIT_LEVELS, LABELS, bits_colour
from evaluator.objectives import minimised

from .report import StudyView, feasible_trials, hypervolume_curve, ranked, reported_mask, study_hypervolume
from .files import study_dir
from strategies.trial_record import FAIL_REASON, SPEC_ID, trial_attrs

MAX_THUMBNAILS = 60  # front points (and the knee) get their picture embedded; the page stays small


def _num(v):
    """A JSON-safe number (NaN/inf become null)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _png_b64(path: Path) -> str | None:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def _picture(view: StudyView, runs_dir, number: int, images) -> str | None:
    """The trial's samples.png (written at search time), else drawn now from its checkpoint."""
    tdir = study_dir(runs_dir, view.name) / "trials" / str(number)
    if not (tdir / "samples.png").is_file() and (tdir / "model.pt").is_file() and images is not None:
        import torch

        from .plots import samples_png

        ck = torch.load(tdir / "model.pt", map_location="cpu", weights_only=True)
        from search_space import build_vae

        model = build_vae(ArchSpec.from_json(ck["spec"]))
        model.load_state_dict(ck["state_dict"])
        tmp = tdir / "samples.png"
        samples_png(model, images[:8], tmp, standardised="normalization" in ck, seed=number)
    return _png_b64(tdir / "samples.png")


def _trial_points(view: StudyView, runs_dir, images) -> list[dict]:
    df = view.trials
    if not len(df):
        return []
    knee = None
    feas = feasible_trials(view)
    if len(feas):
        knee = int(feas["trial"].iloc[knee_point(ranked(feas, view.objectives), view.bounds)])
    reported = reported_mask(df)
    pts = []
    n_pics = 0
    for i, (_, r) in enumerate(df.iterrows()):
        spec = ArchSpec.from_dict(json.loads(trial_attrs(view.study.trials[int(r["trial"])])["spec"]))
        widths = list(spec.enc_channels) + list(spec.enc_hidden)
        p = {"trial": int(r["trial"]), "spec_id": spec.id, "family": spec.family, "latent_dim": spec.latent_dim,
             "layers": [[n, int(b)] for n, b in zip(spec.layer_names(), spec.weight_bits)], "widths": widths,
             "mean_bits": _num(spec.mean_bits), "colour": bits_colour(spec.mean_bits),
             "on_front": bool(r["on_front"]), "feasible": bool(r["feasible"]), "reported": bool(reported[i]),
             "estimate": bool(r.get("neg_elbo_is_estimate", False)), "phase": r.get("phase", "search"),
             "knee": int(r["trial"]) == knee}
        for k in {*view.objectives, "neg_elbo", "bits_per_dim", "size_bytes", "params", "flops", "latency_ms"}:
            if k in r:
                p[k] = _num(r[k])
        if (p["on_front"] or p["knee"]) and n_pics < MAX_THUMBNAILS:
            p["picture"] = _picture(view, runs_dir, p["trial"], images)
            n_pics += 1
        pts.append(p)
    return pts


def _hv_over_time(view: StudyView) -> list[list[float]]:
    """[seconds since the first trial started, hypervolume of the feasible trials finished by then]."""
    done = [t for t in view.study.trials if t.datetime_complete is not None]
    if not done:
        return []
    t0 = min(t.datetime_start or t.datetime_complete for t in done)
    rows = view.trials.set_index("trial") if len(view.trials) else None
    out, pts = [], []
    for t in sorted(done, key=lambda t: t.datetime_complete):
        if rows is not None and t.number in rows.index:
            r = rows.loc[t.number]
            if bool(r["feasible"]) and r.get("phase", "search") != "remeasure":
                pts.append([minimised(o, r[o]) for o in view.objectives])
        hv = hypervolume(np.array(pts), view.bounds) if pts else 0.0
        out.append([(t.datetime_complete - t0).total_seconds(), hv])
    return out


def _all_trials(view: StudyView) -> list[dict]:
    rows = view.trials.set_index("trial") if len(view.trials) else None
    out = []
    for t in view.study.trials:
        a = trial_attrs(t)
        reason = a.get(FAIL_REASON, "")
        if "stopped_at_rung" in a:  # early stopping: its figures are partial and never on a front
            reason = (f"stopped at rung {a['stopped_at_rung']} (after {a['stopped_at_fraction']:g} of its training; "
                      f"PARTIAL −ELBO {a.get('partial', {}).get('neg_elbo', float('nan')):.2f})")
        if "reused_from_trial" in a:
            reason = (reason + "; " if reason else "") + f"repeat of trial {a['reused_from_trial']} (not counted)"
        d = {"trial": t.number, "state": t.state.name, "fail_reason": reason, "spec_id": a.get(SPEC_ID, ""),
             "worker": a.get("worker", "")}
        if rows is not None and t.number in rows.index:
            r = rows.loc[t.number]
            for k in view.objectives + ["mean_bits"]:
                d[k] = _num(r[k])
            d["on_front"] = bool(r["on_front"])
        out.append(d)
    return out


def build_report(view: StudyView, runs_dir, images=None) -> str:
    """The page's HTML (one string). ``images``: a few validation examples, used only to draw the
    picture of a front trial that has a checkpoint but no samples.png (a study made before them)."""
    xs, hv = hypervolume_curve(view)
    remeasured = [
        {"trial": int(r["trial"]), "measured": _num(r["neg_elbo"]), "estimate": _num(r["estimate_neg_elbo"]),
         "spec_id": r["spec_id"]}
        for _, r in view.trials.iterrows() if r.get("phase") == "remeasure" and _num(r.get("estimate_neg_elbo"))
    ] if len(view.trials) else []
    data = {
        "name": view.name, "storage": view.storage, "objectives": view.objectives,
        "bounds": [[b.lo, b.hi, b.log] for b in view.bounds], "labels": LABELS,
        "points": _trial_points(view, runs_dir, images), "hv_trials": [[x, y] for x, y in zip(xs, hv)],
        "hv_time": _hv_over_time(view), "trials": _all_trials(view), "remeasured": remeasured,
        "hypervolume": study_hypervolume(view),
        "bits": {"edges": list(BIT_EDGES), "levels": list(BIT_LEVELS), "colours": list(BIT_COLOURS)},
        "anomaly": [p for p in (_png_b64(study_dir(runs_dir, view.name) / "plots" / f) for f in
                                ("roc.png", "knee_scores.png")) if p] if view.study.user_attrs.get("data", {}).get(
                                    "task") else [],
    }
    return _PAGE.replace("__TITLE__", html.escape(f"vaenas report: {view.name}")).replace("__DATA__", embedded_json(data))


def embedded_json(data) -> str:
    """``data`` as JSON that cannot end or comment out its ``<script>`` block: ``<``, ``>`` and ``&`` (and the
    two JavaScript line separators) as ``\\uXXXX`` escapes, which ``JSON.parse`` reads back unchanged."""
    text = json.dumps(data, allow_nan=False)
    for ch in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src __SCRIPT_HASH__; style-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:20px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
svg{background:#fff;border:1px solid #ccc}
#tip{position:absolute;display:none;background:#fff;border:1px solid #888;padding:8px;box-shadow:2px 2px 6px #aaa;
 font-size:12px;max-width:460px;pointer-events:none}
#tip img{max-width:440px;image-rendering:pixelated}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{cursor:pointer;background:#f3f3f3}td.l{text-align:left}
.legend span{display:inline-block;padding:1px 6px;margin-right:4px;color:#fff;border-radius:3px}
.gallery figure{display:inline-block;margin:6px;vertical-align:top}.gallery img{image-rendering:pixelated;max-width:360px}
.note{color:#a00}
</style></head><body>
<h1 id="title"></h1><p id="summary"></p>
<h2>Pareto front</h2>
<label>x: <select id="xsel"></select></label> <span class="legend" id="legend"></span>
<div><svg id="front" width="900" height="520"></svg></div>
<div id="tip"></div>
<h2>Hypervolume</h2>
<svg id="hvtrials" width="440" height="280"></svg> <svg id="hvtime" width="440" height="280"></svg>
<div id="est"></div>
<div id="anom"></div>
<h2>The knee and the front: inputs, reconstructions, samples</h2>
<p>Rows: validation inputs, their reconstructions (likelihood means), samples from the prior (means).</p>
<div class="gallery" id="gallery"></div>
<h2>Every trial</h2><p>Click a header to sort.</p>
<table id="table"></table>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
const esc = v => String(v).replace(/[&<>"']/g, m => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[m]));
const fmt = (v, d) => v === null || v === undefined ? "" : (Number.isInteger(v) || Math.abs(v) >= 1e4
  ? Math.round(v).toLocaleString("en") : Number(v).toPrecision(d || 5));
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function scale(vals, lo, hi, log) {
  let a = Math.min(...vals), b = Math.max(...vals);
  if (log) { a = Math.log10(a); b = Math.log10(b); }
  if (a === b) { a -= 1; b += 1; }
  const pad = (b - a) * 0.05; a -= pad; b += pad;
  const f = v => lo + ((log ? Math.log10(v) : v) - a) / (b - a) * (hi - lo);
  f.ticks = () => log ? logTicks(a, b) : linTicks(a, b);
  return f;
}
function niceStep(span, n) {  // 1, 2 or 5 times a power of ten, about span / n
  const raw = span / n, p = 10 ** Math.floor(Math.log10(raw)), m = raw / p;
  return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}
function linTicks(a, b) {
  const s = niceStep(b - a, 4), t = [];
  for (let u = Math.ceil(a / s) * s; u <= b + 1e-9 * s; u += s) t.push(+u.toPrecision(12));
  return t;
}
function logTicks(a, b) {  // a, b: log10 of the ends; ticks at 1, 2, 5 x 10^k (1 x 10^k only over many decades)
  const ms = b - a > 4 ? [1] : [1, 2, 5], t = [];
  for (let e = Math.floor(a); e <= Math.ceil(b); e++)
    for (const m of ms) { const u = Math.log10(m) + e; if (u >= a && u <= b) t.push(+(m * 10 ** e).toPrecision(12)); }
  return t.length >= 2 ? t : linTicks(10 ** a, 10 ** b);
}
function axes(svg, fx, fy, W, H, M, xl, yl) {
  el("line", {x1: M, y1: H - M, x2: W - 10, y2: H - M, stroke: "#444"}, svg);
  el("line", {x1: M, y1: 10, x2: M, y2: H - M, stroke: "#444"}, svg);
  for (const t of fx.ticks()) { const x = fx(t); el("line", {x1: x, y1: H - M, x2: x, y2: H - M + 4, stroke: "#444"}, svg);
    el("text", {x: x, y: H - M + 16, "text-anchor": "middle", "font-size": 10}, svg).textContent = fmt(t, 3); }
  for (const t of fy.ticks()) { const y = fy(t); el("line", {x1: M - 4, y1: y, x2: M, y2: y, stroke: "#444"}, svg);
    el("text", {x: M - 6, y: y + 3, "text-anchor": "end", "font-size": 10}, svg).textContent = fmt(t, 4); }
  el("text", {x: (M + W) / 2, y: H - 8, "text-anchor": "middle", "font-size": 12}, svg).textContent = xl;
  const yt = el("text", {x: 14, y: H / 2, "text-anchor": "middle", "font-size": 12,
    transform: `rotate(-90 14 ${H / 2})`}, svg); yt.textContent = yl;
}
const tip = document.getElementById("tip");
function showTip(p, ev) {
  let h = `<b>trial ${esc(p.trial)}</b> ${esc(p.spec_id)} (${esc(p.family)}, latent ${esc(p.latent_dim)})` +
    (p.knee ? " <b>knee</b>" : "") + (p.on_front ? " on the front" : "") + (p.feasible ? "" : " <span class=note>infeasible</span>") +
    (p.estimate ? " <span class=note>−ELBO ESTIMATED on the supernet</span>" : "") + "<br>";
  for (const o of new Set([...D.objectives, "neg_elbo", "bits_per_dim", "size_bytes", "params", "flops"]))
    if (p[o] !== undefined && p[o] !== null) h += `${esc(o)}: ${esc(fmt(p[o], 6))}<br>`;
  h += `mean bits (weighted by parameters): ${esc(fmt(p.mean_bits, 3))}<br>widths: ${esc(p.widths.join(", "))}<br>` +
    "bits per layer: " + esc(p.layers.map(l => `${l[0]}=${l[1]}`).join(", "));
  if (p.picture) h += `<br><img src="${esc(p.picture)}" alt="samples of trial ${esc(p.trial)}">`;
  tip.innerHTML = h; tip.style.display = "block";
  tip.style.left = (ev.pageX + 14) + "px"; tip.style.top = (ev.pageY + 10) + "px";
}
function drawFront(xo) {
  const svg = document.getElementById("front"); svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), M = 70;
  const yo = D.objectives.includes("neg_elbo") ? "neg_elbo" : D.objectives[0];
  const pts = D.points.filter(p => p[xo] !== null && p[yo] !== null && p[xo] !== undefined);
  if (!pts.length) { el("text", {x: 20, y: 40}, svg).textContent = "no completed trial"; return; }
  const xv = pts.map(p => p[xo]);
  const log = Math.min(...xv) > 0 && Math.max(...xv) / Math.min(...xv) > 30;
  const fx = scale(xv, M, W - 20, log), fy = scale(pts.map(p => p[yo]), H - M, 20, false);
  axes(svg, fx, fy, W, H, M, (D.labels[xo] || xo) + (log ? " (log)" : ""), D.labels[yo] || yo);
  // the 2-D front of the reported, feasible trials in this projection
  const base = pts.filter(p => p.reported && p.feasible).sort((a, b) => a[xo] - b[xo] || a[yo] - b[yo]);
  const front = []; let best = Infinity;
  for (const p of base) if (p[yo] < best) { front.push(p); best = p[yo]; }
  if (front.length > 1) {
    let d = `M${fx(front[0][xo])},${fy(front[0][yo])}`;
    for (let i = 1; i < front.length; i++) d += ` H${fx(front[i][xo])} V${fy(front[i][yo])}`;
    el("path", {d: d, fill: "none", stroke: "#000", "stroke-width": 1, opacity: 0.6}, svg);
  }
  const on = new Set(front.map(p => p.trial));
  for (const p of pts.sort((a, b) => on.has(a.trial) - on.has(b.trial))) {
    const c = el("circle", {cx: fx(p[xo]), cy: fy(p[yo]), r: on.has(p.trial) ? 7 : 4.5,
      fill: p.feasible ? p.colour : "#fff", stroke: on.has(p.trial) ? "#000" : (p.feasible ? "none" : "#888"),
      "fill-opacity": on.has(p.trial) ? 1 : (p.reported ? 0.45 : 0.2), class: on.has(p.trial) ? "pt front" : "pt",
      "data-trial": p.trial}, svg);
    if (p.knee) el("circle", {cx: fx(p[xo]), cy: fy(p[yo]), r: 11, fill: "none", stroke: "#d00", "stroke-width": 2}, svg);
    c.addEventListener("mousemove", ev => showTip(p, ev));
    c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  }
}
function drawLine(id, rows, xl, yl) {
  const svg = document.getElementById(id); svg.innerHTML = "";
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), M = 60;
  if (!rows.length) { el("text", {x: 20, y: 40}, svg).textContent = "no data"; return; }
  const fx = scale(rows.map(r => r[0]), M, W - 15, false), fy = scale(rows.map(r => r[1]), H - M, 15, false);
  axes(svg, fx, fy, W, H, M, xl, yl);
  el("polyline", {points: rows.map(r => `${fx(r[0])},${fy(r[1])}`).join(" "), fill: "none", stroke: "#1f77b4",
    "stroke-width": 2, class: "hv"}, svg);
}
function drawAnomaly() {
  if (!D.anomaly.length) return;
  const box = document.getElementById("anom");
  box.innerHTML = "<h2>Anomaly detection on the test split: ROC curves of the knee and the front, the knee's scores</h2>";
  for (const src of D.anomaly) { const im = document.createElement("img"); im.src = src; im.alt = "anomaly plot"; box.appendChild(im); }
}
function drawEstimates() {
  if (!D.remeasured.length) return;
  const box = document.getElementById("est");
  box.innerHTML = "<h2>Supernet estimate vs standalone measurement (re-measured front specs)</h2>";
  const svg = el("svg", {width: 440, height: 320, id: "estsvg"}, null); box.appendChild(svg);
  const M = 60, W = 440, H = 320, all = D.remeasured.flatMap(r => [r.measured, r.estimate]);
  const fx = scale(all, M, W - 15, false), fy = scale(all, H - M, 15, false);
  axes(svg, fx, fy, W, H, M, "measured −ELBO (standalone)", "estimated −ELBO (supernet)");
  const lo = Math.min(...all), hi = Math.max(...all);
  el("line", {x1: fx(lo), y1: fy(lo), x2: fx(hi), y2: fy(hi), stroke: "#999", "stroke-dasharray": "4 3"}, svg);
  for (const r of D.remeasured) el("circle", {cx: fx(r.measured), cy: fy(r.estimate), r: 5, fill: "#ff7f0e", class: "est"}, svg);
}
function drawTable() {
  const t = document.getElementById("table");
  const cols = ["trial", "state", "spec_id", ...D.objectives, "mean_bits", "on_front", "worker", "fail_reason"];
  let rows = D.trials.slice(), key = "trial", asc = true;
  function render() {
    rows.sort((a, b) => { const x = a[key], y = b[key];
      const c = (x === undefined || x === null) - (y === undefined || y === null) || (x < y ? -1 : x > y ? 1 : 0);
      return asc ? c : -c; });
    t.innerHTML = "<tr>" + cols.map(c => `<th data-k="${esc(c)}">${esc(c)}${c === key ? (asc ? " ▲" : " ▼") : ""}</th>`).join("") + "</tr>" +
      rows.map(r => "<tr data-row=\"" + esc(r.trial) + "\">" + cols.map(c => { const v = r[c];
        const s = typeof v === "number" ? fmt(v, 6) : (v === undefined || v === null ? "" : String(v));
        return `<td class="${typeof v === "number" ? "" : "l"}">${esc(s)}</td>`; }).join("") + "</tr>").join("");
    for (const th of t.querySelectorAll("th")) th.onclick = () => { const k = th.dataset.k; asc = k === key ? !asc : true; key = k; render(); };
  }
  render();
}
function drawGallery() {
  const g = document.getElementById("gallery");
  const shown = D.points.filter(p => p.picture).sort((a, b) => b.knee - a.knee || a.neg_elbo - b.neg_elbo);
  for (const p of shown) {
    const f = document.createElement("figure");
    f.innerHTML = `<img src="${esc(p.picture)}" alt="trial ${esc(p.trial)}"><figcaption>${p.knee ? "<b>knee</b>, " : ""}` +
      `trial ${esc(p.trial)} ${esc(p.spec_id)}: −ELBO ${esc(fmt(p.neg_elbo, 5))}${p.estimate ? " (ESTIMATE)" : ""}, ` +
      `${esc(fmt(p.size_bytes))} bytes, ${esc(fmt(p.mean_bits, 3))} bits/weight</figcaption>`;
    g.appendChild(f);
  }
  if (!shown.length) g.textContent = "no pictures (no trained checkpoint on the front)";
}
document.getElementById("title").textContent = `vaenas report: ${D.name}`;
const nc = D.trials.filter(t => t.state === "COMPLETE").length, nf = D.trials.filter(t => t.state === "FAIL").length;
document.getElementById("summary").textContent = `${D.storage} - ${D.trials.length} trials (${nc} complete, ${nf} failed); ` +
  `objectives ${D.objectives.join(", ")}; hypervolume ${D.hypervolume.toFixed(4)} (bounds ${JSON.stringify(D.bounds)}); ` +
  `${D.points.filter(p => p.on_front).length} on the front.`;
const sel = document.getElementById("xsel");
const xs = D.objectives.filter(o => o !== "neg_elbo");
for (const o of (xs.length ? xs : D.objectives)) { const op = document.createElement("option"); op.value = o; op.textContent = o; sel.appendChild(op); }
sel.onchange = () => drawFront(sel.value);
document.getElementById("legend").innerHTML = "colour = mean weight bits (weighted by parameters): " +
  D.bits.levels.map((b, i) => `<span style="background:${D.bits.colours[i]}">≈${b}</span>`).join("");
drawFront(sel.value);
drawLine("hvtrials", D.hv_trials, "trial number", "hypervolume");
drawLine("hvtime", D.hv_time, "wall time (s since the first trial started)", "hypervolume");
drawEstimates(); drawAnomaly(); drawTable(); drawGallery();
document.body.dataset.rendered = "yes";
</script></body></html>
"""


def _script_hash(page: str) -> str:
    """The CSP source of the page's one script: its SHA-256 (no other script, no inline handler runs)."""
    import base64
    import hashlib

    body = page.split("<script>", 1)[1].split("</script>", 1)[0]
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


_PAGE = _PAGE.replace("__SCRIPT_HASH__", _script_hash(_PAGE))
