"""The circuits section: attribution graphs compacted for the viewer keep every node and link
(rows by layer, links strongest first), labels cannot become markup, validation points with
predicted = measured lie on the scatter's diagonal; and in headless chromium the viewer draws
a hand-made graph and a 3,000-node / 30,000-link one offline, selects, merges and filters.
The helpers build `scan["stages"]["circuits"]` documents in the shape the circuits stage writes."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from aimri.report.circuits import (
    EMBEDDING,
    ERROR,
    FEATURE,
    LOGIT,
    circuits_view,
    graph_data,
    lens_table,
    top_heads,
    validation_scatter,
)
from aimri.report.render import render_report
from aimri.scanner.stages import SECTIONS
from tests.test_report import HOSTILE, base_scan

N_LAYERS = 30
TOKENS = ["<bos>", "The", " capital", " of", " France", " is"]
DATA = re.compile(r'<script type="application/json" id="circuits-data">(.*?)</script>', re.DOTALL)
TITLE = "<title>aimri scan · tiny · test-run</title>"


def node(
    layer: str, feature: int, ctx: int, kind: str, clerp: str = "", **extra: Any
) -> dict[str, Any]:
    node_id = (
        f"{layer}_{feature}_{ctx}" if kind != "mlp reconstruction error" else f"0_{layer}_{ctx}"
    )
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": ctx,
        "feature_type": kind,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": node_id,
        "clerp": clerp,
        "influence": 0.1,
        "activation": 1.0,
        **extra,
    }


def capital_graph() -> dict[str, Any]:
    """A hand-made graph of "The capital of France is" → " Paris", one label hostile."""
    clt, err, emb, logit = (
        "cross layer transcoder",
        "mlp reconstruction error",
        "embedding",
        "logit",
    )
    nodes = [node("E", 100 + c, c, emb) for c in range(len(TOKENS))]
    nodes += [
        node("2", 11, 2, clt, "capital (the word)", influence=0.4, activation=3.0),
        node("3", 12, 4, clt, "France", influence=0.5, activation=5.0),
        node("5", 13, 4, clt, "French things", influence=0.3),
        node("14", 14, 5, clt, "say a capital city", influence=0.6, activation=2.5),
        node("20", 15, 5, clt, HOSTILE[1], influence=0.45),
        node("25", 16, 5, clt, "say Paris", influence=0.7, activation=6.2),
        node("25", 17, 5, clt, "say a city", influence=0.2),
        node("12", 0, 5, err, "", influence=0.05),
        node(str(N_LAYERS + 1), 3681, 5, logit, 'Output " Paris" (p=0.530)', token_prob=0.53, is_target_logit=True),
        node(str(N_LAYERS + 1), 278, 5, logit, 'Output " the" (p=0.100)', token_prob=0.1),
    ]  # fmt: skip
    ids = [n["node_id"] for n in nodes]
    by = {n["clerp"] or n["node_id"]: n["node_id"] for n in nodes}
    links = [
        (ids[2], by["capital (the word)"], 0.8),
        (ids[4], by["France"], 1.2),
        (by["France"], by["French things"], 0.6),
        (by["capital (the word)"], by["say a capital city"], 0.9),
        (by["France"], by["say Paris"], 1.5),
        (by["French things"], by["say Paris"], 0.4),
        (by["say a capital city"], by["say Paris"], 1.1),
        (by["say a capital city"], by[HOSTILE[1]], 0.3),
        (by[HOSTILE[1]], by["say a city"], -0.5),
        (by["say Paris"], ids[-2], 2.0),
        (by["say a city"], ids[-1], 0.7),
        (by["say Paris"], ids[-1], -0.9),
        (by["0_12_5"], ids[-2], 0.2),
        (ids[5], by["say a capital city"], -0.25),
        ("missing_node", ids[-2], 9.0),  # a node the graph does not list: dropped
    ]
    return {
        "metadata": {
            "slug": "capital-france",
            "scan": "tiny",
            "transcoder_list": [],
            "prompt_tokens": TOKENS,
            "prompt": "".join(TOKENS[1:]),
            "node_threshold": 0.8,
            "schema_version": 1,
        },
        "qParams": {
            "pinnedIds": [by["France"], by["say Paris"], "not_a_node"],
            "supernodes": [
                ["France", by["France"], by["French things"]],
                [HOSTILE[0], by["say Paris"], by["say a city"]],
            ],
            "linkType": "both",
            "clickedId": by[HOSTILE[1]],
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for s, t, w in links],
    }


def synthetic_graph(n_nodes: int, n_links: int, seed: int = 0) -> dict[str, Any]:
    """A random graph of the circuit-tracer shape: embeddings, logits, error nodes, features,
    links only upwards (to a later layer), heavy-tailed weights of both signs."""
    rng = random.Random(seed)
    last = len(TOKENS) - 1
    nodes = [node("E", 1000 + c, c, "embedding") for c in range(len(TOKENS))]
    nodes += [
        node(str(N_LAYERS + 1), 50 + k, last, "logit", f"Output {k}", is_target_logit=k == 0)
        for k in range(5)
    ]
    nodes += [
        node(str(la), 0, c, "mlp reconstruction error")
        for la in range(N_LAYERS)
        for c in range(len(TOKENS))
    ]
    while len(nodes) < n_nodes:
        la, c = rng.randrange(N_LAYERS), rng.randrange(len(TOKENS))
        f = len(nodes)
        nodes.append(
            node(
                str(la), f, c, "cross layer transcoder", f"feature {f} <b>",
                influence=rng.random(), activation=rng.expovariate(0.5),
            )
        )  # fmt: skip
    depth = [-1 if n["layer"] == "E" else N_LAYERS if n["feature_type"] == "logit" else int(n["layer"]) for n in nodes]  # fmt: skip
    links = []
    while len(links) < n_links:
        a, b = rng.randrange(n_nodes), rng.randrange(n_nodes)
        if depth[a] < depth[b]:
            w = rng.choice((1, -1)) * rng.paretovariate(1.5) * 0.01
            links.append(
                {"source": nodes[a]["node_id"], "target": nodes[b]["node_id"], "weight": w}
            )
    features = [n["node_id"] for n in nodes if n["feature_type"] == "cross layer transcoder"]
    return {
        "metadata": {"slug": "synthetic", "prompt_tokens": TOKENS, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [["group", *features[:5]]], "clickedId": ""},
        "nodes": nodes,
        "links": links,
    }


def graph_entry(graph: dict[str, Any], slug: str, title: str) -> dict[str, Any]:
    ids = [n["node_id"] for n in graph["nodes"]]
    items = [
        {"source": ids[8 + i], "target": ids[-2], "predicted": 0.1 * i, "measured": 0.1 * i + 0.02}
        for i in range(4)
    ]
    items.append({"source": ids[10], "target": ids[-1], "predicted": -0.3, "measured": None})
    return {
        "slug": slug,
        "title": title,
        "prompt": graph["metadata"].get("prompt", "The capital of France is"),
        "target": {"token": " Paris", "prob": 0.53},
        "scores": {"replacement": 0.71, "completeness": 0.88},
        "sizes": {"nodes": 5000, "edges": 900000, "pruned_nodes": len(ids), "pruned_edges": len(graph["links"])},
        "seconds": 3.2,
        "graph": graph,
        "validation": {
            "method": "ablate source, measure target",
            "n": len(items),
            "pearson": 0.93,
            "sign_agreement": 0.95,
            "median_relative_error": 0.1,
            "items": items,
        },
        "qk": [
            {
                "target": ids[-2], "layer": 12, "head": 3, "score": 0.5,
                "query": [{"node_id": ids[9], "weight": 0.4}, {"label": HOSTILE[2], "weight": -0.2}],
                "key": [{"node_id": ids[4], "weight": 0.6}],
            }
        ],
    }  # fmt: skip


def circuits_section(*graphs: dict[str, Any]) -> dict[str, Any]:
    return {
        "transcoders": {"n_layers": N_LAYERS, "d_sae": 4096, "k": 16, "fvu_mean": 0.3, "site": "mlp"},
        "graphs": list(graphs),
        "heads": {
            "induction": [{"layer": la, "head": h, "score": (la * 7 + h) % 10 / 10} for la in range(4) for h in range(4)],
            "previous_token": [{"layer": 1, "head": 0, "score": 0.9}, {"layer": 0, "head": 2, "score": None}],
        },
        "lens": [
            {
                "prompt": "The capital of France is",
                "layers": list(range(N_LAYERS)),
                "top_tokens": [[" the", HOSTILE[0]] if la < 20 else [" Paris", " France"] for la in range(N_LAYERS)],
                "target_prob": [min(1.0, (la / N_LAYERS) ** 3) for la in range(N_LAYERS)],
            }
        ],
    }  # fmt: skip


def scan_with(*graphs: dict[str, Any]) -> dict[str, Any]:
    doc = base_scan()
    doc["stages"]["circuits"] = circuits_section(*graphs)
    return doc


# ---- the data the viewer gets ----


def test_graph_data_keeps_nodes_rows_and_strongest_links_first():
    g = capital_graph()
    data = graph_data({"slug": "s", "graph": g}, N_LAYERS)
    nodes = data["nodes"]
    assert nodes["id"] == [n["node_id"] for n in g["nodes"]]
    assert data["n_rows"] == N_LAYERS + 2
    for n, kind, row in zip(g["nodes"], nodes["kind"], nodes["row"], strict=True):
        if n["layer"] == "E":
            assert (kind, row) == (EMBEDDING, 0)
        elif n["feature_type"] == "logit":
            assert (kind, row) == (LOGIT, N_LAYERS + 1), "logits on the top row"
        else:
            assert kind in (FEATURE, ERROR) and row == int(n["layer"]) + 1
    links = data["links"]
    weights = [abs(w) for w in links["w"]]
    assert weights == sorted(weights, reverse=True), "strongest first: top N is a prefix"
    assert data["dropped_links"] == 1 and len(weights) == len(g["links"]) - 1
    back = {
        (nodes["id"][s], nodes["id"][t], w)
        for s, t, w in zip(links["src"], links["dst"], links["w"], strict=True)
    }
    assert back == {(e["source"], e["target"], e["weight"]) for e in g["links"][:-1]}
    names = [s["name"] for s in data["supernodes"]]
    assert names == ["France", HOSTILE[0]] and all(
        len(s["members"]) == 2 for s in data["supernodes"]
    )
    assert [nodes["id"][i] for i in data["pinned"]] == g["qParams"]["pinnedIds"][:2]
    assert nodes["label"][data["clicked"]] == HOSTILE[1]
    assert nodes["label"][0] == 'embedding of "<bos>"', "a node without a clerp gets a name"


def test_rows_without_n_layers_follow_the_deepest_feature():
    data = graph_data({"graph": capital_graph()})
    assert data["n_rows"] == 25 + 1 + 2, "deepest feature layer 25: rows emb, 0..25, logit"
    assert max(data["nodes"]["row"]) == data["n_rows"] - 1


def test_hostile_labels_stay_text_and_the_block_round_trips(tmp_path: Path):
    doc = scan_with(graph_entry(capital_graph(), "capital-france", HOSTILE[3]))
    html = render_report(doc, tmp_path / "r.html", SECTIONS).read_text()
    blocks = DATA.findall(html)
    assert len(blocks) == 1, "every graph in ONE data block"
    assert "<" not in blocks[0] and ">" not in blocks[0]
    data = json.loads(blocks[0])
    assert HOSTILE[1] in data[0]["nodes"]["label"]
    assert data[0]["supernodes"][1]["name"] == HOSTILE[0]
    outside = DATA.sub("", html)
    for bad in HOSTILE:
        assert bad not in outside, bad
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in outside, (
        "validation table, as text"
    )
    for part in (
        'id="circuits"',
        'href="#circuits"',
        "cg-scatter",
        'id="heads"',
        'id="circuit-lens"',
    ):
        assert part in html, part
    assert "71.0%" in html and "88.0%" in html, "replacement and completeness"


def test_no_circuits_no_section_and_skipped_says_why(tmp_path: Path):
    html = render_report(base_scan(), tmp_path / "a.html", SECTIONS).read_text()
    assert 'id="circuits"' not in html and "circuits-data" not in html and "cg-graph" not in html
    doc = base_scan()
    doc["stages"]["circuits"] = {"skipped": "no transcoders for <this> model"}
    html = render_report(doc, tmp_path / "b.html", SECTIONS).read_text()
    assert "circuits stage was skipped: no transcoders for &lt;this&gt; model" in html
    assert "circuits-data" not in html and "circuits.js" not in html


def test_an_empty_graph_and_a_section_without_graphs_render(tmp_path: Path):
    doc = scan_with({"slug": "empty", "graph": {"nodes": [], "links": []}})
    html = render_report(doc, tmp_path / "a.html", SECTIONS).read_text()
    data = json.loads(DATA.findall(html)[0])
    assert data[0]["nodes"]["id"] == [] and data[0]["n_rows"] == N_LAYERS + 2
    doc = scan_with()
    doc["stages"]["circuits"]["transcoders"] = {}
    html = render_report(doc, tmp_path / "b.html", SECTIONS).read_text()
    assert "No attribution graph was recorded" in html and 'id="heads"' in html
    assert "circuits-data" not in html


def test_validation_points_with_equal_values_lie_on_the_diagonal():
    items = [{"predicted": v, "measured": v} for v in (-0.4, 0.0, 0.25, 1.3)]
    items.append({"predicted": 0.5, "measured": float("nan")})
    svg = str(validation_scatter(items))
    diag = re.search(
        r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)" stroke="#9ca3af"', svg
    )
    assert diag
    x1, y1, x2, y2 = map(float, diag.groups())
    points = [
        (float(a), float(b)) for a, b in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)
    ]
    assert len(points) == 4, "the nan point is left out"
    for x, y in points:  # on the line through (x1, y1) and (x2, y2), to rounding
        assert abs((x - x1) * (y2 - y1) - (y - y1) * (x2 - x1)) / abs(x2 - x1) < 0.2


def test_heads_best_first_and_lens_rows_per_layer():
    view = circuits_view(circuits_section())
    kinds = dict(view.heads)
    scores = [h["score"] for h in kinds["induction"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert kinds["previous_token"][-1]["score"] is None, "a missing score goes last"
    assert top_heads([{"score": float("nan")}, {"score": 0.1}])[0]["score"] == 0.1
    t = lens_table(circuits_section()["lens"][0])
    assert len(t.rows) == N_LAYERS and t.rows[-1][1] == [" Paris", " France"]
    assert lens_table({"prompt": "p", "layers": [0], "top_tokens": ["x"]}).rows == [
        (0, ["x"], None)
    ]


# ---- in a real browser ----

chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian chromium not installed (apt-get install chromium): browser checks skipped",
)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000", "--enable-logging=stderr", "--v=0",
)  # fmt: skip
# Appended to a copy of the report: clicks, merges and filters as a user would, then writes
# what the page shows into #test-out (so --dump-dom carries it back).
DRIVER = """<script>
(function () {
  var out = {}, host = document.getElementById("cg-graph");
  function fire(e, type, opts) { e.dispatchEvent(new MouseEvent(type, Object.assign({bubbles: true, clientX: 300, clientY: 300}, opts || {}))); }
  out.initial = {nodes: host.dataset.nodes, edges: host.dataset.edges, ms: host.dataset.ms, ready: host.dataset.readyMs,
    panel: document.getElementById("cg-panel").textContent, shapes: host.querySelectorAll(".cg-node").length,
    boxes: host.querySelectorAll(".cg-box").length};
  var shape = host.querySelector('.cg-node[data-i="' + %(click)d + '"]');
  fire(shape, "mousemove");
  out.tip = document.querySelector(".cg-tip").hidden ? null : document.querySelector(".cg-tip").textContent;
  var t0 = performance.now();
  fire(shape, "click");
  out.clicked = {ms: Math.round(performance.now() - t0), panel: document.getElementById("cg-panel").textContent, focus: host.querySelectorAll(".cg-focus path").length,
    focused: host.querySelector("svg").classList.contains("focused")};
  fire(host.querySelector("svg"), "click");
  out.cleared = !host.querySelector("svg").classList.contains("focused");
  var merge = document.getElementById("cg-sn-merge");
  merge.checked = true; merge.dispatchEvent(new Event("change"));
  out.merged = {supers: host.querySelectorAll(".cg-super").length, hidden: host.querySelectorAll('.cg-node[style*="none"]').length, edges: host.dataset.edges};
  merge.checked = false; merge.dispatchEvent(new Event("change"));
  var slider = document.getElementById("cg-edges");
  slider.value = slider.max; slider.dispatchEvent(new Event("input"));
  // Wait (in timer steps: headless chromium's virtual time does not always run animation
  // frames) until the viewer has redrawn for the slider, then read what it shows.
  var tries = 0;
  (function wait() {
    if (host.dataset.edges !== slider.max && tries++ < 40) { setTimeout(wait, 25); return; }
    out.all = {edges: host.dataset.edges, ms: host.dataset.edgesMs, max: slider.max, count: document.getElementById("cg-edge-count").textContent};
    var pick = document.getElementById("cg-pick");
    if (pick) { pick.value = "1"; pick.dispatchEvent(new Event("change")); out.picked = {nodes: host.dataset.nodes,
      shown: Array.prototype.filter.call(document.querySelectorAll(".cg-meta"), function (m) { return !m.hidden; }).map(function (m) { return m.dataset.graph; })}; }
    var pre = document.createElement("pre"); pre.id = "test-out"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  })();
})();
</script>"""


def run_page(html_path: Path, profile: Path, click: int) -> tuple[str, dict[str, Any], float]:
    """The page's DOM after its scripts and DRIVER ran, what DRIVER saw, and seconds taken."""
    page = html_path.with_name("driven.html")
    page.write_text(html_path.read_text().replace("</body>", DRIVER % {"click": click} + "</body>"))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [shutil.which("chromium") or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish: a dialog opened by injected markup blocks it")
    seconds = time.perf_counter() - t0
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    assert "Uncaught" not in r.stderr, [x for x in r.stderr.splitlines() if "CONSOLE" in x]
    m = re.search(r'<pre id="test-out">(.*?)</pre>', r.stdout, re.DOTALL)
    assert m, "the driver finished"
    out = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    return r.stdout, out, seconds


@chromium
def test_viewer_draws_selects_merges_and_switches_graphs(tmp_path: Path):
    small = capital_graph()
    big = synthetic_graph(300, 2000, seed=1)
    doc = scan_with(
        graph_entry(small, "capital-france", "Factual recall"), graph_entry(big, "syn", "Synthetic")
    )
    html = render_report(doc, tmp_path / "report.html", SECTIONS)
    text = html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), (
        "nothing from the web"
    )
    assert "fetch(" not in text and "@import" not in text
    assert not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write", text)
    data = graph_data(doc["stages"]["circuits"]["graphs"][0], N_LAYERS)
    hostile = data["clicked"]
    dom, out, _ = run_page(
        html, tmp_path / "profile", click=data["nodes"]["label"].index("say Paris")
    )
    n, n_links = len(small["nodes"]), len(small["links"]) - 1
    assert out["initial"]["shapes"] == n and out["initial"]["nodes"] == str(n)
    assert out["initial"]["edges"] == str(n_links), "a small graph shows every edge"
    assert out["initial"]["boxes"] == 2, "supernodes drawn as boxes"
    assert HOSTILE[1] in out["initial"]["panel"], "clickedId selects the node: its label, as text"
    assert hostile >= 0
    assert out["tip"] and "say Paris" in out["tip"] and "activation 6.2" in out["tip"]
    clicked = out["clicked"]
    assert clicked["focused"] and clicked["focus"] == 5, "say Paris: 3 inputs and 2 outputs"
    assert (
        "strongest inputs (3)" in clicked["panel"] and "strongest outputs (2)" in clicked["panel"]
    )
    assert clicked["panel"].index("France") < clicked["panel"].index("say a capital city"), (
        "by |weight|"
    )
    assert out["cleared"]
    merged = out["merged"]
    assert merged["supers"] == 2 and merged["hidden"] == 4
    assert int(merged["edges"]) < n_links, "links inside a supernode vanish, parallel ones add"
    assert out["all"]["edges"] == str(n_links) and out["all"]["max"] == str(n_links)
    assert out["picked"] == {"nodes": "300", "shown": ["1", "1"]}, (
        "the picker switches graph and tables"
    )
    assert TITLE in dom and "<img" not in dom.lower(), "no label became markup"
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in dom


@chromium
def test_a_large_graph_renders_with_the_strongest_edges(tmp_path: Path):
    graph = synthetic_graph(3000, 30000, seed=2)
    doc = scan_with(graph_entry(graph, "big", "3,000 nodes, 30,000 links"))
    html = render_report(doc, tmp_path / "report.html", SECTIONS)
    _, out, seconds = run_page(html, tmp_path / "profile", click=40)
    size_mb = html.stat().st_size / 1e6
    print(
        f"\n3,000 nodes / 30,000 links: report {size_mb:.1f} MB; first graph drawn "
        f"{out['initial']['ready']} ms after the page opened (building it {out['initial']['ms']} "
        f"ms); all 30,000 edges drawn in {out['all']['ms']} ms; a click in "
        f"{out['clicked']['ms']} ms; chromium run (start, load, driver) {seconds:.1f} s"
    )
    assert out["initial"]["shapes"] == 3000
    assert out["initial"]["edges"] == "1000", "the 1,000 strongest edges by default"
    assert out["all"]["edges"] == "30000" and "30,000 strongest of 30,000" in out["all"]["count"]
    assert out["clicked"]["focused"] and out["clicked"]["focus"] > 0
