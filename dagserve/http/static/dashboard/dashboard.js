// dagserve's live dashboard (GET /-/dashboard). Polls dashboard/data every 2 s and updates the
// page in place: the diagram of the selected graph (laid out here, left to right), the charts of
// the last 15 minutes, the node panel and recent errors. No library, no inline script: the page's
// Content-Security-Policy allows only this origin's files. The admin token, when the user types
// it, lives in this tab's sessionStorage and goes to the admin routes in an Authorization header.
"use strict";
(function () {
  var POLL_MS = 2000;
  var SHOWN_ERRORS = 8;
  var WINDOW_S = 900;
  var SVG = "http://www.w3.org/2000/svg";
  var TOKEN_KEY = "dagserve-admin-token";
  var OUTCOME_COLORS = {
    ok: "#16a34a", client_error: "#d97706", node_error: "#dc2626", timeout: "#7c3aed",
    overloaded: "#ea580c", cancelled: "#64748b", error: "#991b1b"
  };
  var PALETTE = ["#2563eb", "#db2777", "#0891b2", "#65a30d", "#9333ea", "#ea580c", "#0d9488", "#ca8a04", "#4f46e5", "#be123c"];

  var dataUrl = new URL("dashboard/data", location.href);
  var adminUrl = new URL("admin/", location.href);
  var state = {
    graph: new URLSearchParams(location.search).get("graph"),
    since: null, topo: null, data: null, hist: null, selected: null, cards: {}, signature: "",
    token: sessionStorage.getItem(TOKEN_KEY), timer: null, failures: 0, generation: 0
  };

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // -- formatting -----------------------------------------------------------------------------------
  function fmtDur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return (s * 1000).toFixed(2) + " ms";
    if (s < 0.1) return (s * 1000).toFixed(1) + " ms";
    if (s < 1) return Math.round(s * 1000) + " ms";
    return s.toFixed(2) + " s";
  }
  function fmtRate(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    if (x < 10) return x.toFixed(1);
    return Math.round(x).toLocaleString("en-US");
  }
  function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function fmtTime(t) {
    var d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }
  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? fmtInt(v) : (Math.abs(v) < 1 ? v.toPrecision(3) : v.toFixed(2));
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function figureName(k) { return k.replace(/_/g, " ").replace(/ s$/, " (s)"); }

  // -- polling --------------------------------------------------------------------------------------
  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, ms);
  }

  function poll() {
    var url = new URL(dataUrl);
    if (state.graph) url.searchParams.set("graph", state.graph);
    if (state.since !== null && state.topo) url.searchParams.set("since", String(state.since));
    var generation = state.generation;
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { accept: "application/json" } })
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (body) {
          if (r.status === 404 && state.graph) { // ?graph= names no graph of this server: show the first
            state.graph = null; state.since = null; state.topo = null; state.generation += 1;
          }
          if (!r.ok) throw new Error(body && body.error ? body.error.message : "HTTP " + r.status);
          return body;
        });
      })
      .then(function (d) {
        if (generation !== state.generation) return; // the user picked another graph meanwhile
        state.failures = 0;
        apply(d);
      })
      .catch(function (e) {
        state.failures += 1;
        $("updated").textContent = "no answer (" + e.message + "); retrying";
        $("updated").className = "hint bad";
      })
      .then(function () { schedule(POLL_MS); });
  }

  function selectGraph(name) {
    if (name === state.graph) return;
    state.graph = name;
    state.since = null; state.topo = null; state.selected = null; state.generation += 1;
    var params = new URLSearchParams(location.search);
    params.set("graph", name);
    history.replaceState(null, "", location.pathname + "?" + params.toString());
    clear($("diagram"));
    schedule(0);
  }

  function apply(d) {
    state.graph = d.graph;
    if (d.topology) {
      state.topo = d.topology;
      state.hist = { t: d.history.t.slice(), requests: d.history.requests, nodes: d.history.nodes };
      state.signature = "";
    } else {
      mergeHistory(d.history);
    }
    if (d.now !== null && d.now !== undefined) state.since = d.now;
    state.data = d;
    renderGraphs(d);
    renderSummary(d);
    renderAdmin(d);
    renderDiagram(d);
    renderCharts();
    renderPanel();
    renderErrors(d);
    $("updated").textContent = "updated " + fmtTime(Date.now() / 1000) + " · every 2 s";
    $("updated").className = "hint";
  }

  function mergeHistory(h) {
    var hist = state.hist;
    if (!h.t.length) return;
    hist.t = hist.t.concat(h.t);
    for (var o in h.requests) hist.requests[o] = (hist.requests[o] || []).concat(h.requests[o]);
    for (var n in h.nodes) {
      var mine = hist.nodes[n] || (hist.nodes[n] = {});
      for (var s in h.nodes[n]) mine[s] = (mine[s] || []).concat(h.nodes[n][s]);
    }
    var cut = 0;
    var oldest = hist.t[hist.t.length - 1] - WINDOW_S;
    while (cut < hist.t.length && hist.t[cut] < oldest) cut += 1;
    var keep = Math.max(cut, hist.t.length - h.points);
    if (keep > 0) {
      hist.t = hist.t.slice(keep);
      for (var o2 in hist.requests) hist.requests[o2] = hist.requests[o2].slice(keep);
      for (var n2 in hist.nodes) for (var s2 in hist.nodes[n2]) hist.nodes[n2][s2] = hist.nodes[n2][s2].slice(keep);
    }
  }

  // -- header ---------------------------------------------------------------------------------------
  function renderGraphs(d) {
    var nav = $("graphs");
    clear(nav);
    d.graphs.forEach(function (g) {
      var b = el("button", { type: "button", class: "graph-tab", "data-graph": g.name, "aria-current": g.name === d.graph ? "page" : null });
      b.appendChild(el("span", { class: "dot " + (g.ready ? "ok" : "warn") }));
      b.appendChild(document.createTextNode(g.name));
      b.addEventListener("click", function () { selectGraph(g.name); });
      nav.appendChild(b);
    });
  }

  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function renderSummary(d) {
    var box = $("summary");
    clear(box);
    var rate = 0, errRate = 0;
    for (var o in state.hist.requests) {
      var v = lastValue(state.hist.requests[o]) || 0;
      rate += v;
      if (o !== "ok") errRate += v;
    }
    var total = 0;
    for (var o2 in d.requests || {}) total += d.requests[o2];
    var items = [
      ["", d.ready ? "Ready" : "Not ready", d.ready ? "pill ok" : "pill warn", "summary-ready"],
      ["backend", d.backend, "", "summary-backend"],
      ["in flight", fmtInt(d.in_flight), "", "summary-in-flight"],
      ["requests", fmtInt(total), "", "summary-requests"],
      ["req/s", fmtRate(rate), "", "summary-rate"],
      ["errors/s", fmtRate(errRate), errRate > 0 ? "bad" : "", "summary-errors"]
    ];
    items.forEach(function (it) {
      var s = el("span", { class: "stat " + it[2], id: it[3] });
      if (it[0]) s.appendChild(el("small", {}, it[0]));
      s.appendChild(el("b", {}, it[1]));
      box.appendChild(s);
    });
    // Figures features give for the graph as a whole (a queue's depth...).
    Object.keys(d.features || {}).sort().forEach(function (name) {
      var figures = d.features[name];
      Object.keys(figures).forEach(function (k) {
        var s = el("span", { class: "stat", "data-feature": name + ":" + k });
        s.appendChild(el("small", {}, name + " " + figureName(k).replace(/ \(s\)$/, "")));
        var v = figures[k];
        s.appendChild(el("b", {}, /_s$/.test(k) && typeof v === "number" ? fmtDur(v) : fmtValue(v)));
        box.appendChild(s);
      });
    });
  }

  function renderAdmin(d) {
    var box = $("admin");
    if (!d.admin) { clear(box); box.hidden = true; return; }
    box.hidden = false;
    var want = state.token ? "unlocked" : "locked";
    if (box.dataset.mode === want) return; // keep what the user is typing
    box.dataset.mode = want;
    clear(box);
    if (state.token) {
      box.appendChild(el("span", { class: "pill ok" }, "admin"));
      var lock = el("button", { type: "button", class: "link", id: "admin-lock" }, "Lock");
      lock.addEventListener("click", function () { setToken(null); });
      box.appendChild(lock);
      return;
    }
    var form = el("form", { class: "unlock", id: "unlock-form", autocomplete: "off" });
    var input = el("input", { type: "password", id: "admin-token", placeholder: "Admin token", "aria-label": "Admin token" });
    form.appendChild(input);
    form.appendChild(el("button", { type: "submit" }, "Unlock"));
    var msg = el("span", { class: "hint bad", id: "unlock-message" });
    form.appendChild(msg);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var token = input.value.trim();
      if (!token) return;
      fetch(new URL("status", adminUrl), { headers: { authorization: "Bearer " + token }, credentials: "omit", cache: "no-store" })
        .then(function (r) {
          if (r.ok) { setToken(token); return; }
          msg.textContent = r.status === 403 ? "wrong token" : "refused (" + r.status + ")";
        })
        .catch(function (e) { msg.textContent = e.message; });
    });
    box.appendChild(form);
  }

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    if (state.data) { renderAdmin(state.data); $("panel").dataset.node = ""; renderPanel(); }
  }

  // -- the diagram ----------------------------------------------------------------------------------
  var CARD_W = 240, LINE_H = 17, HEAD_H = 30, SMALL_W = 108, SMALL_H = 36, GAP_X = 64, GAP_Y = 22;

  function cardLines(node, figures) {
    var lines = ["replicas", "calls", "latency", "load"];
    if (figures && figures.batched) lines.push("batch");
    var features = (figures && figures.features) || {};
    Object.keys(features).sort().forEach(function (f) { lines.push("feature:" + f); });
    return lines;
  }

  function layout(topo, nodes) {
    var byId = {}, preds = {}, succs = {};
    var items = topo.nodes.map(function (n, i) {
      var figures = n.deployment ? nodes[n.deployment] : null;
      var lines = n.kind === "call" ? cardLines(n, figures) : [];
      var item = {
        node: n, index: i, lines: lines, layer: 0, order: i,
        w: n.kind === "call" ? CARD_W : SMALL_W,
        h: n.kind === "call" ? HEAD_H + lines.length * LINE_H + 10 : SMALL_H
      };
      byId[n.id] = item; preds[n.id] = []; succs[n.id] = [];
      return item;
    });
    topo.edges.forEach(function (e) {
      if (!byId[e.source] || !byId[e.target]) return;
      succs[e.source].push(e.target); preds[e.target].push(e.source);
    });
    // Layers: longest path from the sources (handle edges may close a cycle: bounded passes).
    for (var pass = 0; pass < items.length; pass++) {
      var moved = false;
      topo.edges.forEach(function (e) {
        var a = byId[e.source], b = byId[e.target];
        if (a && b && !e.dashed && b.layer < a.layer + 1) { b.layer = a.layer + 1; moved = true; }
      });
      if (!moved) break;
    }
    var maxLayer = 0;
    items.forEach(function (it) { maxLayer = Math.max(maxLayer, it.layer); });
    items.forEach(function (it) { if (it.node.kind === "output") it.layer = maxLayer; });
    // An edge across several layers runs through a dummy slot in each layer between (Sugiyama),
    // so that it passes between the cards instead of behind them.
    var all = items.slice();
    var routes = topo.edges.map(function (e, k) {
      var a = byId[e.source], b = byId[e.target];
      if (!a || !b) return null;
      var chain = [a];
      if (!e.dashed) {
        for (var l = a.layer + 1; l < b.layer; l++) {
          var id = "\u0000" + k + ":" + l;
          var dummy = { node: { id: id, kind: "dummy" }, dummy: true, index: all.length, lines: [], layer: l, order: 0, w: 0, h: 12 };
          byId[id] = dummy; preds[id] = [chain[chain.length - 1].node.id]; succs[id] = [];
          succs[chain[chain.length - 1].node.id].push(id);
          all.push(dummy); chain.push(dummy);
        }
      }
      chain.push(b);
      if (chain.length > 2) succs[chain[chain.length - 2].node.id].push(b.node.id), preds[b.node.id].push(chain[chain.length - 2].node.id);
      return chain;
    });
    var layers = [];
    for (var l = 0; l <= maxLayer; l++) layers.push([]);
    all.forEach(function (it) { layers[it.layer].push(it); });
    // Order within layers: barycenters of the neighbours, a few sweeps down and up.
    function sweep(list, neighbours) {
      list.forEach(function (it) {
        var ns = neighbours[it.node.id].map(function (id) { return byId[id].order; });
        it.bary = ns.length ? ns.reduce(function (a, b) { return a + b; }, 0) / ns.length : it.order;
      });
      list.sort(function (a, b) { return a.bary - b.bary || a.index - b.index; });
      list.forEach(function (it, i) { it.order = i; });
    }
    layers.forEach(function (list) { list.forEach(function (it, i) { it.order = i; }); });
    for (var it2 = 0; it2 < 4; it2++) {
      for (var a = 1; a < layers.length; a++) sweep(layers[a], preds);
      for (var b = layers.length - 2; b >= 0; b--) sweep(layers[b], succs);
    }
    var x = 16, height = 0;
    var columns = layers.map(function (list) {
      var w = 0, h = 0;
      list.forEach(function (it) { w = Math.max(w, it.w); h += it.h; });
      h += GAP_Y * Math.max(0, list.length - 1);
      var col = { x: x, w: w, h: h, list: list };
      x += w + GAP_X;
      height = Math.max(height, h);
      return col;
    });
    columns.forEach(function (col) {
      var y = 16 + (height - col.h) / 2;
      col.list.forEach(function (it) {
        if (it.dummy) it.w = col.w;
        it.x = col.x + (col.w - it.w) / 2; it.y = y; y += it.h + GAP_Y;
      });
    });
    return { items: items, byId: byId, routes: routes, width: x - GAP_X + 16, height: height + 32 };
  }

  function renderDiagram(d) {
    var signature = state.topo.nodes.map(function (n) {
      return n.id + ":" + (n.deployment ? cardLines(n, d.nodes[n.deployment]).join(",") : "");
    }).join("|");
    if (signature !== state.signature) buildDiagram(d, signature);
    updateCards(d);
  }

  function buildDiagram(d, signature) {
    state.signature = signature;
    var box = $("diagram");
    clear(box);
    var lay = layout(state.topo, d.nodes);
    var root = svg("svg", {
      viewBox: "0 0 " + lay.width + " " + lay.height, class: "graph-svg", role: "img",
      "aria-label": "Diagram of graph " + d.graph
    });
    root.style.minWidth = Math.min(lay.width, Math.max(lay.width * 0.62, 320)) + "px";
    root.style.maxWidth = lay.width * 1.25 + "px";
    var defs = svg("defs");
    var marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
    marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
    defs.appendChild(marker);
    root.appendChild(defs);
    var edges = svg("g", { class: "edges" });
    state.topo.edges.forEach(function (e, k) {
      var chain = lay.routes[k];
      if (!chain) return;
      var a = chain[0], b = chain[chain.length - 1];
      var pts = [[a.x + a.w, a.y + a.h / 2]];
      chain.slice(1, -1).forEach(function (dm) { pts.push([dm.x, dm.y + dm.h / 2], [dm.x + dm.w, dm.y + dm.h / 2]); });
      pts.push([b.x - 2, b.y + b.h / 2]);
      if (pts.length === 2 && pts[1][0] <= pts[0][0]) { // a handle edge back to an earlier layer: under the cards
        pts = [[a.x + a.w / 2, a.y + a.h], [b.x + b.w / 2, b.y + b.h]];
      }
      var d = "M" + pts[0][0] + "," + pts[0][1];
      for (var i = 1; i < pts.length; i++) {
        var p = pts[i - 1], q = pts[i];
        if (i % 2 === 0 && pts.length > 2 && i < pts.length - 1) { d += " L" + q[0] + "," + q[1]; continue; }
        var dx = Math.max(20, (q[0] - p[0]) / 2);
        d += " C" + (p[0] + dx) + "," + p[1] + " " + (q[0] - dx) + "," + q[1] + " " + q[0] + "," + q[1];
      }
      edges.appendChild(svg("path", { d: d, class: "edge" + (e.dashed ? " dashed" : ""), "marker-end": "url(#arrow)" }));
      if (e.label) {
        var m = Math.floor((pts.length - 1) / 2);
        var lx = (pts[m][0] + pts[m + 1][0]) / 2, ly = (pts[m][1] + pts[m + 1][1]) / 2 - 5;
        edges.appendChild(svg("text", { x: lx, y: ly, class: "edge-label", "text-anchor": "middle" }, e.label));
      }
    });
    root.appendChild(edges);
    state.cards = {};
    lay.items.forEach(function (it) { root.appendChild(card(it)); });
    box.appendChild(root);
  }

  function card(it) {
    var n = it.node;
    var g = svg("g", { class: "node node-" + n.kind, transform: "translate(" + it.x + "," + it.y + ")", "data-node": n.id });
    if (n.kind !== "call") {
      g.appendChild(svg("rect", { width: it.w, height: it.h, rx: n.kind === "route" ? 18 : 8, class: "box" }));
      var label = n.kind === "route" ? n.step + (n.id.indexOf("#") > 0 ? " " + n.id.split("#")[1] : "") : n.kind;
      g.appendChild(svg("text", { x: it.w / 2, y: it.h / 2 + 4, "text-anchor": "middle", class: "small-label" }, label));
      return g;
    }
    g.setAttribute("tabindex", "0");
    g.setAttribute("role", "button");
    g.setAttribute("id", "node-" + it.index);
    g.appendChild(svg("rect", { width: it.w, height: it.h, rx: 8, class: "box" }));
    g.appendChild(svg("rect", { width: 5, height: it.h, rx: 2, class: "stripe" }));
    var title = svg("text", { x: 14, y: 20, class: "title" }, n.id.length > 24 ? n.id.slice(0, 23) + "…" : n.id);
    title.appendChild(svg("title", {}, n.id));
    g.appendChild(title);
    var tag = svg("text", { x: it.w - 10, y: 20, "text-anchor": "end", class: "tag" }, "");
    g.appendChild(tag);
    var dot = svg("circle", { cx: it.w - 12, cy: 39, r: 4, class: "state" });
    var lines = it.lines.map(function (kind, i) {
      var t = svg("text", { x: 14, y: HEAD_H + 10 + i * LINE_H, class: "line", "data-line": kind });
      g.appendChild(t);
      return t;
    });
    g.appendChild(dot);
    function pick() { selectNode(n.deployment); }
    g.addEventListener("click", pick);
    g.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); pick(); } });
    (state.cards[n.deployment] = state.cards[n.deployment] || []).push({ g: g, tag: tag, dot: dot, lines: lines, kinds: it.lines, node: n });
    return g;
  }

  function replicaText(f) {
    if (f.running === undefined) return "replicas –";
    if (f.inline) return "inline (in the ingress)";
    var text = "replicas " + f.running + "/" + f.target;
    if (f.pending) text += " · " + f.pending + " pending";
    if (f.state && f.state !== "RUNNING") text += " · " + f.state.toLowerCase();
    return text;
  }

  function featureText(name, figures) {
    // In the order the feature gives its figures: the first ones fit on the card.
    var parts = Object.keys(figures).map(function (k) {
      var v = figures[k];
      return figureName(k).replace(/ \(s\)$/, "") + " " + (/_s$/.test(k) && typeof v === "number" ? fmtDur(v) : fmtValue(v));
    });
    var text = name + ": " + parts.join(" · ");
    return text.length > 38 ? text.slice(0, 37) + "…" : text;
  }

  function updateCards(d) {
    for (var dep in state.cards) {
      var f = d.nodes[dep] || {};
      state.cards[dep].forEach(function (c) {
        c.tag.textContent = f.kind === "model" ? "model" : f.kind ? "function" : "";
        c.g.classList.toggle("kind-model", f.kind === "model");
        c.g.classList.toggle("selected", state.selected === dep);
        var healthy = f.state === "RUNNING" && f.running >= f.target;
        var failing = (f.errors_per_s || 0) > 0;
        c.dot.setAttribute("class", "state " + (f.state === "UNHEALTHY" || failing ? "bad" : healthy ? "ok" : "warn"));
        c.g.classList.toggle("failing", failing);
        c.kinds.forEach(function (kind, i) {
          var text = "";
          if (kind === "replicas") text = replicaText(f);
          else if (kind === "calls") text = "calls " + fmtInt(f.calls) + " · " + fmtRate(f.calls_per_s) + "/s";
          else if (kind === "latency") text = "p50 " + fmtDur(f.p50_s) + " · p99 " + fmtDur(f.p99_s);
          else if (kind === "load") text = "in flight " + (f.in_flight === null || f.in_flight === undefined ? "–" : fmtInt(f.in_flight)) + " · errors " + fmtRate(f.errors_per_s) + "/s";
          else if (kind === "batch") text = f.batch ? "batch avg " + f.batch.mean.toFixed(1) + " · max " + f.batch.max : "batch –";
          else if (kind.indexOf("feature:") === 0) {
            var name = kind.slice(8);
            text = featureText(name, (f.features || {})[name] || {});
          }
          c.lines[i].textContent = text;
          c.lines[i].setAttribute("class", "line" + (kind === "load" && failing ? " bad" : "") + (kind === "replicas" && !healthy ? " warn" : ""));
        });
      });
    }
  }

  // -- charts ---------------------------------------------------------------------------------------
  function niceMax(v) {
    // Four gridlines at round values: the top is 4 steps of 1, 2, 2.5 or 5 times a power of ten.
    if (!(v > 0)) return 1;
    var raw = v / 4, p = Math.pow(10, Math.floor(Math.log10(raw))), m = raw / p;
    return 4 * (m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10) * p;
  }

  function drawChart(boxId, series, fmt, stepped, integer) {
    var box = $(boxId);
    var t = state.hist.t;
    var width = Math.max(260, box.clientWidth || 320), height = 170;
    var left = 48, right = 10, top = 10, bottom = 22;
    // The last 15 minutes, or since the first point when the server is younger (at least a minute).
    var now = t.length ? t[t.length - 1] : Date.now() / 1000;
    var start = Math.max(now - WINDOW_S, Math.min(t.length ? t[0] : now, now - 60));
    var span = now - start;
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > max) max = v; }); });
    var ymax = integer ? 4 * Math.max(1, Math.ceil(max / 4)) : niceMax(max);
    function X(time) { return left + (time - start) / span * (width - left - right); }
    function Y(v) { return top + (1 - v / ymax) * (height - top - bottom); }
    var root = svg("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height, class: "chart-svg" });
    for (var i = 0; i <= 4; i++) {
      var v = ymax * i / 4, y = Y(v);
      root.appendChild(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
      root.appendChild(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, fmt(v)));
    }
    var steps = [10, 15, 30, 60, 120, 300, 600];
    var step = steps.filter(function (st) { return span / st <= Math.max(2, Math.floor((width - left) / 90)); })[0] || 600;
    for (var tick = Math.ceil(start / step) * step; tick <= now; tick += step) {
      var tx = X(tick);
      if (tx < left + 18 || tx > width - right - 18) continue;
      root.appendChild(svg("line", { x1: tx, x2: tx, y1: height - bottom, y2: height - bottom + 4, class: "grid" }));
      var label = fmtTime(tick);
      root.appendChild(svg("text", { x: tx, y: height - 6, "text-anchor": "middle", class: "axis" }, step >= 60 ? label.slice(0, 5) : label));
    }
    series.forEach(function (s) {
      var d = "", pen = false, prevY = null;
      for (var j = 0; j < t.length; j++) {
        var val = s.values[j];
        if (val === null || val === undefined || t[j] < start) { pen = false; continue; }
        var px = X(t[j]).toFixed(1), py = Y(val).toFixed(1);
        if (!pen) d += "M" + px + "," + py;
        else if (stepped) d += "L" + px + "," + prevY + "L" + px + "," + py;
        else d += "L" + px + "," + py;
        pen = true; prevY = py;
      }
      if (!d) return;
      var path = svg("path", { d: d, class: "series" + (s.dash ? " dash" : ""), stroke: s.color });
      path.appendChild(svg("title", {}, s.label));
      root.appendChild(path);
    });
    var tip = hover(root, series, t, fmt, X, start, span, width, left, right, top, height - bottom);
    var legend = el("div", { class: "legend" });
    series.forEach(function (s) {
      if (s.noLegend || (s.hideEmpty && !s.values.some(function (v) { return v; }))) return;
      var item = el("span", { class: "key" });
      item.appendChild(el("i", { class: s.dash ? "dash" : "" })).style.borderColor = s.color;
      item.appendChild(document.createTextNode(s.legend ? s.legend() : s.label + " " + fmt(lastValue(s.values) || 0)));
      legend.appendChild(item);
    });
    clear(box);
    box.appendChild(root);
    box.appendChild(legend);
    box.appendChild(tip);
  }

  // A cursor and the values at the nearest point, while the pointer is over a chart.
  function hover(root, series, t, fmt, X, start, span, width, left, right, top, bottom) {
    var cursor = svg("line", { y1: top, y2: bottom, class: "cursor" });
    cursor.style.display = "none";
    root.appendChild(cursor);
    var tip = el("div", { class: "tip" });
    tip.hidden = true;
    function hide() { cursor.style.display = "none"; tip.hidden = true; }
    root.addEventListener("pointerleave", hide);
    root.addEventListener("pointermove", function (ev) {
      var rect = root.getBoundingClientRect();
      var x = (ev.clientX - rect.left) * width / rect.width;
      var time = start + (x - left) / (width - left - right) * span;
      var best = -1, distance = Infinity;
      for (var j = 0; j < t.length; j++) {
        var d = Math.abs(t[j] - time);
        if (t[j] >= start && d < distance) { distance = d; best = j; }
      }
      if (best < 0) { hide(); return; }
      var px = X(t[best]);
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px);
      cursor.style.display = "";
      clear(tip);
      tip.appendChild(el("b", {}, fmtTime(t[best])));
      series.forEach(function (s) {
        var v = s.values[best];
        if (v === null || v === undefined || (s.hideEmpty && !v)) return;
        var line = tip.appendChild(el("div"));
        line.appendChild(el("i", { class: s.dash ? "dash" : "" })).style.borderColor = s.color;
        line.appendChild(document.createTextNode(s.label + " " + fmt(v)));
      });
      tip.hidden = false;
      var shown = px * rect.width / width;
      tip.style.left = Math.max(0, Math.min(shown + 12, rect.width - tip.offsetWidth)) + "px";
    });
    return tip;
  }

  function nodeNames() {
    return Object.keys(state.data.nodes).filter(function (n) { return !state.data.nodes[n].inline || true; });
  }

  function renderCharts() {
    var hist = state.hist;
    var outcomes = Object.keys(hist.requests).map(function (o) {
      return { label: o.replace("_", " "), color: OUTCOME_COLORS[o] || "#334155", values: hist.requests[o], hideEmpty: o !== "ok" };
    }).filter(function (s) { return !s.hideEmpty || s.values.some(function (v) { return v; }); });
    drawChart("chart-requests", outcomes, fmtRate, false);
    var latency = [], replicas = [];
    nodeNames().forEach(function (n, i) {
      var color = PALETTE[i % PALETTE.length];
      var h = hist.nodes[n] || {};
      var f = state.data.nodes[n];
      latency.push({
        label: n + " p99", color: color, values: h.p99_s || [], hideEmpty: true,
        legend: function () { return n + " " + fmtDur(f.p50_s) + " / " + fmtDur(f.p99_s); }
      });
      latency.push({ label: n + " p50", color: color, values: h.p50_s || [], dash: true, noLegend: true });
      if (!state.data.nodes[n].inline) replicas.push({ label: n, color: color, values: h.running || [] });
    });
    drawChart("chart-latency", latency, function (v) { return v ? fmtDur(v) : "0"; }, false);
    drawChart("chart-replicas", replicas, function (v) { return String(Math.round(v)); }, true, true);
  }

  // -- the node panel -------------------------------------------------------------------------------
  function selectNode(dep) {
    state.selected = dep;
    $("panel").dataset.node = "";
    renderPanel();
    if (state.data) updateCards(state.data);
    if (window.matchMedia("(max-width: 900px)").matches) $("panel").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function row(table, key, value, cls) {
    var tr = el("tr");
    tr.appendChild(el("th", {}, key));
    tr.appendChild(el("td", cls ? { class: cls } : {}, value));
    table.appendChild(tr);
  }

  function renderPanel() {
    var panel = $("panel");
    var dep = state.selected;
    var f = dep && state.data ? state.data.nodes[dep] : null;
    if (!f) return;
    var fresh = panel.dataset.node !== dep + "|" + state.graph;
    if (fresh) {
      panel.dataset.node = dep + "|" + state.graph;
      clear(panel);
      var head = el("div", { class: "panel-head" });
      head.appendChild(el("h2", { id: "panel-title" }, dep));
      head.appendChild(el("span", { class: "tag-pill" }, f.kind === "model" ? "model" : "function"));
      panel.appendChild(head);
      panel.appendChild(el("table", { class: "facts", id: "panel-facts" }));
      panel.appendChild(el("h3", {}, "Options in force"));
      panel.appendChild(el("ul", { class: "options", id: "panel-options" }));
      panel.appendChild(el("div", { id: "panel-features" }));
      panel.appendChild(el("h3", {}, "Recent errors"));
      panel.appendChild(el("div", { id: "panel-errors" }));
      if (state.data.admin) panel.appendChild(controls(dep, f));
    }
    var facts = $("panel-facts");
    clear(facts);
    row(facts, "state", (f.state || "–").toLowerCase(), f.state === "RUNNING" ? "ok" : "warn");
    row(facts, "replicas", replicaText(f).replace(/^replicas /, ""));
    if (f.pending_reason) row(facts, "pending", f.pending_reason, "warn");
    if (f.message) row(facts, "message", f.message);
    if (f.transport) row(facts, "transport", f.transport);
    row(facts, "calls", fmtInt(f.calls) + " (" + fmtRate(f.calls_per_s) + "/s)");
    row(facts, "errors", fmtInt(f.errors) + " (" + fmtRate(f.errors_per_s) + "/s)", f.errors_per_s > 0 ? "bad" : "");
    row(facts, "latency", "p50 " + fmtDur(f.p50_s) + " · p99 " + fmtDur(f.p99_s) + " (last " + Math.round(state.data.latency_window_s || 60) + " s)");
    row(facts, "in flight", f.in_flight === null || f.in_flight === undefined ? "– (not seen from the ingress)" : fmtInt(f.in_flight));
    if (f.batch) row(facts, "batches", fmtInt(f.batch.batches) + " · avg " + f.batch.mean.toFixed(1) + " · max " + f.batch.max);
    var options = $("panel-options");
    clear(options);
    var lines = (f.option_lines || []).slice();
    if (!lines.length) lines.push("defaults (1 replica, no batching)");
    lines.forEach(function (l) { options.appendChild(el("li", {}, l)); });
    var feats = $("panel-features");
    clear(feats);
    Object.keys(f.features || {}).sort().forEach(function (name) {
      feats.appendChild(el("h3", {}, name));
      var t = el("table", { class: "facts" });
      var figures = f.features[name];
      Object.keys(figures).forEach(function (k) {
        var v = figures[k];
        row(t, figureName(k).replace(/ \(s\)$/, ""), /_s$/.test(k) && typeof v === "number" ? fmtDur(v) : fmtValue(v));
      });
      feats.appendChild(t);
    });
    var errs = $("panel-errors");
    clear(errs);
    errs.appendChild(errorTable((f.recent_errors || []).slice().reverse(), false));
  }

  function errorTable(errors, withNode) {
    if (!errors.length) return el("p", { class: "hint" }, "None recently.");
    var wrap = el("div", { class: "table-scroll" });
    var t = wrap.appendChild(el("table", { class: "errors" }));
    var head = el("tr");
    ["time"].concat(withNode ? ["node"] : []).concat(["type", "outcome", "request id"]).forEach(function (h) { head.appendChild(el("th", {}, h)); });
    t.appendChild(head);
    errors.slice(0, SHOWN_ERRORS).forEach(function (e) {
      var tr = el("tr");
      tr.appendChild(el("td", {}, fmtTime(e.time)));
      if (withNode) tr.appendChild(el("td", {}, e.node || "–"));
      tr.appendChild(el("td", { class: "bad" }, e.type));
      tr.appendChild(el("td", {}, e.outcome.replace("_", " ") + (e.status ? " (" + e.status + ")" : "")));
      tr.appendChild(el("td", { class: "mono" }, e.request_id));
      t.appendChild(tr);
    });
    if (errors.length > SHOWN_ERRORS) wrap.appendChild(el("p", { class: "hint" }, (errors.length - SHOWN_ERRORS) + " older not shown"));
    return wrap;
  }

  function controls(dep, f) {
    var box = el("div", { class: "controls", id: "panel-controls" });
    box.appendChild(el("h3", {}, "Controls"));
    if (!state.token) {
      box.appendChild(el("p", { class: "hint" }, "Unlock with the admin token (in the header) to scale or update this node."));
      return box;
    }
    var msg = el("p", { class: "hint", id: "control-message", role: "status" });
    if (!f.inline) {
      var scale = el("form", { class: "row", id: "scale-form" });
      scale.appendChild(el("label", { for: "scale-replicas" }, "replicas"));
      var n = el("input", { type: "number", id: "scale-replicas", min: "0", max: "1000", step: "1", value: String(f.target || 1) });
      scale.appendChild(n);
      scale.appendChild(el("button", { type: "submit", id: "scale-button" }, "Scale"));
      scale.addEventListener("submit", function (ev) {
        ev.preventDefault();
        act(dep, "scale", { num_replicas: parseInt(n.value, 10) }, msg);
      });
      box.appendChild(scale);
    }
    var update = el("form", { class: "grid-form", id: "update-form" });
    var fields = [["max_batch_size", "max batch size", f.batched], ["batch_wait_timeout_s", "batch wait (s)", f.batched],
      ["max_ongoing_requests", "max ongoing", true], ["max_queued_requests", "max queued", true],
      ["timeout_s", "timeout (s)", true], ["retries", "retries", true]];
    var inputs = {};
    fields.forEach(function (fd) {
      if (!fd[2]) return;
      var id = "update-" + fd[0].replace(/_/g, "-");
      update.appendChild(el("label", { for: id }, fd[1]));
      var current = (f.options || {})[fd[0]];
      inputs[fd[0]] = update.appendChild(el("input", { type: "number", id: id, step: "any", min: "0", placeholder: current === undefined ? "unchanged" : String(current) }));
    });
    update.appendChild(el("button", { type: "submit", id: "update-button" }, "Update"));
    update.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var body = {};
      for (var k in inputs) if (inputs[k].value !== "") body[k] = Number(inputs[k].value);
      if (!Object.keys(body).length) { msg.textContent = "Give at least one option to change."; return; }
      act(dep, "update", body, msg);
    });
    box.appendChild(update);
    box.appendChild(msg);
    return box;
  }

  function act(dep, what, body, msg) {
    var url = new URL("graphs/" + encodeURIComponent(state.graph) + "/nodes/" + encodeURIComponent(dep) + "/" + what, adminUrl);
    msg.textContent = what === "scale" ? "scaling…" : "updating…";
    msg.className = "hint";
    fetch(url, {
      method: "POST", credentials: "omit", cache: "no-store",
      headers: { authorization: "Bearer " + state.token, "content-type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (j) {
        if (r.status === 401 || r.status === 403) setToken(null);
        if (!r.ok) throw new Error(j && j.error ? j.error.message : "HTTP " + r.status);
        msg.textContent = (what === "scale" ? "Scaled: " : "Updated: ") + replicaText({
          running: j.node.running_replicas, target: j.node.target_replicas, pending: j.node.pending_replicas, state: j.node.state
        });
        msg.className = "hint ok";
        schedule(0);
      });
    }).catch(function (e) { msg.textContent = e.message; msg.className = "hint bad"; });
  }

  // -- recent errors of the graph -------------------------------------------------------------------
  function renderErrors(d) {
    var box = $("errors");
    clear(box);
    var head = el("div", { class: "card-head" });
    head.appendChild(el("h2", {}, "Recent errors"));
    head.appendChild(el("span", { class: "hint" }, "request ids only, never payloads; details in the server log"));
    box.appendChild(head);
    var all = (d.recent_errors || []).slice();
    for (var n in d.nodes) all = all.concat(d.nodes[n].recent_errors || []);
    all.sort(function (a, b) { return b.time - a.time; });
    box.appendChild(errorTable(all, true));
  }

  window.addEventListener("resize", function () { if (state.hist) renderCharts(); });
  schedule(0);
})();
