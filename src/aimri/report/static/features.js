/* The feature dashboards: search, sort and page through the features in #features-data and
   draw each card. Data only ever reaches the page through textContent, setAttribute with
   numbers, and createElement: never innerHTML. No network.
   State lives in the URL: #q=<search>&sort=<key>&page=<n> (or ?q=… in the query string), so
   a search can be linked; "#123" as a search means that feature only. */
(function () {
  "use strict";
  var PAGE = 25, SHOWN_TOP = 5;
  var el = aimriDom.el, svg = aimriDom.svg, fmt = aimriDom.fmt;
  // Tokens as the labels show them (features/words.py): ⏎ newline, ⇥ tab, special tokens by name.
  function showTok(t) {
    var s = String(t), special = /^<\|([^<>|]+)\|>$/.exec(s);
    if (special) return "\u27e8" + special[1] + "\u27e9";
    return s.replace(/\r?\n/g, "\u23ce").replace(/\t/g, "\u21e5");
  }
  var feats = JSON.parse(document.getElementById("features-data").textContent);
  var meta = JSON.parse(document.getElementById("features-meta").textContent);
  var byIndex = new Map();
  var items = feats.map(function (f) {
    var best = null;
    (f.scores || []).forEach(function (s) {
      if (typeof s.value === "number" && (best === null || s.value > best)) best = s.value;
    });
    var text = (f.labels || []).map(function (l) { return String(l.text); }).join("\n");
    var item = { f: f, best: best, text: text.toLowerCase() };
    byIndex.set(f.index, item);
    return item;
  });

  function by(key, dir) {  // dir 1: ascending, -1: descending; missing values last
    return function (a, b) {
      var x = key(a), y = key(b), xm = typeof x !== "number", ym = typeof y !== "number";
      if (xm !== ym) return xm ? 1 : -1;
      if (xm || x === y) return a.f.index - b.f.index;
      return x < y ? -dir : dir;
    };
  }
  var SORTS = {
    "score": by(function (i) { return i.best; }, -1),
    "score-asc": by(function (i) { return i.best; }, 1),
    "density": by(function (i) { return i.f.density; }, -1),
    "density-asc": by(function (i) { return i.f.density; }, 1),
    "max": by(function (i) { return i.f.max_act; }, -1),
    "index": by(function (i) { return i.f.index; }, 1)
  };

  function matches(item, q) {
    q = q.trim().toLowerCase();
    if (!q) return true;
    var exact = /^#(\d+)$/.exec(q);
    if (exact) return item.f.index === Number(exact[1]);
    if (/^\d+$/.test(q) && item.f.index === Number(q)) return true;
    return q.split(/\s+/).every(function (w) { return item.text.indexOf(w) !== -1; });
  }

  // ---- state in the URL ----
  function readState() {
    var h = location.hash.slice(1);
    var p = new URLSearchParams(h.indexOf("=") !== -1 ? h : location.search.slice(1));
    var sort = p.get("sort");
    return {
      q: p.get("q") || "",
      sort: Object.prototype.hasOwnProperty.call(SORTS, sort) ? sort : "score",
      page: Math.max(1, parseInt(p.get("page"), 10) || 1)
    };
  }
  function writeState() {
    var p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.sort !== "score") p.set("sort", state.sort);
    if (state.page > 1) p.set("page", String(state.page));
    var s = p.toString();
    try { history.replaceState(null, "", s ? "#" + s : location.pathname + location.search); } catch (e) { /* file:// in some browsers */ }
  }

  // ---- small DOM helpers ----
  function density(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    if (v <= 0) return "never fires";
    return fmt(100 * v, 2) + "% (1 in " + Math.round(1 / v).toLocaleString() + " tokens)";
  }
  function jump(index) { location.hash = "q=" + encodeURIComponent("#" + index); }

  // ---- one card ----
  function card(item) {
    var f = item.f;
    var c = el("article", "fcard");
    c.id = "f-" + f.index;
    c.appendChild(cardHeader(f));
    var side = el("div", "side"), main = el("div", "main");
    side.appendChild(stats(f));
    side.appendChild(el("h4", null, "activations where it fires (log scale)"));
    side.appendChild(histogram(f));
    tokenList(side, "promotes", f.promoted, "pos");
    tokenList(side, "suppresses", f.suppressed, "neg");
    links(side, "neighbours (decoder cosine)", f.neighbours);
    links(side, "fires with (Jaccard)", f.cooccurring);
    examples(main, f);
    c.appendChild(side);
    c.appendChild(main);
    return c;
  }

  function cardHeader(f) {
    var head = el("header");
    var a = el("a", "fidx", "#" + f.index);
    a.href = "#q=" + encodeURIComponent("#" + f.index);
    a.title = "link to this feature";
    head.appendChild(a);
    var box = el("div", "labels");
    var labels = f.labels || [], scores = f.scores || [], used = new Set();
    labels.forEach(function (l) {
      var row = el("div", l.scores_nothing ? "label nil" : "label");
      row.appendChild(el("span", "ltext", l.text));
      row.appendChild(el("span", "expl", l.explainer));
      if (l.scores_nothing) {
        var nil = el("span", "nilnote", "scores nothing");
        nil.title = "no score of this label beats chance and a label taken from another feature";
        row.appendChild(nil);
      }
      scores.forEach(function (s, k) {
        if (s.explainer === l.explainer) { row.appendChild(chip(s)); used.add(k); }
      });
      box.appendChild(row);
    });
    if (!labels.length) box.appendChild(el("div", "label muted", "(no label)"));
    scores.forEach(function (s, k) {
      if (used.has(k)) return;
      var row = el("div", "label muted", "score of an unshown " + s.explainer + " label");
      row.appendChild(chip(s));
      box.appendChild(row);
    });
    head.appendChild(box);
    return head;
  }

  function chip(s) {
    var t = ((meta.thresholds || {})[s.explainer] || {})[s.scorer];
    var cls = typeof t === "number" && typeof s.value === "number" ? (s.value > t ? " good" : " weak") : "";
    var c = el("span", "chip" + cls, s.scorer + " " + fmt(s.value) + " · shuffled " + fmt(s.baseline));
    var m = s.metrics || {};
    c.title = s.scorer + " score on held-out contexts (0.5 = chance); the same scorer with a label from another feature: " +
      fmt(s.baseline) + (typeof t === "number" ? "; interpretable above " + fmt(t) : "") +
      Object.keys(m).map(function (k) { return "\n" + k + " " + fmt(m[k], 4); }).join("");
    return c;
  }

  function stats(f) {
    var g = el("div", "stats"), q = f.quantiles || {};
    [["density", density(f.density)], ["max", fmt(f.max_act)], ["mean (firing)", fmt(f.mean_act)],
     ["p50 · p90 · p99", fmt(q.p50) + " · " + fmt(q.p90) + " · " + fmt(q.p99)]].forEach(function (kv) {
      g.appendChild(el("span", null, kv[0]));
      g.appendChild(el("span", null, kv[1]));
    });
    return g;
  }

  function histogram(f) {
    var edges = f.hist_edges || [], counts = f.hist_counts || [];
    var lo = 0, hi = counts.length - 1;
    while (lo < hi && !counts[lo]) lo++;
    while (hi > lo && !counts[hi]) hi--;
    var W = 280, H = 64, n = Math.max(1, hi - lo + 1), top = Math.max.apply(null, counts.concat([1]));
    var s = svg("svg", { "class": "fhist", width: W, height: H + 14, viewBox: "0 0 " + W + " " + (H + 14) });
    for (var i = lo; i <= hi && counts.length; i++) {
      var h = Math.max(counts[i] ? 1 : 0, (H - 4) * counts[i] / top);
      var r = svg("rect", { x: ((i - lo) * W / n).toFixed(1), y: (H - h).toFixed(1), width: Math.max(1, W / n - 1).toFixed(1), height: h.toFixed(1), fill: "#f97316" });
      var title = svg("title", {});
      title.textContent = fmt(edges[i]) + " – " + fmt(edges[i + 1]) + ": " + counts[i].toLocaleString() + " tokens";
      r.appendChild(title);
      s.appendChild(r);
    }
    [[2, "start", edges[lo]], [W - 2, "end", edges[hi + 1]]].forEach(function (t) {
      var tx = svg("text", { x: t[0], y: H + 12, "text-anchor": t[1], "font-size": 10, fill: "#6b7280" });
      tx.textContent = fmt(t[2]);
      s.appendChild(tx);
    });
    return s;
  }

  function tokenList(parent, title, list, cls) {
    if (!list || !list.length) return;
    parent.appendChild(el("h4", null, title));
    var box = el("div", "toklist");
    list.forEach(function (t) {
      var s = el("span", "tok " + cls, showTok(t.token));
      s.appendChild(el("span", "v", fmt(t.value, 2)));
      s.title = JSON.stringify(String(t.token)) + " " + fmt(t.value, 4);
      box.appendChild(s);
    });
    parent.appendChild(box);
  }

  function links(parent, title, list) {
    if (!list || !list.length) return;
    parent.appendChild(el("h4", null, title));
    var box = el("div", "toklist");
    list.forEach(function (n) {
      var target = byIndex.get(n.feature), ok = target !== undefined;
      var b = el("button", ok ? "nb" : "nb off", "#" + n.feature + " " + fmt(n.value, 2));
      b.type = "button";
      if (ok) {
        var labels = target.f.labels || [];
        b.title = labels.length ? String(labels[0].text) : "(no label)";
        b.addEventListener("click", function () { jump(n.feature); });
      } else {
        b.disabled = true;
        b.title = "not among the analysed features";
      }
      box.appendChild(b);
    });
    parent.appendChild(box);
  }

  // ---- example contexts, by kind ----
  function examples(main, f) {
    var all = f.examples || [];
    var kind = function (k) { return all.filter(function (e) { return e.kind === k; }); };
    var top = kind("top");
    if (top.length) {
      main.appendChild(el("h4", null, "top activations"));
      var box = el("div");
      top.slice(0, SHOWN_TOP).forEach(function (e) { box.appendChild(exampleRow(e, f)); });
      main.appendChild(box);
      if (top.length > SHOWN_TOP) {
        var more = el("button", "more", "show all " + top.length);
        more.type = "button";
        more.addEventListener("click", function () {
          top.slice(SHOWN_TOP).forEach(function (e) { box.appendChild(exampleRow(e, f)); });
          more.remove();
        });
        main.appendChild(more);
      }
    }
    var quant = kind("quantile");
    if (quant.length) {
      var buckets = Array.from(new Set(quant.map(function (e) { return e.bucket; }))).sort(function (a, b) { return a - b; });
      lazy(main, "across activation quantiles: " + buckets.length + " buckets, " + quant.length + " contexts", function (box) {
        buckets.forEach(function (b, k) {
          var name = "bucket " + b + (k === 0 ? " (highest)" : k === buckets.length - 1 ? " (lowest)" : "");
          box.appendChild(el("h4", null, name));
          quant.filter(function (e) { return e.bucket === b; }).forEach(function (e) { box.appendChild(exampleRow(e, f)); });
        });
      });
    }
    [["random_negative", "random contexts where it is silent"],
     ["hard_negative", "hard negatives: a neighbour fires, this one does not"]].forEach(function (kv) {
      var list = kind(kv[0]);
      if (list.length) lazy(main, kv[1] + " (" + list.length + ")", function (box) {
        list.forEach(function (e) { box.appendChild(exampleRow(e, f)); });
      });
    });
    if (!all.length) main.appendChild(el("p", "muted", "No example contexts were kept."));
  }

  function lazy(parent, title, fill) {  // a <details> filled the first time it opens
    var d = el("details"), done = false;
    d.appendChild(el("summary", null, title));
    var box = el("div");
    d.appendChild(box);
    d.addEventListener("toggle", function () { if (d.open && !done) { done = true; fill(box); } });
    parent.appendChild(d);
  }

  function exampleRow(e, f) {
    var row = el("div", "ex");
    var acts = e.acts || [], toks = e.tokens || [];
    var peak = -1, top = 0;
    acts.forEach(function (a, i) { if (typeof a === "number" && Math.abs(a) > top) { top = Math.abs(a); peak = i; } });
    var scale = typeof f.max_act === "number" && f.max_act > 0 ? f.max_act : top || 1;
    row.appendChild(el("span", "m", fmt(top)));
    row.title = "context " + e.context + ", from position " + e.start;
    toks.forEach(function (t, i) {
      var a = typeof acts[i] === "number" ? acts[i] : 0;
      var s = el("span", i === peak && a > 0 ? "t peak" : "t", showTok(t));
      if (a !== 0) {
        var alpha = Math.min(1, Math.abs(a) / scale) * 0.85 + 0.08;
        s.style.backgroundColor = a > 0 ? "rgba(249,115,22," + alpha.toFixed(3) + ")" : "rgba(59,130,246," + alpha.toFixed(3) + ")";
      }
      s.title = JSON.stringify(String(t)) + "  act " + fmt(a, 4);
      row.appendChild(s);
    });
    return row;
  }

  // ---- the list ----
  var input = document.getElementById("fd-search");
  var sortSel = document.getElementById("fd-sort");
  var cards = document.getElementById("fd-cards");
  var count = document.getElementById("fd-count");
  var pagers = [document.getElementById("fd-pager-top"), document.getElementById("fd-pager-bottom")];
  var state = readState();

  function render() {
    var list = items.filter(function (i) { return matches(i, state.q); }).sort(SORTS[state.sort]);
    var pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages);
    var shown = list.slice((state.page - 1) * PAGE, state.page * PAGE);
    cards.replaceChildren.apply(cards, shown.map(card));
    if (!shown.length) cards.appendChild(el("p", "muted", "No feature matches “" + state.q + "”."));
    count.textContent = list.length.toLocaleString() + " of " + items.length.toLocaleString() + " features";
    pagers.forEach(function (p, k) { pager(p, pages, k === 1); });
  }

  function pager(box, pages, bottom) {
    box.replaceChildren();
    if (pages <= 1) return;
    [["« first", 1], ["‹ prev", state.page - 1], null, ["next ›", state.page + 1], ["last »", pages]].forEach(function (b) {
      if (!b) { box.appendChild(el("span", "muted", "page " + state.page + " of " + pages)); return; }
      var btn = el("button", null, b[0]);
      btn.type = "button";
      btn.disabled = b[1] < 1 || b[1] > pages || b[1] === state.page;
      btn.addEventListener("click", function () {
        state.page = b[1];
        update();
        if (bottom) document.getElementById("dashboards").scrollIntoView();
      });
      box.appendChild(btn);
    });
  }

  function update() { render(); writeState(); }
  function sync() { input.value = state.q; sortSel.value = state.sort; }

  var timer = 0;
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = input.value; state.page = 1; update(); }, 120);
  });
  sortSel.addEventListener("change", function () { state.sort = sortSel.value; state.page = 1; update(); });
  window.addEventListener("hashchange", function () {
    if (location.hash.indexOf("=") === -1) return;  // a plain section link such as #findings
    state = readState();
    sync();
    render();
    document.getElementById("dashboards").scrollIntoView();
  });
  sync();
  render();
  if (location.hash.indexOf("=") !== -1) document.getElementById("dashboards").scrollIntoView();
})();
