// The live page: polls the proxy's own /tbg (the current view) and /tbg/history (the bounded
// history of published estimates) and draws them with plain SVG. No framework, no build step.
"use strict";
(function () {
  const BUCKETS = ["1", "2", "4", "8", "16", "32", "64+"];
  const REFRESH_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const DROP_MEANING = {
    queue_full: "the replay queue was full (replays could not keep up)",
    rate_limit: "the replays-per-minute budget was spent",
    budget: "the tokens-per-minute budget was spent",
    primary_incomplete: "the original request failed, was cut off or could not be parsed",
    opted_out: "the client sent X-TBG-Replay: never",
    shutdown: "still queued when the proxy stopped",
  };
  const state = { points: [], lastAt: null, offset: 0, interval: null, capacity: null,
                  persisted: false, history: true };

  // Three significant figures (as `tbg status` prints): T_bg is known to a few percent at best.
  function fmt(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "—";
    return String(Number(x.toPrecision(3)));
  }
  function raw(x) { return x === null || x === undefined ? "" : String(x); }
  function serverNow() { return Date.now() / 1000 + state.offset; }
  function age(seconds) {
    if (!Number.isFinite(seconds)) return "—";
    const s = Math.max(0, seconds);
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  function el(tag, attrs, parent, text) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function valueSpan(parent, field, value, text, cls) {
    return el("span", { "data-field": field, "data-value": raw(value), class: cls || "value" },
              parent, text === undefined ? fmt(value) : text);
  }

  function verdict(e) {
    if (!e.pairs) return ["none", "not enough data: no replay pairs yet"];
    if (e.estimate === null || e.lower === null || e.upper === null)
      return ["none", "no T_bg: the upstream returns no logprobs (" + e.method + ")"];
    if (e.ceiling === null || e.ceiling === undefined) return ["none", "no ceiling configured"];
    if (e.upper < e.ceiling) return ["under", "under the ceiling " + fmt(e.ceiling)];
    if (e.lower > e.ceiling) return ["over", "above the ceiling " + fmt(e.ceiling)];
    return ["undecided", "undecided against the ceiling " + fmt(e.ceiling) +
            " (the interval contains it): more pairs needed"];
  }

  // -- charts ------------------------------------------------------------------------------------
  function niceStep(span) {
    const raw = span / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }
  function frame(parent, cls, title) {
    const box = el("div", { class: "chart" }, parent);
    el("h4", {}, box, title);
    const W = 520, H = 220, m = { l: 52, r: 14, t: 12, b: 30 };
    const svg = el("svg:svg", { class: cls, viewBox: `0 0 ${W} ${H}`, role: "img",
                                "aria-label": title }, box);
    return { svg, W, H, m, pw: W - m.l - m.r, ph: H - m.t - m.b };
  }
  function yAxis(f, ymax) {
    const step = niceStep(ymax);
    const y = (v) => f.m.t + f.ph * (1 - v / ymax);
    for (let v = 0; v <= ymax + 1e-12; v += step) {
      el("svg:line", { class: "grid", x1: f.m.l, x2: f.W - f.m.r, y1: y(v), y2: y(v) }, f.svg);
      el("svg:text", { x: f.m.l - 6, y: y(v) + 4, "text-anchor": "end" }, f.svg, fmt(v));
    }
    el("svg:line", { class: "axis", x1: f.m.l, x2: f.m.l, y1: f.m.t, y2: f.m.t + f.ph }, f.svg);
    el("svg:line", { class: "axis", x1: f.m.l, x2: f.W - f.m.r, y1: f.m.t + f.ph,
                     y2: f.m.t + f.ph }, f.svg);
    return y;
  }
  function ceilingLine(f, y, ceiling, ymax) {
    if (!Number.isFinite(ceiling)) return;
    if (ceiling > ymax) {  // far above the data: say where it is rather than flatten the line
      el("svg:text", { class: "ceiling-label", x: f.W - f.m.r - 2, y: f.m.t + 10,
                       "text-anchor": "end" }, f.svg, "ceiling " + fmt(ceiling) + " (above) ↑");
      return;
    }
    el("svg:line", { class: "ceiling", x1: f.m.l, x2: f.W - f.m.r, y1: y(ceiling),
                     y2: y(ceiling) }, f.svg);
    el("svg:text", { class: "ceiling-label", x: f.W - f.m.r - 2, y: y(ceiling) - 4,
                     "text-anchor": "end" }, f.svg, "ceiling " + fmt(ceiling));
  }
  // The data's range; the ceiling joins it when it is near (within 4x), else it is only named.
  function yMax(values, ceiling) {
    let top = 0;
    for (const v of values) if (Number.isFinite(v)) top = Math.max(top, v);
    if (Number.isFinite(ceiling) && (top === 0 || ceiling < 4 * top)) top = Math.max(top, ceiling);
    return top > 0 ? top * 1.15 : 0.1;
  }
  function clock(t, withDate) {
    const d = new Date(t * 1000), p = (n) => String(n).padStart(2, "0");
    const hms = `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    return withDate ? `${d.getMonth() + 1}/${d.getDate()} ${hms}` : hms;
  }

  function timeChart(parent, e, series) {
    const f = frame(parent, "chart-time", "T_bg over time (line: estimate; band: 95 % interval)");
    const pts = series.filter((p) => p.estimate !== null);
    if (!pts.length) {
      el("svg:text", { class: "empty", x: f.W / 2, y: f.H / 2, "text-anchor": "middle" },
         f.svg, "no estimate yet: the first compared replay draws the first point");
      return;
    }
    // The range: every estimate and the current upper bound. An early, wide interval (the first
    // trials' upper bound can reach the grid's top, 1) is clipped at the top, not allowed to
    // flatten the rest of the line.
    const last = pts[pts.length - 1];
    const ymax = yMax(pts.map((p) => p.estimate).concat([last.upper]), e.ceiling);
    const y0 = yAxis(f, ymax);
    const y = (v) => y0(Math.min(v, ymax));
    if (pts.some((p) => p.upper !== null && p.upper > ymax))
      el("svg:text", { x: f.m.l + 4, y: f.m.t + 10 }, f.svg, "band clipped at the top ↑");
    let t0 = pts[0].at, t1 = pts[pts.length - 1].at;
    const span = 10 * (state.interval || 15);  // at least ten history points wide
    if (t1 - t0 < span) t0 = t1 - span;
    const x = (t) => f.m.l + f.pw * (t - t0) / (t1 - t0);
    const withDate = t1 - t0 > 86400;
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (t1 - t0) * i / 4;
      el("svg:text", { x: x(t), y: f.H - 10, "text-anchor": i === 0 ? "start" : i === 4 ? "end"
                       : "middle" }, f.svg, clock(t, withDate));
    }
    // Break the line where points are missing (a restart, a gap in the history).
    const gap = 3 * (state.interval || 15);
    const runs = [];
    let run = [];
    for (const p of pts) {
      if (run.length && p.at - run[run.length - 1].at > gap) { runs.push(run); run = []; }
      run.push(p);
    }
    runs.push(run);
    for (const r of runs) {
      const banded = r.filter((p) => p.lower !== null && p.upper !== null);
      if (banded.length) {
        const up = banded.map((p) => `${x(p.at)},${y(p.upper)}`);
        const lo = banded.slice().reverse().map((p) => `${x(p.at)},${y(p.lower)}`);
        el("svg:polygon", { class: "band", points: up.concat(lo).join(" ") }, f.svg);
      }
      const d = r.map((p, i) => `${i ? "L" : "M"}${x(p.at)},${y(p.estimate)}`).join(" ");
      el("svg:path", { class: "est", d }, f.svg);
      if (r.length === 1) el("svg:circle", { class: "dot", cx: x(r[0].at), cy: y(r[0].estimate),
                                             r: 3 }, f.svg);
    }
    ceilingLine(f, y, e.ceiling, ymax);
  }

  function loadChart(parent, e) {
    const f = frame(parent, "chart-load", "T_bg by load (requests in flight at the upstream)");
    const by = e.by_load || {};
    const have = BUCKETS.filter((b) => by[b] && by[b].estimate !== null);
    const band = f.pw / BUCKETS.length;
    const x = (b) => f.m.l + band * (BUCKETS.indexOf(b) + 0.5);
    for (const b of BUCKETS)
      el("svg:text", { x: x(b), y: f.H - 10, "text-anchor": "middle" }, f.svg, b);
    if (!have.length) {
      el("svg:text", { class: "empty", x: f.W / 2, y: f.H / 2, "text-anchor": "middle" },
         f.svg, "no load bucket has an estimate yet");
      return;
    }
    const ymax = yMax(have.flatMap((b) => [by[b].upper, by[b].estimate]), e.ceiling);
    const y = yAxis(f, ymax);
    for (const b of have) {
      const s = by[b];
      if (s.lower !== null && s.upper !== null)
        el("svg:line", { class: "err", x1: x(b), x2: x(b), y1: y(s.lower), y2: y(s.upper) }, f.svg);
      el("svg:circle", { class: "dot", cx: x(b), cy: y(s.estimate), r: 4, "data-bucket": b,
                         "data-estimate": raw(s.estimate), "data-lower": raw(s.lower),
                         "data-upper": raw(s.upper), "data-pairs": raw(s.pairs) }, f.svg);
      el("svg:text", { x: x(b) + 7, y: y(s.estimate) - 6 }, f.svg, s.pairs + " pairs");
    }
    ceilingLine(f, y, e.ceiling, ymax);
  }

  // T_bg per request class (route × tools/json/plain × streaming), as /tbg's by_class lists them.
  function classTable(parent, e) {
    const box = el("div", { class: "classes" }, parent);
    el("h4", {}, box, "T_bg by request class");
    const rows = e.by_class || [];
    if (!rows.length) {
      el("p", { class: "note" }, box, "no request class has a compared replay yet");
      return;
    }
    const table = el("table", { class: "class-table" }, box);
    const head = el("tr", {}, el("thead", {}, table));
    for (const h of ["route", "kind", "streaming", "T_bg", "95 % interval", "pairs", "diverged",
                     "method"]) el("th", {}, head, h);
    const body = el("tbody", {}, table);
    for (const c of rows) {
      const name = `${c.route}/${c.kind}/${c.streaming}`;
      const tr = el("tr", { "data-class": name }, body);
      el("td", {}, tr, c.route);
      el("td", {}, tr, c.kind);
      el("td", {}, tr, c.streaming);
      valueSpan(el("td", { class: "num" }, tr), "class-estimate", c.estimate);
      const band = el("td", { class: "num" }, tr);
      band.append("[");
      valueSpan(band, "class-lower", c.lower, undefined, "bound");
      band.append(", ");
      valueSpan(band, "class-upper", c.upper, undefined, "bound");
      band.append("]");
      valueSpan(el("td", { class: "num" }, tr), "class-pairs", c.pairs, String(c.pairs));
      valueSpan(el("td", { class: "num" }, tr), "class-diverged", c.diverged, String(c.diverged));
      valueSpan(el("td", {}, tr), "class-method", c.method, c.method);
    }
  }

  // -- sections ----------------------------------------------------------------------------------
  function seriesFor(e, published) {
    const out = [];
    for (const p of state.points)
      for (const s of p.estimates)
        if (s.upstream === e.upstream && s.model_name === e.model_name)
          out.push({ at: p.at, estimate: s.estimate, lower: s.lower, upper: s.upper });
    // The current view is newer than the last history point: end the line where the page reads.
    if (!out.length || published > out[out.length - 1].at)
      out.push({ at: published, estimate: e.estimate, lower: e.lower, upper: e.upper });
    return out;
  }

  function card(parent, e, report) {
    const c = el("article", { class: "card", "data-upstream": e.upstream,
                              "data-model": e.model_name }, parent);
    el("h3", {}, c, `${e.model_name} on ${e.upstream}`);
    const head = el("p", { class: "headline" }, c);
    head.append("T_bg = ");
    valueSpan(head, "estimate", e.estimate);
    head.append("  [");
    valueSpan(head, "lower", e.lower, undefined, "bound");
    head.append(", ");
    valueSpan(head, "upper", e.upper, undefined, "bound");
    head.append("]  ");
    const [cls, says] = verdict(e);
    el("span", { class: "verdict " + cls, "data-field": "verdict", "data-value": cls }, head, says);
    const facts = el("p", { class: "facts" }, c);
    valueSpan(facts, "pairs", e.pairs, String(e.pairs), "fact");
    facts.append(" replay pairs compared, ");
    valueSpan(facts, "diverged", e.diverged, String(e.diverged), "fact");
    facts.append(" diverged · method ");
    valueSpan(facts, "method", e.method, e.method, "fact");
    facts.append(" · ceiling ");
    valueSpan(facts, "ceiling", e.ceiling, undefined, "fact");
    facts.append(" · last comparison ");
    const since = e.last_update ? serverNow() - e.last_update : NaN;
    valueSpan(facts, "age", e.last_update,
              e.last_update ? age(since) + " ago" : "none yet", "fact age");
    const charts = el("div", { class: "charts" }, c);
    timeChart(charts, e, seriesFor(e, report.published_at));
    loadChart(charts, e);
    classTable(c, e);
  }

  function accounting(report) {
    const body = document.querySelector("#accounting tbody");
    body.textContent = "";
    const acc = report.accounting || {};
    const row = (label, field, value, cls) => {
      const tr = el("tr", { "data-field": field, class: cls || "" }, body);
      el("td", {}, tr, label);
      el("td", { class: "num", "data-value": raw(value) }, tr, String(value));
      return tr;
    };
    if (report.eligible !== undefined)
      row("eligible (greedy, one choice)", "eligible", report.eligible);
    row("sampled", "sampled", acc.sampled || 0);
    row("replayed and compared", "replayed", acc.replayed || 0);
    row("dropped", "dropped", acc.dropped || 0);
    for (const [reason, n] of Object.entries(report.dropped_by_reason || {})) {
      const tr = row(reason, "dropped:" + reason, n, "reason");
      tr.setAttribute("data-reason", reason);
    }
    row("failed (every replay failed)", "failed", acc.failed || 0);
    row("waiting in the replay queue", "queue_depth", report.queue_depth || 0);
    row("replays in flight", "replays_in_flight", report.replays_in_flight || 0);
    document.getElementById("accounting-section").hidden = false;
  }

  function unmeasured(report) {
    const ul = document.getElementById("unmeasured");
    ul.textContent = "";
    const li = (text, field) => el("li", field ? { "data-field": field } : {}, ul, text);
    const acc = report.accounting || {};
    li("Requests that are not greedy (temperature above 0, or absent; n or best_of above 1) " +
       "are not eligible: never replayed, and not counted on this page.", "not-eligible");
    if (report.eligible !== undefined && acc.sampled !== undefined)
      li(`${Math.max(0, report.eligible - acc.sampled)} of ${report.eligible} eligible requests ` +
         "were not sampled (the sample rate; X-TBG-Replay: always samples one whatever the rate).",
         "not-sampled");
    for (const [reason, n] of Object.entries(report.dropped_by_reason || {}))
      li(`${n} sampled requests dropped, ${reason}: ${DROP_MEANING[reason] || reason}.`,
         "drop:" + reason);
    if (acc.failed) li(`${acc.failed} sampled requests failed: every replay failed.`, "failed");
    for (const e of report.estimates || [])
      if (e.pairs && e.estimate === null)
        li(`${e.model_name} on ${e.upstream}: the upstream returns no logprobs, so only ` +
           "divergences are counted (method " + e.method + "), not a temperature.", "no-logprobs");
    li("Estimates are split by upstream, model, load bucket and request class (route, tools or " +
       "JSON output or neither, streaming or not) only: prompt length, client and the other " +
       "parameters of a request are not recorded.", "classes");
    li(state.persisted
       ? "The history is kept across restarts (shadow.history.path); the estimate itself starts " +
         "again from its first trial after a restart (a gap in the line)."
       : "The history is in memory only: a restart starts it empty (set shadow.history.path " +
         "to keep it).", "history");
    document.getElementById("unmeasured-section").hidden = false;
  }

  function settings(report) {
    const c = report.config || {};
    const parts = [`${c.replays} replays per sampled request`,
                   `estimator memory: half-life ${c.half_life_trials} trials`,
                   `logprobs augmentation ${c.augment_logprobs ? "on" : "off"}`,
                   `prompt text in exemplars ${c.record_text ? "kept" : "not kept"}`];
    if (state.interval !== null)
      parts.push(`history: a point every ${state.interval} s, the last ${state.capacity} kept`);
    document.getElementById("config").textContent = parts.join(" · ");
    document.getElementById("config-section").hidden = false;
  }

  function render(report) {
    const status = document.getElementById("status");
    status.classList.remove("stale");
    if (report.shadow === "off") {
      document.getElementById("off").hidden = false;
      document.getElementById("off-message").textContent = report.message || "";
      status.textContent = "nothing is measured";
      return;
    }
    const published = report.published_at;
    status.textContent = "view published " + age(serverNow() - published) + " ago · " +
      (report.estimates || []).length + " model(s) · refreshed every " + REFRESH_MS / 1000 + " s";
    status.setAttribute("data-published-at", raw(published));
    const host = document.getElementById("estimates");
    host.textContent = "";
    if (!(report.estimates || []).length)
      el("p", { class: "note" }, host, "No estimate yet: no replay has been compared.");
    for (const e of report.estimates || []) card(host, e, report);
    accounting(report);
    unmeasured(report);
    settings(report);
    document.body.setAttribute("data-rendered", "1");
  }

  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store" });
    if (!resp.ok) {
      const err = new Error(`${url}: HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  async function refresh() {
    try {
      if (state.history) {
        const url = "tbg/history" + (state.lastAt !== null ? "?since=" + state.lastAt : "");
        try {
          const h = await getJSON(url);
          state.offset = h.now - Date.now() / 1000;
          state.interval = h.interval_seconds;
          state.capacity = h.capacity;
          state.persisted = h.persisted;
          state.points = state.points.concat(h.points).slice(-h.capacity);
          if (state.points.length) state.lastAt = state.points[state.points.length - 1].at;
        } catch (err) {
          if (err.status !== 404) throw err;
          state.history = false;  // shadow replay off: there is no history to read
        }
      }
      render(await getJSON("tbg"));
    } catch (err) {
      const status = document.getElementById("status");
      status.textContent = "cannot read /tbg (" + err.message + "): showing the last data";
      status.classList.add("stale");
    }
    setTimeout(refresh, REFRESH_MS);
  }
  refresh();
})();
