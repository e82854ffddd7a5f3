/* The attribution-graph viewer: draws the graphs in #circuits-data (see report/circuits.py for
   their shape) as one SVG per graph, built when the graph is picked and rebuilt only when the
   window's width changes. x is the token position, y the layer (embeddings at the bottom,
   logits on top). Edges are drawn strongest first, at most the slider's number of them, as a
   dozen <path> elements (one per sign and width class), so 30,000 edges cost a dozen elements.
   Data only ever reaches the page through textContent, setAttribute with numbers, and
   createElement: never innerHTML. No network. */
(function () {
  "use strict";
  var el = aimriDom.el, svg = aimriDom.svg, fmt = aimriDom.fmt, showTok = aimriDom.showTok;
  var DEFAULT_EDGES = 1000, PANEL_ROWS = 12, FOCUS_EDGES = 400, LEVELS = 6;
  var LEFT = 46, RIGHT = 12, TOP = 14, BOTTOM = 34;
  var KIND_NAME = ["feature", "error node", "embedding", "logit"];
  var KIND_ORDER = [1, 2, 0, 0];  // within a cell: embeddings and logits, features, errors last
  var graphs = JSON.parse(document.getElementById("circuits-data").textContent);
  var host = document.getElementById("cg-graph");
  var panel = document.getElementById("cg-panel");
  var pick = document.getElementById("cg-pick");
  var slider = document.getElementById("cg-edges");
  var count = document.getElementById("cg-edge-count");
  var snShow = document.getElementById("cg-sn-show");
  var snMerge = document.getElementById("cg-sn-merge");
  var tip = el("div", "cg-tip");
  tip.hidden = true;
  document.body.appendChild(tip);
  var V = null;  // the view: graph, positions, SVG layers, selection

  // ---- small helpers ----
  function clip(s, n) { s = showTok(s); return s.length > n ? s.slice(0, Math.max(1, n - 1)) + "…" : s; }

  // ---- layout: columns sized by their busiest cell, nodes spread inside their cell ----
  function layout(g) {
    var N = g.nodes.id.length, nS = g.supernodes.length;
    var ncols = Math.max(1, g.tokens.length, Math.max.apply(null, g.nodes.ctx.concat([0])) + 1);
    var cells = new Map(), colMax = new Array(ncols).fill(1);
    for (var i = 0; i < N; i++) {
      var key = g.nodes.row[i] * ncols + g.nodes.ctx[i];
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    }
    cells.forEach(function (list, key) {
      colMax[key % ncols] = Math.max(colMax[key % ncols], list.length);
      list.sort(function (a, b) {
        return KIND_ORDER[g.nodes.kind[a]] - KIND_ORDER[g.nodes.kind[b]] ||
          Math.abs(g.nodes.influence[b] || 0) - Math.abs(g.nodes.influence[a] || 0) || a - b;
      });
    });
    // Each column wants 11 px per node of its busiest cell; together they fill the width,
    // squeezed down to 3 px per node (then the graph scrolls sideways).
    var want = colMax.map(function (m) { return Math.max(64, 11 * m + 16); });
    var sum = want.reduce(function (a, b) { return a + b; }, 0);
    var avail = Math.max(320, host.clientWidth - LEFT - RIGHT);
    var colX = [LEFT], colW = want.map(function (w, c) {
      return Math.max(Math.min(w, 56 + 3 * colMax[c]), w * avail / sum);
    });
    colW.forEach(function (w, c) { colX.push(colX[c] + w); });
    // Rows with nodes get full height, empty layers a sliver (a pruned graph skips many).
    var rowH = g.n_rows > 40 ? 16 : 20, used = new Uint8Array(g.n_rows), rowTop = new Float64Array(g.n_rows), rowHt = new Float64Array(g.n_rows);
    g.nodes.row.forEach(function (r) { used[r] = 1; });
    for (var r = g.n_rows - 1, top = TOP; r >= 0; r--) {
      rowTop[r] = top;
      rowHt[r] = used[r] ? rowH : 7;
      top += rowHt[r];
    }
    var H = top + BOTTOM;
    var x = new Float64Array(N + nS), y = new Float64Array(N + nS), size = new Float64Array(N + nS);
    cells.forEach(function (list, key) {
      var c = key % ncols, row = (key - c) / ncols;
      var step = (colW[c] - 12) / list.length;
      list.forEach(function (i, k) {
        x[i] = colX[c] + 6 + (k + 0.5) * step;
        y[i] = rowTop[row] + rowHt[row] / 2;
        size[i] = Math.max(1.6, Math.min(4.5, step * 0.42));
      });
    });
    g.supernodes.forEach(function (s, k) {  // a merged supernode sits at its members' centroid
      var sx = 0, sy = 0;
      s.members.forEach(function (i) { sx += x[i]; sy += y[i]; });
      x[N + k] = sx / s.members.length;
      y[N + k] = sy / s.members.length;
      size[N + k] = 7;
    });
    return { ncols: ncols, colX: colX, colW: colW, rowH: rowH, rowTop: rowTop, rowHt: rowHt, used: used,
      W: colX[ncols] + RIGHT, H: H, x: x, y: y, size: size };
  }

  // ---- building the SVG ----
  function build(gi) {
    var t0 = performance.now();
    var g = graphs[gi], L = layout(g);
    var root = svg("svg", { "class": "cg-svg", width: L.W, height: L.H, viewBox: "0 0 " + L.W + " " + L.H });
    root.appendChild(axes(g, L));
    var boxes = svg("g", { "class": "cg-boxes" });
    var edges = svg("g", { "class": "cg-edges" });
    var focus = svg("g", { "class": "cg-focus" });
    var nodes = svg("g", { "class": "cg-nodes" });
    var supers = svg("g", { "class": "cg-supers" });
    [boxes, edges, focus, nodes, supers].forEach(function (e) { root.appendChild(e); });
    var N = g.nodes.id.length, pinned = new Set(g.pinned), shapes = [];
    for (var i = 0; i < N; i++) {
      var s = shape(g.nodes.kind[i], L.x[i], L.y[i], L.size[i]);
      s.setAttribute("data-i", i);
      if (pinned.has(i)) s.classList.add("pin");
      if (g.nodes.target[i]) s.classList.add("target");
      nodes.appendChild(s);
      shapes.push(s);
    }
    V = { gi: gi, g: g, L: L, root: root, boxes: boxes, edges: edges, focus: focus, nodes: nodes,
      supers: supers, shapes: shapes, sel: -1, rep: null };
    host.replaceChildren(root);
    slider.max = String(g.links.w.length);
    slider.value = String(Math.min(DEFAULT_EDGES, g.links.w.length));
    snShow.disabled = snMerge.disabled = !g.supernodes.length;
    applySupernodes();
    select(g.clicked);
    host.dataset.nodes = String(N);
    host.dataset.ms = String(Math.round(performance.now() - t0));  // building this graph
    host.dataset.readyMs = String(Math.round(performance.now()));  // since the page was opened
  }

  function shape(kind, x, y, r) {
    var s;
    if (kind === 1) s = svg("rect", { x: (x - r).toFixed(1), y: (y - r).toFixed(1), width: (2 * r).toFixed(1), height: (2 * r).toFixed(1) });
    else if (kind === 2) s = svg("path", { d: "M" + x.toFixed(1) + " " + (y - r - 1.5).toFixed(1) + "l" + (r + 1.5) + " " + (r + 1.5) + "l" + -(r + 1.5) + " " + (r + 1.5) + "l" + -(r + 1.5) + " " + -(r + 1.5) + "z" });
    else if (kind === 3) s = svg("rect", { x: (x - r - 3).toFixed(1), y: (y - r).toFixed(1), width: (2 * r + 6).toFixed(1), height: (2 * r).toFixed(1), rx: r });
    else s = svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: r.toFixed(1) });
    s.setAttribute("class", "cg-node cg-k" + kind);
    return s;
  }

  function axes(g, L) {
    var a = svg("g", { "class": "cg-axes" }), every = L.rowH < 18 ? 2 : 1, band = 0;
    for (var r = 0; r < g.n_rows; r++) {
      var y = L.rowTop[r], h = L.rowHt[r];
      if (L.used[r] && band++ % 2) a.appendChild(svg("rect", { x: LEFT, y: y, width: L.colX[L.ncols] - LEFT, height: h, "class": "cg-band" }));
      var name = r === 0 ? "emb" : r === g.n_rows - 1 ? "logit" : "L" + (r - 1);
      if (r === 0 || r === g.n_rows - 1 || (L.used[r] && (r - 1) % every === 0)) {
        a.appendChild(svg("text", { x: LEFT - 6, y: y + h / 2 + 4, "text-anchor": "end", "class": "cg-rl" }, name));
      }
    }
    for (var c = 0; c < L.ncols; c++) {
      var x = L.colX[c], w = L.colW[c];
      if (c) a.appendChild(svg("line", { x1: x, x2: x, y1: TOP, y2: L.H - BOTTOM + 4, "class": "cg-col" }));
      var tok = c < g.tokens.length ? g.tokens[c] : "";
      var t = svg("text", { x: x + w / 2, y: L.H - BOTTOM + 18, "text-anchor": "middle", "class": "cg-tok" }, clip(tok, Math.floor(w / 7)));
      t.appendChild(svg("title", {}, JSON.stringify(String(tok)) + " at position " + c));
      a.appendChild(t);
      a.appendChild(svg("text", { x: x + w / 2, y: L.H - BOTTOM + 30, "text-anchor": "middle", "class": "cg-pos" }, c));
    }
    return a;
  }

  // ---- supernodes: boxes around their members, or one merged node each ----
  function applySupernodes() {
    var g = V.g, L = V.L, N = g.nodes.id.length, merge = snMerge.checked && !snMerge.disabled;
    V.rep = null;
    if (merge) {
      V.rep = new Int32Array(N);
      for (var i = 0; i < N; i++) V.rep[i] = i;
      g.supernodes.forEach(function (s, k) { s.members.forEach(function (m) { if (V.rep[m] === m) V.rep[m] = N + k; }); });
    }
    V.shapes.forEach(function (s, i) { s.style.display = merge && V.rep[i] !== i ? "none" : ""; });
    V.boxes.replaceChildren();
    V.supers.replaceChildren();
    g.supernodes.forEach(function (s, k) {
      if (merge) {
        var w = Math.max(40, 7 * Math.min(s.name.length, 24) + 10), y = L.y[N + k];
        var x = Math.max(LEFT + w / 2, Math.min(L.W - RIGHT - w / 2, L.x[N + k]));
        var grp = svg("g", { "class": "cg-super", "data-i": N + k });
        grp.appendChild(svg("rect", { x: x - w / 2, y: y - 8, width: w, height: 16, rx: 8 }));
        grp.appendChild(svg("text", { x: x, y: y + 4, "text-anchor": "middle" }, clip(s.name, 24)));
        V.supers.appendChild(grp);
      } else if (snShow.checked && !snShow.disabled) {
        var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
        s.members.forEach(function (m) { x0 = Math.min(x0, L.x[m]); x1 = Math.max(x1, L.x[m]); y0 = Math.min(y0, L.y[m]); y1 = Math.max(y1, L.y[m]); });
        var b = svg("g", { "class": "cg-box", "data-i": N + k });
        b.appendChild(svg("rect", { x: x0 - 8, y: y0 - 8, width: x1 - x0 + 16, height: y1 - y0 + 16, rx: 5 }));
        var name = clip(s.name, 30), right = x0 - 6 + 6.5 * name.length > L.W - RIGHT;
        b.appendChild(svg("text", { x: right ? x1 + 6 : x0 - 6, y: y0 - 11, "text-anchor": right ? "end" : "start" }, name));
        V.boxes.appendChild(b);
      }
    });
    drawEdges();
    select(V.sel >= N && !merge ? -1 : V.sel);
  }

  // ---- edges ----
  function edgeList(from, to, keep) {
    // links [from, to) as [a, b, w] between drawn nodes: merged supernodes sum their members'
    // links, and links inside one supernode vanish. `keep(a, b)` filters.
    var g = V.g, src = g.links.src, dst = g.links.dst, w = g.links.w, rep = V.rep, out = [];
    if (!rep) {
      for (var i = from; i < to; i++) if (!keep || keep(src[i], dst[i])) out.push([src[i], dst[i], w[i]]);
      return out;
    }
    var sum = new Map();
    for (var j = from; j < to; j++) {
      var a = rep[src[j]], b = rep[dst[j]];
      if (a === b || (keep && !keep(a, b))) continue;
      var k = a * 1e6 + b;
      var e = sum.get(k);
      if (e) e[2] += w[j]; else sum.set(k, [a, b, w[j]]);
    }
    sum.forEach(function (e) { out.push(e); });
    return out.sort(function (p, q) { return Math.abs(q[2]) - Math.abs(p[2]); });
  }

  function curve(a, b) {
    var L = V.L, x1 = L.x[a], y1 = L.y[a], x2 = L.x[b], y2 = L.y[b], m = (y1 + y2) / 2;
    return "M" + x1.toFixed(1) + " " + y1.toFixed(1) + "C" + x1.toFixed(1) + " " + m.toFixed(1) + " " +
      x2.toFixed(1) + " " + m.toFixed(1) + " " + x2.toFixed(1) + " " + y2.toFixed(1);
  }

  function width(w, top) { return 0.4 + 4.6 * Math.min(1, Math.abs(w) / top); }

  function drawEdges() {
    var t0 = performance.now(), g = V.g, n = Math.min(Number(slider.value), g.links.w.length);
    var list = edgeList(0, n);
    var top = list.length ? Math.abs(list[0][2]) || 1 : 1;
    var d = [];  // per sign and width class, the path data of its edges
    for (var k = 0; k < 2 * LEVELS; k++) d.push([]);
    list.forEach(function (e) {
      var level = Math.min(LEVELS - 1, Math.floor(Math.sqrt(Math.abs(e[2]) / top) * LEVELS));
      d[(e[2] < 0 ? LEVELS : 0) + level].push(curve(e[0], e[1]));
    });
    V.edges.replaceChildren();
    for (var lv = 0; lv < LEVELS; lv++) {  // weak first, so strong edges lie on top
      [0, LEVELS].forEach(function (off) {
        if (!d[off + lv].length) return;
        var w = width(top * Math.pow((lv + 0.5) / LEVELS, 2), top);
        V.edges.appendChild(svg("path", { d: d[off + lv].join(""), "class": off ? "neg" : "pos",
          "stroke-width": w.toFixed(2), "stroke-opacity": (0.25 + 0.6 * lv / (LEVELS - 1)).toFixed(2) }));
      });
    }
    count.textContent = "the " + n.toLocaleString() + " strongest of " + g.links.w.length.toLocaleString() + " edges";
    host.dataset.edges = String(list.length);
    host.dataset.edgesMs = String(Math.round(performance.now() - t0));
  }

  // ---- selection: highlight a node's edges, list its strongest inputs and outputs ----
  function select(i) {
    var N = V.g.nodes.id.length;
    V.sel = i;
    V.focus.replaceChildren();
    V.root.classList.toggle("focused", i >= 0);
    V.root.querySelectorAll(".sel, .nb").forEach(function (e) { e.classList.remove("sel", "nb"); });
    if (i >= 0 && i < N && V.rep && V.rep[i] !== i) i = V.sel = V.rep[i];  // merged away
    if (i < 0 || (i >= N && !V.rep)) { V.sel = -1; hint(); return; }
    var all = edgeList(0, V.g.links.w.length, function (a, b) { return a === i || b === i; });
    var top = all.length ? Math.abs(all[0][2]) || 1 : 1;
    all.slice(0, FOCUS_EDGES).reverse().forEach(function (e) {
      V.focus.appendChild(svg("path", { d: curve(e[0], e[1]), "class": e[2] < 0 ? "neg" : "pos", "stroke-width": width(e[2], top).toFixed(2) }));
      mark(e[0] === i ? e[1] : e[0], "nb");
    });
    mark(i, "sel");
    showPanel(i, all);
  }

  function mark(i, cls) {
    var N = V.g.nodes.id.length;
    var e = i < N ? V.shapes[i] : V.supers.querySelector('[data-i="' + i + '"]');
    if (e) e.classList.add(cls);
  }

  function hint() { panel.replaceChildren(el("p", "muted", "Click a node for its strongest inputs and outputs.")); }

  function showPanel(i, edges) {
    var ins = edges.filter(function (e) { return e[1] === i; });
    var outs = edges.filter(function (e) { return e[0] === i; });
    panel.replaceChildren(el("h4", "cg-ptitle", labelOf(i)));
    panel.appendChild(facts(i));
    list("strongest inputs", ins, 0);
    list("strongest outputs", outs, 1);
    var clear = el("button", "cg-clear", "clear");
    clear.type = "button";
    clear.addEventListener("click", function () { select(-1); });
    panel.appendChild(clear);
  }

  function list(title, edges, end) {
    panel.appendChild(el("h5", null, title + " (" + edges.length.toLocaleString() + ")"));
    if (!edges.length) { panel.appendChild(el("p", "muted", "none")); return; }
    var box = el("div", "cg-list");
    edges.slice(0, PANEL_ROWS).forEach(function (e) {
      var other = e[end];
      var b = el("button", "cg-row");
      b.type = "button";
      b.appendChild(el("span", e[2] < 0 ? "w neg" : "w pos", (e[2] > 0 ? "+" : "") + fmt(e[2])));
      b.appendChild(el("span", "lab", labelOf(other)));
      b.title = where(other);
      b.addEventListener("click", function () { select(other); });
      box.appendChild(b);
    });
    panel.appendChild(box);
  }

  function labelOf(i) {
    var g = V.g, N = g.nodes.id.length;
    return i < N ? g.nodes.label[i] : "supernode: " + g.supernodes[i - N].name;
  }

  function where(i) {
    var g = V.g, N = g.nodes.id.length;
    if (i >= N) return g.supernodes[i - N].members.length + " nodes";
    var c = g.nodes.ctx[i], tok = c < g.tokens.length ? JSON.stringify(String(g.tokens[c])) : "";
    return KIND_NAME[g.nodes.kind[i]] + ", layer " + g.nodes.layer[i] + ", position " + c + " " + tok;
  }

  function facts(i) {
    var g = V.g, N = g.nodes.id.length, box = el("div", "cg-facts"), rows;
    if (i >= N) {
      var s = g.supernodes[i - N];
      rows = [["members", s.members.length]];
      s.members.slice(0, 8).forEach(function (m) { rows.push(["", g.nodes.label[m]]); });
    } else {
      var c = g.nodes.ctx[i];
      rows = [["kind", KIND_NAME[g.nodes.kind[i]]], ["layer", g.nodes.layer[i]],
        ["position", c + (c < g.tokens.length ? "  " + JSON.stringify(String(g.tokens[c])) : "")],
        ["activation", fmt(g.nodes.act[i])], ["influence", fmt(g.nodes.influence[i])], ["node", g.nodes.id[i]]];
      if (g.nodes.kind[i] === 3) rows.splice(2, 0, ["probability", fmt(g.nodes.prob[i])]);
    }
    rows.forEach(function (kv) { box.appendChild(el("span", null, kv[0])); box.appendChild(el("span", null, kv[1])); });
    return box;
  }

  // ---- events ----
  function nodeAt(t) {
    var e = t && t.closest ? t.closest("[data-i]") : null;
    return e && V.root.contains(e) ? Number(e.getAttribute("data-i")) : -1;
  }
  host.addEventListener("click", function (ev) { if (V) select(nodeAt(ev.target)); });
  host.addEventListener("mousemove", function (ev) {
    var i = V ? nodeAt(ev.target) : -1;
    if (i < 0) { tip.hidden = true; return; }
    var g = V.g, N = g.nodes.id.length;
    tip.replaceChildren(el("b", null, labelOf(i)), el("div", null, where(i)));
    if (i < N) tip.appendChild(el("div", null, "activation " + fmt(g.nodes.act[i]) + " · influence " + fmt(g.nodes.influence[i])));
    tip.hidden = false;
    var x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    var y = ev.clientY + 16 + tip.offsetHeight > window.innerHeight ? ev.clientY - tip.offsetHeight - 10 : ev.clientY + 16;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  });
  host.addEventListener("mouseleave", function () { tip.hidden = true; });
  var queued = false;
  slider.addEventListener("input", function () {
    if (queued) return;
    queued = true;
    // A timer, not an animation frame: frames do not run in background tabs or under a
    // headless browser's virtual time, and the slider must still redraw there.
    setTimeout(function () { queued = false; drawEdges(); }, 0);
  });
  snShow.addEventListener("change", applySupernodes);
  snMerge.addEventListener("change", applySupernodes);
  function show(gi) {
    document.querySelectorAll(".cg-meta").forEach(function (m) { m.hidden = m.getAttribute("data-graph") !== String(gi); });
    build(gi);
  }
  if (pick) pick.addEventListener("change", function () { show(Number(pick.value)); });
  var lastW = host.clientWidth, timer = 0;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      if (host.clientWidth === lastW || !V) return;
      lastW = host.clientWidth;
      var sel = V.sel, n = slider.value;
      build(V.gi);
      slider.value = n;
      drawEdges();
      select(sel);
    }, 150);
  });
  show(pick ? Number(pick.value) : 0);
})();
