/* charts.js: small hand-written SVG charts, no dependencies, no build step.
 *
 * Used by the model page (GET /) and embedded as text in the policy lab's HTML report,
 * so it must work from a <script> tag and inline alike: it defines one global, Charts.
 *
 *   Charts.line(el, {
 *     series: [{name, color?, points: [[x, y|null], ...], dash?}],   // null y = a gap
 *     x: {min?, max?, format?(x) -> string},                       // numbers, e.g. Unix s
 *     y: {min?, max?, format?(y) -> string, label?},
 *     marks: [{x, label?, color?}],                                 // vertical lines
 *     height?: 150,
 *   })
 *   Charts.bars(el, {labels: [..], series: [{name, color?, values: [..]}], stacked?,
 *                    y: {format?, label?}, height?})
 *   Charts.timeline(el, {lanes: [{name, spans: [{from, to, state, title?}]}],
 *                        x: {min, max, format?}, colors: {state: color}, marks?})
 *   Charts.legend(el, [{name, color}])
 *   Charts.color(i)            -> the i-th colour of the palette
 *   Charts.fmt.{num, ms, pct, usd, clock, day}
 *
 * Every function replaces el's content and returns el. A chart is drawn at its container's
 * width in pixels (text keeps its size; call again after a resize); hovering a line chart
 * shows the values at that x.
 */
(function (root) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
    "#db2777", "#4b5563", "#65a30d", "#9333ea"];
  var W = 640;  // the width when the container has none yet (hidden); else its own
  var PAD = {l: 52, r: 10, t: 8, b: 22};

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function svg(tag, attrs, parent) {
    var el = document.createElementNS(NS, tag);
    for (var k in attrs) { if (attrs[k] !== undefined) el.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(el);
    return el;
  }

  function text(parent, x, y, s, attrs) {
    var t = svg("text", Object.assign({x: x, y: y, "font-size": 10, fill: "#6b7280"}, attrs || {}), parent);
    t.textContent = s;
    return t;
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  var fmt = {
    num: function (v) {
      if (v === null || v === undefined || isNaN(v)) return "–";
      var a = Math.abs(v);
      if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
      if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
      if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
      if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
      if (a >= 100 || v === Math.round(v)) return v.toFixed(0);
      if (a >= 10) return v.toFixed(1);
      return a >= 1 ? v.toFixed(2) : String(Number(v.toPrecision(2)));
    },
    ms: function (v) {
      if (v === null || v === undefined || isNaN(v)) return "–";
      return v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms";
    },
    pct: function (v) {
      if (v === null || v === undefined || isNaN(v)) return "–";
      var p = v * 100;
      return (p === 0 ? "0" : p < 1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
    },
    usd: function (v) {
      if (v === null || v === undefined || isNaN(v)) return "–";
      return "$" + (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toPrecision(2));
    },
    clock: function (t) {  // Unix seconds -> HH:MM, local time
      var d = new Date(t * 1000);
      return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
    },
    day: function (s) { return String(s).slice(5); }  // "2025-01-31" -> "01-31"
  };

  // "Nice" ticks: 1, 2 or 5 times a power of ten, about n of them over [lo, hi].
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 5 ? 10 : err >= 2 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  // Ticks on a time axis (Unix seconds): whole minutes, quarter hours, hours...
  var TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  function timeTicks(lo, hi, n) {
    var step = TIME_STEPS[TIME_STEPS.length - 1];
    for (var i = 0; i < TIME_STEPS.length; i++) {
      if ((hi - lo) / TIME_STEPS[i] <= n) { step = TIME_STEPS[i]; break; }
    }
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }

  function extent(series, axis, key) {
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        var v = p[key];
        if (v !== null && v !== undefined && isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
      });
    });
    if (axis.min !== undefined) lo = axis.min;
    if (axis.max !== undefined) hi = axis.max;
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi <= lo) hi = lo + (lo === 0 ? 1 : Math.abs(lo));
    return [lo, hi];
  }

  function frame(el, height) {
    var w = Math.max(Math.floor(el.clientWidth) || W, 200);
    clear(el);
    var s = svg("svg", {viewBox: "0 0 " + w + " " + height, width: w, height: height,
      role: "img"}, el);
    s.style.display = "block";
    s.style.overflow = "visible";
    s.w = w;
    return s;
  }

  function line(el, opt) {
    var h = opt.height || 150;
    var s = frame(el, h), W = s.w;
    var series = opt.series || [];
    var xa = opt.x || {}, ya = opt.y || {};
    var xr = extent(series, xa, 0), yr = extent(series, Object.assign({min: 0}, ya), 1);
    var yt = ticks(yr[0], yr[1], 3);
    yr[1] = Math.max(yr[1], yt[yt.length - 1]);
    var iw = W - PAD.l - PAD.r, ih = h - PAD.t - PAD.b;
    var X = function (v) { return PAD.l + (v - xr[0]) / (xr[1] - xr[0]) * iw; };
    var Y = function (v) { return PAD.t + ih - (v - yr[0]) / (yr[1] - yr[0]) * ih; };
    var yf = ya.format || fmt.num, xf = xa.format || fmt.clock;
    yt.forEach(function (v) {
      svg("line", {x1: PAD.l, x2: W - PAD.r, y1: Y(v), y2: Y(v), stroke: "#e5e7eb"}, s);
      text(s, PAD.l - 4, Y(v) + 3, yf(v), {"text-anchor": "end"});
    });
    (xf === fmt.clock ? timeTicks : ticks)(xr[0], xr[1], 6).forEach(function (v) {
      text(s, X(v), h - 6, xf(v), {"text-anchor": "middle"});
    });
    if (ya.label) text(s, PAD.l, PAD.t - 1, ya.label, {"font-size": 9});
    (opt.marks || []).forEach(function (m) {
      if (m.x < xr[0] || m.x > xr[1]) return;
      var mk = svg("line", {x1: X(m.x), x2: X(m.x), y1: PAD.t, y2: PAD.t + ih,
        stroke: m.color || "#9ca3af", "stroke-dasharray": "3 3"}, s);
      if (m.label) svg("title", {}, mk).textContent = m.label;
    });
    series.forEach(function (ser, i) {
      var d = "", pen = false;
      ser.points.forEach(function (p) {
        if (p[1] === null || p[1] === undefined || !isFinite(p[1])) { pen = false; return; }
        d += (pen ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1);
        pen = true;
      });
      var c = ser.color || color(i);
      if (d) svg("path", {d: d, fill: "none", stroke: c, "stroke-width": 1.6,
        "stroke-dasharray": ser.dash, "vector-effect": "non-scaling-stroke"}, s);
      // A lone point between gaps would not show as a path: dot every point when sparse.
      if (ser.points.length <= 90) {
        ser.points.forEach(function (p) {
          if (p[1] !== null && p[1] !== undefined && isFinite(p[1])) {
            svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 1.6, fill: c}, s);
          }
        });
      }
    });
    hover(el, s, series, X, xr, h, xf, yf, W);
    return el;
  }

  // A vertical rule and a box listing each series' value at the x nearest the pointer.
  function hover(el, s, series, X, xr, h, xf, yf, W) {
    var rule = svg("line", {y1: PAD.t, y2: h - PAD.b, stroke: "#111827", "stroke-width": 0.5,
      visibility: "hidden"}, s);
    var tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.style.cssText = "position:absolute;pointer-events:none;display:none;background:#fff;" +
      "border:1px solid #d1d5db;padding:3px 6px;font:11px sans-serif;white-space:nowrap;z-index:5";
    el.style.position = "relative";
    el.appendChild(tip);
    s.addEventListener("mousemove", function (ev) {
      var box = s.getBoundingClientRect();
      var vx = (ev.clientX - box.left) / box.width * W;
      var x = xr[0] + (vx - PAD.l) / (W - PAD.l - PAD.r) * (xr[1] - xr[0]);
      var best = null, lines = [];
      series.forEach(function (ser, i) {
        var near = null;
        ser.points.forEach(function (p) {
          if (near === null || Math.abs(p[0] - x) < Math.abs(near[0] - x)) near = p;
        });
        if (near) {
          best = best === null || Math.abs(near[0] - x) < Math.abs(best - x) ? near[0] : best;
          lines.push([ser.color || color(i), ser.name + ": " + yf(near[1])]);
        }
      });
      if (best === null) return;
      rule.setAttribute("x1", X(best)); rule.setAttribute("x2", X(best));
      rule.setAttribute("visibility", "visible");
      // Built as nodes, not markup: the page's CSP forbids inline style attributes.
      while (tip.firstChild) tip.removeChild(tip.firstChild);
      var head = document.createElement("b");
      head.textContent = xf(best);
      tip.appendChild(head);
      lines.forEach(function (l) {
        var row = document.createElement("div"), sw = document.createElement("span");
        sw.textContent = "■ ";
        sw.style.color = l[0];
        row.appendChild(sw);
        row.appendChild(document.createTextNode(l[1]));
        tip.appendChild(row);
      });
      tip.style.display = "block";
      var left = ev.clientX - box.left + 12;
      tip.style.left = Math.min(left, box.width - tip.offsetWidth) + "px";
      tip.style.top = "0px";
    });
    s.addEventListener("mouseleave", function () {
      rule.setAttribute("visibility", "hidden");
      tip.style.display = "none";
    });
  }

  function bars(el, opt) {
    var h = opt.height || 150;
    var s = frame(el, h), W = s.w;
    var labels = opt.labels || [], series = opt.series || [], ya = opt.y || {};
    var n = labels.length, iw = W - PAD.l - PAD.r, ih = h - PAD.t - PAD.b;
    var top = 0;
    labels.forEach(function (_, j) {
      var sum = 0;
      series.forEach(function (ser) {
        var v = ser.values[j] || 0;
        sum = opt.stacked ? sum + v : Math.max(sum, v);
      });
      top = Math.max(top, sum);
    });
    var yt = ticks(0, top || 1, 3);
    top = Math.max(top || 1, yt[yt.length - 1]);
    var Y = function (v) { return PAD.t + ih - v / top * ih; };
    var yf = ya.format || fmt.num;
    yt.forEach(function (v) {
      svg("line", {x1: PAD.l, x2: W - PAD.r, y1: Y(v), y2: Y(v), stroke: "#e5e7eb"}, s);
      text(s, PAD.l - 4, Y(v) + 3, yf(v), {"text-anchor": "end"});
    });
    if (ya.label) text(s, PAD.l, PAD.t - 1, ya.label, {"font-size": 9});
    var slot = iw / Math.max(n, 1), gap = Math.min(4, slot * 0.2);
    var every = Math.ceil(n / 10);
    labels.forEach(function (lab, j) {
      var x0 = PAD.l + j * slot + gap / 2, bw = slot - gap, base = 0;
      series.forEach(function (ser, i) {
        var v = ser.values[j] || 0;
        var w = opt.stacked ? bw : bw / series.length;
        var x = opt.stacked ? x0 : x0 + i * w;
        var y0 = opt.stacked ? base : 0;
        var r = svg("rect", {x: x, y: Y(y0 + v), width: Math.max(w, 0.5),
          height: Math.max(Y(y0) - Y(y0 + v), 0), fill: ser.color || color(i)}, s);
        svg("title", {}, r).textContent = lab + " · " + ser.name + ": " + yf(v);
        if (opt.stacked) base += v;
      });
      if (j % every === 0) text(s, x0 + bw / 2, h - 6, (opt.xFormat || String)(lab), {"text-anchor": "middle"});
    });
    return el;
  }

  function timeline(el, opt) {
    var lanes = opt.lanes || [], xa = opt.x || {}, colors = opt.colors || {};
    var lh = 16, h = PAD.t + lanes.length * (lh + 4) + PAD.b;
    var s = frame(el, h), W = s.w;
    var lo = xa.min, hi = xa.max, iw = W - PAD.l - PAD.r;
    var X = function (v) { return PAD.l + (Math.min(Math.max(v, lo), hi) - lo) / (hi - lo) * iw; };
    var xf = xa.format || fmt.clock;
    lanes.forEach(function (lane, i) {
      var y = PAD.t + i * (lh + 4);
      text(s, PAD.l - 4, y + lh - 4, lane.name.length > 9 ? lane.name.slice(0, 8) + "…" : lane.name,
        {"text-anchor": "end"});
      svg("rect", {x: PAD.l, y: y, width: iw, height: lh, fill: "#f3f4f6"}, s);
      lane.spans.forEach(function (sp) {
        if (sp.to < lo || sp.from > hi) return;
        var r = svg("rect", {x: X(sp.from), y: y, width: Math.max(X(sp.to) - X(sp.from), 1),
          height: lh, fill: colors[sp.state] || "#9ca3af"}, s);
        svg("title", {}, r).textContent = lane.name + ": " + sp.state +
          (sp.title ? " (" + sp.title + ")" : "") + ", " + xf(sp.from) + "–" + xf(sp.to);
      });
    });
    (xf === fmt.clock ? timeTicks : ticks)(lo, hi, 6).forEach(function (v) {
      text(s, X(v), h - 6, xf(v), {"text-anchor": "middle"});
    });
    (opt.marks || []).forEach(function (m) {
      if (m.x < lo || m.x > hi) return;
      var mk = svg("line", {x1: X(m.x), x2: X(m.x), y1: PAD.t, y2: h - PAD.b,
        stroke: m.color || "#6b7280", "stroke-dasharray": "3 3"}, s);
      if (m.label) svg("title", {}, mk).textContent = m.label;
    });
    return el;
  }

  function legend(el, items) {
    clear(el);
    items.forEach(function (it, i) {
      var span = document.createElement("span");
      span.className = "legend-item";
      span.style.marginRight = "12px";
      var sw = document.createElement("span");
      sw.style.cssText = "display:inline-block;width:10px;height:10px;margin-right:4px;" +
        "vertical-align:middle;background:" + (it.color || color(i));
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it.name));
      el.appendChild(span);
    });
    return el;
  }

  root.Charts = {line: line, bars: bars, timeline: timeline, legend: legend, color: color,
    fmt: fmt, ticks: ticks, timeTicks: timeTicks};
})(typeof window !== "undefined" ? window : globalThis);
