// Turnout dashboard: polls /v1/router/state and /v1/router/history, draws SVG charts.
// Plain JS, no dependencies, no build step. ?refresh_s=N sets the polling period (default 5).
(function () {
  "use strict";

  var NS = "http://www.w3.org/2000/svg";
  var params = new URLSearchParams(window.location.search);
  var refreshMs = Math.max(0.2, Number(params.get("refresh_s")) || 5) * 1000;
  var windowSelect = document.getElementById("window");
  if (params.get("window_s")) {
    var opt = document.createElement("option");
    opt.value = params.get("window_s");
    opt.textContent = params.get("window_s") + " s";
    windowSelect.appendChild(opt);
    windowSelect.value = opt.value;
  }
  var PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#9333ea", "#dc2626", "#0891b2", "#db2777", "#65a30d",
                 "#7c3aed", "#ea580c"];
  var colors = {};
  var updates = 0;
  var timer = null;

  function colorOf(model) {
    if (!(model in colors)) colors[model] = PALETTE[Object.keys(colors).length % PALETTE.length];
    return colors[model];
  }

  function svgEl(tag, attrs, parent, text) {
    var node = document.createElementNS(NS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function htmlEl(tag, attrs, parent, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function usd(x) {
    if (x === null || x === undefined) return "n/a";
    if (x === 0) return "$0";
    return "$" + (Math.abs(x) >= 0.01 ? x.toFixed(4) : x.toPrecision(3));
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function hhmm(ms, seconds) {
    var d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + (seconds ? ":" + pad(d.getSeconds()) : "");
  }

  function box(svg, top) {
    var vb = svg.viewBox.baseVal;
    return { w: vb.width, h: vb.height, l: 46, r: 10, t: top || 14, b: 22 };
  }

  // 1234 -> "1234", 12345 -> "12k", 6789012 -> "6.8M": counts that fit a narrow column.
  function compact(n) {
    n = Math.round(n);
    if (Math.abs(n) < 10000) return String(n);
    if (Math.abs(n) < 1e6) return (n / 1000).toFixed(n < 1e5 ? 1 : 0).replace(/\.0$/, "") + "k";
    return (n / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
  }

  // Shorten an SVG text to maxWidth (user units) with an ellipsis; a title (hover) says ``title``,
  // or the full text when it was shortened.
  function fitText(node, maxWidth, title) {
    var full = node.textContent;
    if (node.getComputedTextLength() > maxWidth) {
      var lo = 0, hi = full.length;
      while (lo < hi) {
        var mid = Math.ceil((lo + hi) / 2);
        node.textContent = full.slice(0, mid) + "\u2026";
        if (node.getComputedTextLength() <= maxWidth) lo = mid; else hi = mid - 1;
      }
      node.textContent = full.slice(0, lo) + "\u2026";
      title = title || full;
    }
    if (title) svgEl("title", {}, node, title);
    return node;
  }

  // A time axis shared by the line and share charts: bucket centres between since and until.
  function timeScale(hist, b) {
    var span = Math.max(1, hist.until_ms - hist.since_ms);
    return function (t) { return b.l + (t - hist.since_ms) / span * (b.w - b.l - b.r); };
  }

  function timeAxis(svg, hist, b, x) {
    svgEl("line", { x1: b.l, x2: b.w - b.r, y1: b.h - b.b, y2: b.h - b.b, "class": "axis" }, svg);
    [hist.since_ms, (hist.since_ms + hist.until_ms) / 2, hist.until_ms].forEach(function (t, i) {
      var anchor = ["start", "middle", "end"][i];
      var short = hist.until_ms - hist.since_ms < 30 * 60 * 1000;
      svgEl("text", { x: x(t), y: b.h - 6, "text-anchor": anchor }, svg).textContent = hhmm(t, short);
    });
  }

  function noData(svg, b, text) {
    svgEl("text", { x: b.w / 2, y: b.h / 2, "text-anchor": "middle", "class": "empty-note" }, svg).textContent = text;
  }

  // Marks of one kind (snapshots, drift events) along the time axis, readable however many there
  // are: one tick per BIN units of width (its title says what it holds), drawn in a band above the
  // plot (or as a thin line through it, for the rare drift events), and a label on a few only:
  // the newest, then going left, one at least LABEL_GAP units from the last labelled and clear of
  // every label placed before (``placed``: [left, right] of each, shared by the kinds).
  var BIN = 4, LABEL_GAP = 56;
  function drawMarks(svg, b, x, marks, kind, placed) {
    if (!marks.length) return;
    var bins = [], byKey = {};
    marks.slice().sort(function (m, n) { return m.at - n.at; }).forEach(function (m) {
      var px = Math.min(b.w - b.r, Math.max(b.l, x(m.at))), key = Math.floor(px / BIN);
      if (!(key in byKey)) { byKey[key] = { px: (key + 0.5) * BIN, marks: [] }; bins.push(byKey[key]); }
      byKey[key].marks.push(m);
    });
    var bandTop = b.t - 10, bandH = 6;
    bins.forEach(function (bin) {
      var g = svgEl("g", { "class": kind.cls }, svg), first = bin.marks[0], last = bin.marks[bin.marks.length - 1];
      if (kind.through) {
        svgEl("line", { x1: bin.px, x2: bin.px, y1: bandTop, y2: b.h - b.b, stroke: kind.color, "stroke-width": 1,
                        "stroke-dasharray": "2,3", "stroke-opacity": 0.8 }, g);
      } else {
        svgEl("rect", { x: (bin.px - 1).toFixed(1), y: bandTop, width: 2, height: bandH, fill: kind.color }, g);
      }
      svgEl("title", {}, g).textContent = bin.marks.length === 1 ? first.title
        : bin.marks.length + " " + kind.plural + ": " + first.title + " ... " + last.title;
    });
    var lastX = Infinity;
    for (var i = bins.length - 1; i >= 0; i--) {
      var bin = bins[i];
      if (lastX - bin.px < LABEL_GAP) continue;
      var label = bin.marks[bin.marks.length - 1].label;
      var anchor = bin.px > b.w - b.r - 20 ? "end" : bin.px < b.l + 20 ? "start" : "middle";
      var text = svgEl("text", { x: bin.px.toFixed(1), y: bandTop - 3, "text-anchor": anchor,
                                 "class": kind.cls + "-label" }, svg, label);
      var box = text.getBBox(), span = [box.x - 3, box.x + box.width + 3];
      if (placed.some(function (p) { return span[0] < p[1] && p[0] < span[1]; })) {
        svg.removeChild(text);
        continue;
      }
      placed.push(span);
      lastX = bin.px;
    }
  }

  // series: [{values: [number|null per bucket], color, cls}]; markKinds: [{marks: [{at, label, title}],
  // cls, plural, color, through}] drawn under the series
  function lineChart(svg, hist, series, markKinds, fmt) {
    clear(svg);
    var b = box(svg, markKinds && markKinds.length ? 32 : 14);
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > max) max = v; }); });
    var y = function (v) { return b.h - b.b - (max > 0 ? v / max : 0) * (b.h - b.t - b.b); };
    // the value axis' labels set the left margin: the widest fits, whatever the unit
    var labels = [svgEl("text", { y: b.t + 4, "text-anchor": "end" }, svg, fmt(max)),
                  svgEl("text", { y: b.h - b.b, "text-anchor": "end" }, svg, fmt(0))];
    b.l = Math.max(b.l, 8 + Math.max.apply(null, labels.map(function (t) { return t.getComputedTextLength(); })));
    labels.forEach(function (t) { t.setAttribute("x", b.l - 4); });
    var x = timeScale(hist, b);
    timeAxis(svg, hist, b, x);
    var placed = [];
    (markKinds || []).forEach(function (kind) { drawMarks(svg, b, x, kind.marks, kind, placed); });
    var drawn = 0;
    series.forEach(function (s) {
      var d = "", pen = "M";
      s.values.forEach(function (v, i) {
        if (v === null) { pen = "M"; return; }
        var px = x(hist.buckets[i] + hist.bucket_ms / 2);
        d += pen + px.toFixed(1) + "," + y(v).toFixed(1) + " ";
        pen = "L";
        drawn++;
        svgEl("circle", { cx: px.toFixed(1), cy: y(v).toFixed(1), r: 1.8, fill: s.color }, svg);
      });
      if (d) svgEl("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 2, "class": s.cls }, svg);
    });
    if (!drawn) noData(svg, b, "no traffic in this window");
  }

  // Stacked bars, one per bucket: share[model][bucket] in [0, 1] of the bucket's decisions.
  function shareChart(svg, hist, traffic) {
    clear(svg);
    var b = box(svg), x = timeScale(hist, b);
    var y = function (v) { return b.h - b.b - v * (b.h - b.t - b.b); };
    svgEl("text", { x: b.l - 4, y: b.t + 4, "text-anchor": "end" }, svg).textContent = "100%";
    svgEl("text", { x: b.l - 4, y: b.h - b.b, "text-anchor": "end" }, svg).textContent = "0%";
    timeAxis(svg, hist, b, x);
    if (!traffic || !traffic.decisions.some(function (n) { return n > 0; })) {
      noData(svg, b, "no traffic in this window");
      return;
    }
    var width = Math.max(1, x(hist.since_ms + hist.bucket_ms) - x(hist.since_ms) - 0.5);
    hist.buckets.forEach(function (start, i) {
      if (!traffic.decisions[i]) return;
      var base = 0;
      hist.models.forEach(function (model) {
        var v = (traffic.share[model] || [])[i] || 0;
        if (v <= 0) return;
        var bar = svgEl("rect", { x: x(start).toFixed(1), y: y(base + v).toFixed(1), width: width.toFixed(1),
                                  height: (y(base) - y(base + v)).toFixed(1), fill: colorOf(model),
                                  "class": "share", "data-model": model }, svg);
        svgEl("title", {}, bar).textContent = model + ": " + (100 * v).toFixed(0) + "% of " + traffic.decisions[i] +
          " at " + hhmm(start);
        base += v;
      });
    });
  }

  // Posterior mean (dot) and 90% credible interval (bar) per model, with evidence and decisions.
  // Every text is fitted to its column (shortened with an ellipsis, the full text in a title).
  function posteriorChart(svg, models, stats) {
    clear(svg);
    var rowH = 22, l = 120, r = 204, w = 540, h = models.length * rowH + 20;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    var x = function (v) { return l + v * (w - l - r); };
    [0, 0.5, 1].forEach(function (v) {
      svgEl("line", { x1: x(v), x2: x(v), y1: 2, y2: h - 16, "class": "axis" }, svg);
      svgEl("text", { x: x(v), y: h - 4, "text-anchor": "middle" }, svg).textContent = v.toFixed(1);
    });
    models.forEach(function (model, i) {
      var s = stats[model], cy = 12 + i * rowH;
      var g = svgEl("g", { "class": "posterior", "data-model": model }, svg);
      fitText(svgEl("text", { x: l - 8, y: cy + 4, "text-anchor": "end", "class": "model-name" }, g, model), l - 12);
      svgEl("rect", { x: x(s.ci90[0]), y: cy - 4, width: Math.max(1, x(s.ci90[1]) - x(s.ci90[0])), height: 8,
                      rx: 3, fill: colorOf(model), "fill-opacity": 0.35, "class": "ci" }, g);
      svgEl("circle", { cx: x(s.mean), cy: cy, r: 4, fill: colorOf(model), "class": "mean" }, g);
      var stat = svgEl("text", { x: w - r + 8, y: cy + 4, "class": "stat" }, g,
                       s.mean.toFixed(2) + " [" + s.ci90[0].toFixed(2) + ", " + s.ci90[1].toFixed(2) + "]");
      fitText(stat, 96);
      var counts = svgEl("text", { x: w - 4, y: cy + 4, "text-anchor": "end", "class": "stat" }, g,
                         "n=" + compact(s.evidence) + " d=" + compact(s.decisions));
      fitText(counts, r - 8 - 96 - 6, "evidence n " + s.evidence.toFixed(1) + ", decisions d " + s.decisions);
    });
  }

  function renderCards(state, hist) {
    var c = hist.cost;
    document.getElementById("requests").textContent = String(hist.decisions);
    var answered = c.answered.reduce(function (a, v) { return a + v; }, 0);
    document.getElementById("cost-per-request").textContent = answered ? usd(c.total_usd / answered) : "n/a";
    document.getElementById("counterfactual").textContent = answered ? usd(c.counterfactual_total_usd / answered) : "n/a";
    document.getElementById("saving").textContent = c.saving === null ? "n/a" : (100 * c.saving).toFixed(1) + "%";
    document.getElementById("backlog").textContent =
      state.event_backlog === undefined ? "n/a" : String(state.event_backlog);
  }

  function renderLegend(models) {
    var legend = document.getElementById("legend");
    clear(legend);
    models.forEach(function (m) {
      var item = htmlEl("span", { "class": "item", "data-model": m }, legend);
      htmlEl("span", { "class": "swatch", style: "background:" + colorOf(m) }, item);
      item.appendChild(document.createTextNode(m));
    });
  }

  function renderBreakers(breakers) {
    var table = document.getElementById("breakers");
    clear(table);
    var body = htmlEl("tbody", {}, table);
    if (breakers === null) {
      htmlEl("td", {}, htmlEl("tr", {}, body), "n/a");
      return;
    }
    Object.keys(breakers).sort().forEach(function (m) {
      var tr = htmlEl("tr", { "data-model": m }, body);
      htmlEl("td", {}, tr, m);
      htmlEl("td", { "class": "state " + breakers[m] }, tr, breakers[m].replace("_", "-"));
    });
  }

  // Decisions per prompt language in the window: its count, share, and the models that served it
  function renderLanguages(languages) {
    var table = document.getElementById("languages");
    clear(table);
    var body = htmlEl("tbody", {}, table);
    if (!languages || !languages.length) { htmlEl("td", {}, htmlEl("tr", {}, body), "none in this window"); return; }
    languages.forEach(function (l) {
      var tr = htmlEl("tr", { "data-language": l.language }, body);
      htmlEl("td", {}, tr, l.language || "unknown");
      htmlEl("td", {}, tr, compact(l.decisions));
      htmlEl("td", {}, tr, (100 * l.share).toFixed(1) + "%");
      var models = htmlEl("td", { "class": "models", "colspan": "3" }, htmlEl("tr", {}, body));
      Object.keys(l.models).slice(0, 3).forEach(function (m) {
        var text = m + " " + Math.round(100 * l.models[m]) + "%";
        htmlEl("span", { "title": text }, models, text);
        models.appendChild(document.createTextNode(" "));
      });
    });
  }

  // Shadow routing (issue 13): per cluster, the share of routed answers the judge graded below
  // the reference's (95% Wilson interval), the cost saved against always asking the reference,
  // and, against a candidate snapshot, how often the candidate chose the model that answered
  function renderShadow(rows) {
    var section = document.getElementById("shadow-section");
    var table = document.getElementById("shadow");
    section.hidden = !rows;
    if (!rows) return;
    clear(table);
    var head = htmlEl("tr", {}, htmlEl("thead", {}, table));
    ["cluster", "shadowed", "judged", "leakage", "95% interval", "saved", "agreement"].forEach(function (h) { htmlEl("th", {}, head, h); });
    var body = htmlEl("tbody", {}, table);
    if (!rows.length) { htmlEl("td", { "colspan": "7" }, htmlEl("tr", {}, body), "no shadowed request in this window"); return; }
    rows.forEach(function (r) {
      var tr = htmlEl("tr", { "data-cluster": String(r.cluster) }, body);
      htmlEl("td", {}, tr, String(r.cluster));
      htmlEl("td", {}, tr, compact(r.shadowed) + (r.unanswered ? " (+" + compact(r.unanswered) + " not asked)" : ""));
      htmlEl("td", {}, tr, compact(r.judged));
      htmlEl("td", {}, tr, r.judged ? (100 * r.leakage).toFixed(1) + "%" : "n/a");
      htmlEl("td", {}, tr, r.judged ? (100 * r.leakage_low).toFixed(1) + "-" + (100 * r.leakage_high).toFixed(1) + "%" : "n/a");
      htmlEl("td", {}, tr, usd(r.saved_usd) + (r.reference_cost_usd > 0 ? " (" + (100 * r.saved_share).toFixed(0) + "%)" : ""));
      htmlEl("td", {}, tr, r.decided ? (100 * r.agreement).toFixed(1) + "% of " + compact(r.decided) : "n/a");
    });
  }

  function renderDriftList(drift) {
    var list = document.getElementById("drift-events");
    clear(list);
    if (drift === null) { htmlEl("li", {}, list, "n/a"); return; }
    if (!drift.length) { htmlEl("li", {}, list, "none in this window"); return; }
    drift.slice().reverse().forEach(function (e) {
      htmlEl("li", { "class": "drift" }, list, hhmm(e.at_ms) + " " + e.kind + " in cluster " + e.clusters.join(",") +
        (e.model ? " (" + e.model + ")" : "") + ": " + e.old_value.toFixed(3) + " -> " + e.new_value.toFixed(3) +
        ", " + e.action + " (v" + e.version + ")");
    });
  }

  // What a cluster is about: the texts nearest its centroid, one line each (shortened with an
  // ellipsis; the full text, its similarity and whether it falls in this cluster in a title).
  function renderTexts(parent, what, list, assigned, total) {
    htmlEl("div", { "class": "about-head" }, parent, what + " nearest the centre (" + assigned + " of " + total +
      " fall in this cluster)");
    var ul = htmlEl("ul", { "class": "texts" }, parent);
    if (!list.length) htmlEl("li", { "class": "none" }, ul, "none");
    list.forEach(function (n) {
      var li = htmlEl("li", { "class": n.assigned ? "here" : "elsewhere" }, ul);
      htmlEl("span", { "class": "text", title: n.text + "\n(similarity " + n.similarity.toFixed(3) +
        (n.assigned ? ")" : ", nearer another cluster)") }, li, n.text);
      htmlEl("span", { "class": "sim" }, li, n.similarity.toFixed(2));
    });
  }

  function renderAbout(sec, about) {
    var box = htmlEl("div", { "class": "about" }, sec);
    if (!about) { htmlEl("div", { "class": "about-head" }, box, "no description"); return; }
    if (about.examples.length) {
      renderTexts(box, "examples", about.examples, about.examples_assigned, about.examples_total);
    }
    else htmlEl("div", { "class": "about-head" }, box, "no cluster examples configured");
    if (about.prompts === null) {
      htmlEl("div", { "class": "about-head" }, box, "stored prompts: prompt storage is off");
    } else {
      renderTexts(box, "stored prompts", about.prompts, about.prompts_assigned, about.prompts_total);
    }
  }

  function renderClusters(state, hist) {
    var root = document.getElementById("clusters");
    clear(root);
    var byId = {}, about = {};
    if (hist.clustering === state.clustering) hist.clusters.forEach(function (c) { byId[c.cluster] = c; });
    (hist.about || []).forEach(function (a) { about[a.cluster] = a; });
    state.clusters.forEach(function (c) {
      var sec = htmlEl("section", { "class": "cluster", id: "cluster-" + c.id }, root);
      var traffic = byId[c.id];
      var recent = traffic ? traffic.decisions.reduce(function (a, v) { return a + v; }, 0) : 0;
      var h = htmlEl("h3", {}, sec, "Cluster " + c.id + " ");
      htmlEl("span", { "class": "sub" }, h, c.decisions + " decisions in the snapshot, " + recent + " in the window");
      if (hist.about) renderAbout(sec, about[c.id]);
      (c.cascades || []).forEach(function (k) {
        htmlEl("p", { "class": "sub cascade" }, sec, "cascade " + k.name + " (" + k.cheap + ", then " + k.strong +
          "): escalates " + Math.round(100 * k.escalation_rate) + "% (" + Math.round(k.escalated) + " of " +
          Math.round(k.calls) + " calls in the snapshot)");
      });
      posteriorChart(svgEl("svg", { "class": "chart posterior-chart", viewBox: "0 0 540 100" }, sec), state.models,
                     c.models);
      shareChart(svgEl("svg", { "class": "chart share-chart", viewBox: "0 0 540 120" }, sec), hist, traffic);
    });
  }

  function render(state, hist) {
    state.models.forEach(colorOf);
    document.getElementById("snapshot").textContent = "snapshot v" + state.version + " (" + state.reason +
      ", clustering " + state.clustering + ", " + state.clusters.length + " clusters)";
    renderCards(state, hist);
    renderLegend(hist.models);
    lineChart(document.getElementById("cost-chart"), hist, [
      { values: hist.cost.counterfactual_per_request_usd, color: "#dc2626", cls: "counterfactual" },
      { values: hist.cost.cost_per_request_usd, color: "#2563eb", cls: "actual" }
    ], [], usd);
    var snapshots = hist.snapshots.map(function (s) {
      return { at: s.at_ms, label: "v" + s.version, title: "v" + s.version + " " + hhmm(s.at_ms, true) + " (" + s.reason + ")" };
    });
    var drift = (hist.drift || []).map(function (e) {
      return { at: e.at_ms, label: "drift", title: hhmm(e.at_ms, true) + " " + e.kind + " drift in cluster " +
               e.clusters.join(", ") + ": " + e.action };
    });
    lineChart(document.getElementById("margin-chart"), hist, [
      { values: hist.overall.margin, color: "#0f766e", cls: "margin" }
    ], [
      { marks: snapshots, cls: "snapshot-mark", plural: "snapshots", color: "#9ca3af" },
      { marks: drift, cls: "drift-mark", plural: "drift events", color: "#ea580c", through: true }
    ], function (v) { return v.toFixed(2); });
    renderBreakers(hist.breakers);
    renderDriftList(hist.drift);
    renderLanguages(hist.languages);
    renderShadow(hist.shadow);
    shareChart(document.getElementById("share-overall"), hist, hist.overall);
    renderClusters(state, hist);
  }

  // With API keys configured the data routes need "Authorization: Bearer": ask once, keep it
  // for this tab only (sessionStorage), never in the URL.
  var keyInput = document.getElementById("api-key");
  keyInput.value = sessionStorage.getItem("turnout-api-key") || "";
  keyInput.addEventListener("change", function () {
    sessionStorage.setItem("turnout-api-key", keyInput.value);
    if (timer) clearTimeout(timer);
    loop();
  });

  function getJson(url) {
    var headers = keyInput.value ? { Authorization: "Bearer " + keyInput.value } : {};
    return fetch(url, { cache: "no-store", headers: headers }).then(function (r) {
      if (r.status === 401) document.getElementById("auth").hidden = false;
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function refresh() {
    var status = document.getElementById("status");
    var windowS = windowSelect.value;
    return Promise.all([getJson("/v1/router/state"), getJson("/v1/router/history?window_s=" + windowS)])
      .then(function (res) {
        render(res[0], res[1]);
        updates++;
        status.className = "meta ok";
        status.textContent = "updated " + new Date().toLocaleTimeString() + " (every " + refreshMs / 1000 + " s)";
        document.body.setAttribute("data-ready", "1");
        document.body.setAttribute("data-updates", String(updates));
      })
      .catch(function (err) {
        status.className = "meta error";
        status.textContent = "update failed: " + err.message;
      });
  }

  function loop() {
    refresh().then(function () { timer = setTimeout(loop, refreshMs); });
  }

  windowSelect.addEventListener("change", function () {
    if (timer) clearTimeout(timer);
    loop();
  });
  loop();
})();
