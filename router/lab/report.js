/* The policy lab's HTML report: draws its charts with the model page's chart code
 * (charts.js, embedded before this), from the figures in the page's JSON block. */
(function () {
  "use strict";
  var doc = JSON.parse(document.getElementById("lab-data").textContent);
  var C = window.Charts;
  if (!C) { return; }
  var QS = ["p50", "p95", "p99"];

  doc.runs.forEach(function (run, i) {
    var t = run.share_over_time;
    var series = Object.keys(t.share).map(function (e, k) {
      var points = t.start_s.map(function (x, j) { return [x, t.share[e][j]]; });
      return {name: e, color: C.color(k), points: points};
    });
    C.line(document.getElementById("share-" + i), {
      series: series,
      x: {format: function (x) { return C.fmt.num(x) + " s"; }},
      y: {min: 0, max: 1, format: C.fmt.pct, label: "share"}
    });
    C.legend(document.getElementById("legend-" + i), series);
  });

  ["ttft_ms", "latency_ms"].forEach(function (key) {
    var series = doc.runs.map(function (run, i) {
      return {name: run.config, color: C.color(i), values: QS.map(function (q) { return run[key][q]; })};
    });
    C.bars(document.getElementById(key), {labels: QS, series: series, y: {format: C.fmt.ms}});
    C.legend(document.getElementById(key + "-legend"), series);
  });
})();
