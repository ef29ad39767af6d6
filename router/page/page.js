/* page.js: the model page. Fetches GET /admin/stats every few seconds and draws it.
 *
 * With an admin key configured, /admin/stats answers 401 until the page sends the key:
 * the page then asks for it once, keeps it in sessionStorage (this tab only) and sends it
 * as a Bearer token. Without data it shows nothing but the prompt; it never shows the key.
 * Everything is built with DOM calls and textContent (no markup from data), and loads
 * nothing but /page/* and /admin/stats: the CSP forbids anything else.
 */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  // ?refresh=SECONDS (at least 1): how often the page asks again; 5 s by default.
  var REFRESH_MS = Math.max(1000, 1000 * (Number(params.get("refresh")) || 5));
  var KEY = "llm-router-admin-key";
  var F = Charts.fmt;
  var state = {route: params.get("route") || "", window: params.get("window") || "1h",
    timer: null, colors: {}};
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function table(node, head, rows) {
    clear(node);
    node.appendChild(el("thead", null, [el("tr", null, head.map(function (h) {
      return el("th", {text: h, cls: h === "" ? "left" : ""});
    }))]));
    var body = el("tbody");
    rows.forEach(function (r) { body.appendChild(r); });
    if (!rows.length) body.appendChild(el("tr", null, [el("td", {text: "nothing yet", cls: "empty", colspan: head.length})]));
    node.appendChild(body);
  }

  function colorOf(id) {
    if (!(id in state.colors)) state.colors[id] = Charts.color(Object.keys(state.colors).length);
    return state.colors[id];
  }

  function swatch(id) {
    var s = el("span", {cls: "swatch"});
    s.style.background = colorOf(id);
    return s;
  }

  // -- fetching ---------------------------------------------------------------------

  function load() {
    clearTimeout(state.timer);
    var key = sessionStorage.getItem(KEY);
    var url = "/admin/stats?window=" + encodeURIComponent(state.window) +
      (state.route ? "&route=" + encodeURIComponent(state.route) : "");
    var headers = key ? {Authorization: "Bearer " + key} : {};
    fetch(url, {headers: headers, cache: "no-store", credentials: "omit"}).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) {
        askForKey(resp.status === 403 ? "That key was refused." : "");
        return null;
      }
      return resp.json().then(function (body) {
        if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
        return body;
      });
    }).then(function (doc) {
      if (!doc) return;
      $("keybox").hidden = true;
      $("main").hidden = false;
      render(doc);
      $("status").textContent = "updated " + new Date(doc.generated_at * 1000).toLocaleTimeString();
      state.timer = setTimeout(load, REFRESH_MS);
    }).catch(function (err) {
      $("status").textContent = "error: " + err.message;
      state.timer = setTimeout(load, REFRESH_MS);
    });
  }

  function askForKey(message) {
    sessionStorage.removeItem(KEY);
    clear($("now")); clear($("charts")); clear($("pricing")); clear($("activity")); clear($("failures"));
    $("main").hidden = true;
    $("keybox").hidden = false;
    $("keyerr").textContent = message;
    $("status").textContent = "admin key needed";
    $("key").focus();
  }

  $("keyform").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var key = $("key").value.trim();
    $("key").value = "";
    if (key) { sessionStorage.setItem(KEY, key); load(); }
  });

  $("route").addEventListener("change", function () {
    state.route = $("route").value;
    state.colors = {};
    history.replaceState(null, "", "?route=" + encodeURIComponent(state.route) + "&window=" + state.window);
    load();
  });

  Array.prototype.forEach.call(document.querySelectorAll("#windows button"), function (b) {
    b.addEventListener("click", function () {
      state.window = b.getAttribute("data-window");
      Array.prototype.forEach.call(document.querySelectorAll("#windows button"), function (o) {
        o.className = o === b ? "on" : "";
      });
      history.replaceState(null, "", "?route=" + encodeURIComponent(state.route) + "&window=" + state.window);
      load();
    });
  });

  // -- drawing ----------------------------------------------------------------------

  function render(doc) {
    state.route = doc.route;
    var sel = $("route");
    if (sel.options.length !== doc.routes.length || sel.value !== doc.route) {
      clear(sel);
      doc.routes.forEach(function (r) { sel.appendChild(el("option", {value: r, text: r})); });
      sel.value = doc.route;
    }
    var p = doc.policy;
    var weights = Object.keys(p.weights || {}).map(function (k) { return k + " " + p.weights[k]; });
    $("policy").textContent = "policy " + p.name + " (" + p.strategy +
      (weights.length ? ": " + weights.join(", ") : "") + (p.pick ? ", pick " + p.pick : "") + ")";
    $("config").textContent = "config " + (doc.config.version || "–") +
      (doc.config.last_error ? " · last edit rejected: " + doc.config.last_error.length + " error(s)" : "");
    doc.now.forEach(function (e) { colorOf(e.id); });
    renderNow(doc);
    renderCharts(doc);
    renderPricing(doc);
    renderActivity(doc);
    renderFailures(doc);
  }

  function stateBadge(e) {
    var label = {healthy: "healthy", cooldown: "cooldown", half_open: "half-open", disabled: "disabled"}[e.state] || e.state;
    if (e.state === "cooldown" && e.cooldown_left_s !== null) label += " · " + Math.ceil(e.cooldown_left_s) + " s left";
    var cell = el("td", {cls: "left", "data-k": "state"}, [el("span", {cls: "badge state-" + e.state, text: label})]);
    if (e.reason) cell.appendChild(el("span", {cls: "sub", text: e.reason}));
    return cell;
  }

  function renderNow(doc) {
    var rows = doc.now.slice().sort(function (a, b) { return (a.rank || 99) - (b.rank || 99); }).map(function (e) {
      var l = e.loads || {}, s = e.stats || {};
      var terms = Object.keys(e.terms || {}).map(function (k) { return k + " " + e.terms[k].toFixed(3); });
      var why = el("td", {cls: "why", "data-k": "why"}, [terms.length ? terms.join(" · ") : "–"]);
      if (e.explore) why.appendChild(el("span", {cls: "flag", text: "explore"}));
      if (e.probing) why.appendChild(el("span", {cls: "flag", text: "probing"}));
      function td(k, v) { return el("td", {"data-k": k, text: v}); }
      return el("tr", {"data-endpoint": e.id}, [
        el("td", null, [swatch(e.id), el("b", {text: e.id}), el("span", {cls: "sub", text: e.provider + " · " + e.model})]),
        stateBadge(e),
        td("rank", e.rank === null ? "–" : "#" + e.rank),
        td("score", e.score === null || e.score === undefined ? "–" : e.score.toFixed(3)),
        td("in_flight", String(e.in_flight)),
        td("share", F.pct(e.share)),
        td("requests", F.num(s.requests)),
        td("ttft", F.ms(l.ttft_ms)),
        td("latency", F.ms(l.latency_ms)),
        td("throughput", l.tokens_per_s === undefined ? "–" : F.num(l.tokens_per_s) + " tok/s"),
        td("error_rate", F.pct(s.error_rate)),
        td("tool_call_error_rate", F.pct(s.tool_call_error_rate)),
        td("output_error_rate", F.pct(s.output_error_rate)),
        why
      ]);
    });
    table($("now"), ["endpoint", "state", "rank", "score", "in flight", "share 1 min", "requests",
      "TTFT", "latency", "throughput", "errors", "tool-call errors", "output errors", "why (score terms)"], rows);
  }

  var CHARTS = [
    ["Throughput", [["tokens_per_s", ""]], F.num, "tok/s"],
    ["Latency (upstream, p50 / p95)", [["latency_ms_p50", ""], ["latency_ms_p95", "4 3"]], F.ms],
    ["E2E latency (client, p50 / p95)", [["e2e_ms_p50", ""], ["e2e_ms_p95", "4 3"]], F.ms],
    ["TTFT (p50 / p95)", [["ttft_ms_p50", ""], ["ttft_ms_p95", "4 3"]], F.ms],
    ["Error rate", [["error_rate", ""]], F.pct],
    ["Tool-call error rate", [["tool_call_error_rate", ""]], F.pct],
    ["Output error rate", [["output_error_rate", ""]], F.pct],
    ["Requests per minute", [["requests", ""]], F.num],
    ["In flight (mean)", [["in_flight", ""]], F.num]
  ];

  function renderCharts(doc) {
    var ids = doc.now.map(function (e) { return e.id; });
    Charts.legend($("legend"), ids.map(function (id) { return {name: id, color: colorOf(id)}; }));
    var marks = doc.reloads.map(function (r) {
      return {x: r.at, label: (r.ok ? "reload " + r.version : "rejected edit: " + r.errors.length + " error(s)"),
        color: r.ok ? "#6b7280" : "#dc2626"};
    });
    var perMin = doc.step_s / 60;
    var box = clear($("charts"));
    CHARTS.forEach(function (spec) {
      var series = [];
      ids.forEach(function (id) {
        var s = doc.series[id];
        if (!s) return;
        spec[1].forEach(function (m) {
          series.push({name: id + (m[1] ? " p95" : ""), color: colorOf(id), dash: m[1] || undefined,
            points: s.t.map(function (t, i) {
              var v = s[m[0]][i];
              if (m[0] === "requests" && v !== null) v = v / perMin;
              return [t + doc.step_s / 2, v];
            })});
        });
      });
      var div = el("div", {cls: "chart"});
      div.appendChild(el("h3", {text: spec[0]}));
      var plot = el("div");
      div.appendChild(plot);
      box.appendChild(div);
      Charts.line(plot, {series: series, x: {min: doc.from, max: doc.to}, y: {format: spec[2]}, marks: marks, height: 130});
    });
    Charts.timeline($("timeline"), {
      lanes: ids.map(function (id) {
        return {name: id, spans: (doc.timeline[id] || []).map(function (sp) {
          return {from: sp.from, to: sp.to, state: sp.state, title: sp.reason};
        })};
      }),
      x: {min: doc.from, max: doc.to},
      colors: {healthy: "#86efac", cooldown: "#f87171", half_open: "#fbbf24", disabled: "#d1d5db"},
      marks: marks
    });
  }

  function renderPricing(doc) {
    var p = doc.pricing;
    if (!p.available) { table($("pricing"), [p.error], []); return; }
    var rows = p.endpoints.map(function (e) {
      var c = e.configured || {}, f = e.effective || {}, t = e.tokens || {};
      function pair(k) {
        var conf = c[k] === null || c[k] === undefined ? (k.indexOf("cache") === 0 && c.input !== undefined ? c.input : null) : c[k];
        return el("td", {"data-k": k}, [F.usd(f[k]), el("span", {cls: "sub", text: "configured " + F.usd(conf)})]);
      }
      return el("tr", {"data-endpoint": e.id}, [
        el("td", null, [swatch(e.id), e.id]),
        pair("input"), pair("output"), pair("cache_read"), pair("cache_write"),
        el("td", {text: F.usd(f.blended)}),
        el("td", {text: F.num(e.requests)}),
        el("td", {text: F.num(t.prompt_tokens) + " / " + F.num(t.completion_tokens)}),
        el("td", {"data-k": "cache_hit_rate", text: F.pct(e.cache_hit_rate)}),
        el("td", {"data-k": "cache_saved_usd", text: F.usd(e.cache_saved_usd)}),
        el("td", {text: F.usd(e.cost)})
      ]);
    });
    table($("pricing"), ["endpoint", "input", "output", "cache read", "cache write", "blended",
      "requests", "tokens in / out", "cache hits", "cache saved", "cost"], rows);
  }

  function renderActivity(doc) {
    var a = doc.activity;
    if (!a.available) { clear($("act-requests")); clear($("act-tokens")); table($("activity"), [a.error], []); return; }
    var days = a.per_day;
    var labels = days.map(function (d) { return d.day; });
    Charts.bars($("act-requests"), {labels: labels, xFormat: F.day, height: 120,
      series: [{name: "requests", values: days.map(function (d) { return d.requests; }), color: "#2563eb"}]});
    Charts.bars($("act-tokens"), {labels: labels, xFormat: F.day, stacked: true, height: 120, series: [
      {name: "prompt", values: days.map(function (d) { return d.prompt_tokens; }), color: "#0891b2"},
      {name: "completion", values: days.map(function (d) { return d.completion_tokens; }), color: "#d97706"}]});
    var rows = days.filter(function (d) { return d.requests; }).reverse().map(function (d) {
      return el("tr", null, [el("td", {text: d.day}), el("td", {text: F.num(d.requests)}),
        el("td", {text: F.num(d.errors)}), el("td", {text: F.num(d.prompt_tokens)}),
        el("td", {text: F.num(d.completion_tokens)}), el("td", {text: F.num(d.reasoning_tokens)}),
        el("td", {text: F.usd(d.cost)})]);
    });
    table($("activity"), ["day (UTC)", "requests", "errors", "prompt", "completion", "reasoning", "cost"], rows);
  }

  function renderFailures(doc) {
    var rows = doc.failures.slice(0, 50).map(function (f) {
      return el("tr", null, [
        el("td", {text: new Date(f.at * 1000).toLocaleTimeString()}),
        el("td", {cls: "left", text: f.endpoint || "(none)"}),
        el("td", {cls: "left", text: f.reason || "–"}),
        el("td", {text: f.status === null ? "–" : String(f.status)}),
        el("td", {cls: "left", text: f.request_id})
      ]);
    });
    table($("failures"), ["time", "endpoint", "reason", "status", "request id"], rows);
  }

  Array.prototype.forEach.call(document.querySelectorAll("#windows button"), function (o) {
    o.className = o.getAttribute("data-window") === state.window ? "on" : "";
  });
  load();
})();
