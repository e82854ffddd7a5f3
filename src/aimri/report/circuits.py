"""The circuits section, prepared for the template from scan.json's `circuits` part.

Per attribution graph: the scores, the validation (attribution's prediction of an ablation
against the measured effect, as a table and a scatter plot) and the QK attributions, rendered
by the template; and the graph itself, compacted for static/circuits.js into ONE JSON block
(made safe by `json_for_script`) holding every graph. Beside them: the top induction and
previous-token heads, and the logit lens of the circuits' prompts.

The graphs are circuit-tracer / Neuronpedia graph JSON (`metadata`, `qParams`, `nodes`,
`links`). The viewer gets, per graph, columns over the nodes (`row` is the drawing row:
0 embeddings, 1 + layer for features and error nodes, the top row for logits) and the links as
three columns sorted by |weight|, strongest first, so "the N strongest" is a prefix.
Not here: computing anything (the circuits stage did), drawing (templates and JS).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, cast

from markupsafe import Markup, escape

from aimri.report.features import json_for_script
from aimri.report.svg import tick_text, ticks

# Node kinds as the viewer codes them (circuits.js draws 0 circle, 1 square, 2 diamond, 3 pill).
FEATURE, ERROR, EMBEDDING, LOGIT = 0, 1, 2, 3
TOP_HEADS = 10
"""Heads listed per kind (induction, previous token), best score first."""


@dataclass(frozen=True)
class ValidationRow:
    source: str
    target: str
    """Labels of the ablated node and the node whose change was measured."""
    predicted: float | None
    measured: float | None


@dataclass(frozen=True)
class QKRow:
    target: str
    head: str
    """`L{layer}.H{head}`."""
    score: float | None
    query: list[tuple[str, float | None]]
    key: list[tuple[str, float | None]]
    """The strongest contributors on each side: (label, weight)."""


@dataclass(frozen=True)
class GraphPanel:
    """What the template shows beside one graph (everything but the graph)."""

    slug: str
    title: str
    prompt: str
    target: dict[str, Any]
    scores: dict[str, Any]
    sizes: dict[str, Any]
    file: str
    """Where the full graph JSON lies, relative to the run directory."""
    seconds: float | None
    validation: dict[str, Any]
    """The validation's summary numbers (method, n, pearson, …), without its items."""
    validation_rows: list[ValidationRow]
    scatter: Markup | None
    qk: list[QKRow]


@dataclass(frozen=True)
class LensTable:
    prompt: str
    target: str | None
    rows: list[tuple[Any, list[str], float | None]]
    """Per layer: (layer, top tokens through the lens, probability of the target)."""


@dataclass(frozen=True)
class CircuitsView:
    transcoders: dict[str, Any]
    """The transcoders' scalar facts (n_layers, d_sae, k, fvu_mean, …)."""
    graphs: list[GraphPanel]
    heads: list[tuple[str, list[dict[str, Any]]]]
    """(kind, its top heads) for each kind of head in the scan, e.g. "induction"."""
    lens: list[LensTable]
    data_json: Markup
    """`[graph_data(g) for g in graphs]`, for the viewer's `<script type="application/json">`."""
    skipped: str | None


def circuits_view(section: dict[str, Any]) -> CircuitsView:
    tc: dict[str, Any] = section.get("transcoders") or {}
    n_layers: int | None = tc.get("n_layers") if isinstance(tc.get("n_layers"), int) else None
    entries: list[dict[str, Any]] = section.get("graphs") or []
    graphs = [g for g in entries if isinstance(g.get("graph"), dict)]
    heads: dict[str, Any] = section.get("heads") or {}
    facts: dict[str, Any] = {k: v for k, v in tc.items() if isinstance(v, str | int | float | bool)}
    fvu: list[Any] = tc.get("held_out_fvu") or []
    held_out: list[float] = [x for x in fvu if isinstance(x, int | float)]
    if held_out:
        facts["held_out_fvu_mean"] = sum(held_out) / len(held_out)
        facts["held_out_fvu_min"], facts["held_out_fvu_max"] = min(held_out), max(held_out)
    return CircuitsView(
        transcoders=facts,
        graphs=[graph_panel(g) for g in graphs],
        heads=[
            (kind, top_heads(cast(list[dict[str, Any]], rows)))
            for kind, rows in heads.items()
            if isinstance(rows, list) and rows
        ],
        lens=[lens_table(t) for t in cast(list[dict[str, Any]], section.get("lens") or [])],
        data_json=json_for_script([graph_data(g, n_layers) for g in graphs]),
        skipped=section.get("skipped"),
    )


def circuits_scripts(view: CircuitsView) -> tuple[str, ...]:
    """The graph viewer (and the helpers it uses), where there are graphs."""
    return ("common.js", "circuits.js") if view.graphs else ()


# ---- the graph, for circuits.js ----


def node_kind(node: dict[str, Any]) -> int:
    t = str(node.get("feature_type", "")).lower()
    if "error" in t:
        return ERROR
    if "embed" in t or node.get("layer") == "E":
        return EMBEDDING
    if "logit" in t:
        return LOGIT
    return FEATURE


def graph_data(entry: dict[str, Any], n_layers: int | None = None) -> dict[str, Any]:
    """One graph as circuits.js reads it: node columns, links strongest first, supernodes.

    `n_layers` (the transcoders') fixes the rows; without it, the deepest feature's layer does.
    Links to a node the graph does not list are dropped and counted in `dropped_links`; a
    node_id listed twice names its last node.
    """
    graph: dict[str, Any] = entry["graph"]
    meta: dict[str, Any] = graph.get("metadata") or {}
    q: dict[str, Any] = graph.get("qParams") or {}
    nodes: list[dict[str, Any]] = graph.get("nodes") or []
    kinds = [node_kind(n) for n in nodes]
    layers = [_int(n.get("layer")) for n in nodes]
    deepest = max(
        (la for la, k in zip(layers, kinds, strict=True) if k != LOGIT and la is not None),
        default=-1,
    )
    top = 1 + max(n_layers or 0, deepest + 1)  # the logits' row
    tokens = [str(t) for t in cast(list[Any], meta.get("prompt_tokens") or [])]
    index = {str(n["node_id"]): i for i, n in enumerate(nodes)}
    rows = [
        0 if k == EMBEDDING else top if k == LOGIT else 1 + max(0, la or 0)
        for k, la in zip(kinds, layers, strict=True)
    ]
    src: list[int] = []
    dst: list[int] = []
    w: list[float | None] = []
    dropped = 0
    links: list[dict[str, Any]] = graph.get("links") or []
    for link in sorted(links, key=lambda e: -abs(_num(e.get("weight")))):
        s, t = index.get(str(link.get("source"))), index.get(str(link.get("target")))
        if s is None or t is None:
            dropped += 1
            continue
        src.append(s)
        dst.append(t)
        w.append(_round(link.get("weight")))
    supernodes: list[dict[str, Any]] = []
    for sn in cast(list[list[Any]], q.get("supernodes") or []):
        members = sorted({index[str(m)] for m in sn[1:] if str(m) in index})
        if sn and members:
            supernodes.append({"name": str(sn[0]), "members": members})
    return {
        "slug": str(entry.get("slug", "")),
        "title": str(entry.get("title") or entry.get("slug") or ""),
        "prompt": str(entry.get("prompt") or meta.get("prompt") or ""),
        "tokens": tokens,
        "n_rows": top + 1,
        "nodes": {
            "id": [str(n["node_id"]) for n in nodes],
            "kind": kinds,
            "row": rows,
            "ctx": [max(0, _int(n.get("ctx_idx")) or 0) for n in nodes],
            "layer": [str(n.get("layer", "")) for n in nodes],
            "feature": [n.get("feature") for n in nodes],
            "label": [node_label(n, k, tokens) for n, k in zip(nodes, kinds, strict=True)],
            "act": [_round(n.get("activation")) for n in nodes],
            "influence": [_round(n.get("influence")) for n in nodes],
            "prob": [_round(n.get("token_prob")) for n in nodes],
            "target": [bool(n.get("is_target_logit")) for n in nodes],
        },
        "links": {"src": src, "dst": dst, "w": w},
        "dropped_links": dropped,
        "supernodes": supernodes,
        "pinned": [
            index[str(p)] for p in cast(list[Any], q.get("pinnedIds") or []) if str(p) in index
        ],
        "clicked": index.get(str(q.get("clickedId") or ""), -1),
    }


def node_label(node: dict[str, Any], kind: int, tokens: list[str]) -> str:
    """The node's clerp, or a name made from what it is where it has none."""
    if node.get("clerp"):
        return str(node["clerp"])
    ctx = _int(node.get("ctx_idx"))
    tok = _quote(tokens[ctx]) if ctx is not None and 0 <= ctx < len(tokens) else f"@{ctx}"
    if kind == EMBEDDING:
        return f"embedding of {tok}"
    if kind == LOGIT:
        return f"logit {_quote(node['token']) if 'token' in node else tok}"
    if kind == ERROR:
        return f"error, layer {node.get('layer')}, at {tok}"
    return f"feature {node.get('feature')} (layer {node.get('layer')})"


def _quote(token: Any) -> str:
    """A token as the viewer writes it: a JSON string, so spaces and newlines show."""
    return json.dumps(str(token), ensure_ascii=False)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0


def _round(v: Any) -> float | None:
    """Four significant digits (the viewer shows three): a third of the JSON of full floats."""
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(f"{v:.4g}")


# ---- beside the graph ----


def graph_panel(entry: dict[str, Any]) -> GraphPanel:
    graph: dict[str, Any] = entry["graph"]
    meta: dict[str, Any] = graph.get("metadata") or {}
    tokens = [str(t) for t in cast(list[Any], meta.get("prompt_tokens") or [])]
    nodes: list[dict[str, Any]] = graph.get("nodes") or []
    labels = {str(n["node_id"]): node_label(n, node_kind(n), tokens) for n in nodes}
    val: dict[str, Any] = entry.get("validation") or {}
    items: list[dict[str, Any]] = val.get("items") or []
    return GraphPanel(
        slug=str(entry.get("slug", "")),
        title=str(entry.get("title") or entry.get("slug") or ""),
        prompt=str(entry.get("prompt") or meta.get("prompt") or ""),
        target=entry.get("target") or {},
        scores=entry.get("scores") or {},
        sizes=entry.get("sizes") or {},
        file=str(entry.get("file") or ""),
        seconds=entry.get("seconds"),
        validation={k: v for k, v in val.items() if k != "items"},
        validation_rows=[
            ValidationRow(
                labels.get(str(it.get("source")), str(it.get("source"))),
                labels.get(str(it.get("target")), str(it.get("target"))),
                it.get("predicted"),
                it.get("measured"),
            )
            for it in items
        ],
        scatter=validation_scatter(items) if items else None,
        qk=[qk_row(r, labels) for r in cast(list[dict[str, Any]], entry.get("qk") or [])],
    )


def qk_row(r: dict[str, Any], labels: dict[str, str], n: int = 5) -> QKRow:
    def side(parts: list[dict[str, Any]]) -> list[tuple[str, float | None]]:
        ranked = sorted(parts, key=lambda p: -abs(_num(p.get("weight"))))[:n]
        return [
            (
                labels.get(str(p.get("node_id")), str(p.get("label") or p.get("node_id"))),
                p.get("weight"),
            )
            for p in ranked
        ]

    target = str(r.get("target"))
    return QKRow(
        target=labels.get(target, target),
        head=f"L{r.get('layer')}.H{r.get('head')}",
        score=r.get("score"),
        query=side(r.get("query") or []),
        key=side(r.get("key") or []),
    )


def validation_scatter(items: list[dict[str, Any]], size: int = 300) -> Markup:
    """Predicted (x) against measured (y) effect of each ablation, with the line y = x."""
    pts = [
        (float(it["predicted"]), float(it["measured"]))
        for it in items
        if _finite(it.get("predicted")) and _finite(it.get("measured"))
    ]
    if not pts:
        return Markup("<p class='muted'>(no finite validation points)</p>")
    left, right, top, bottom = 52, 12, 26, 40
    lo = min(min(p) for p in pts)
    hi = max(max(p) for p in pts)
    pad = (hi - lo) * 0.06 or 1.0
    lo, hi = lo - pad, hi + pad  # one range for both axes, so y = x is the diagonal

    def px(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (size - left - right)

    def py(v: float) -> float:
        return size - bottom - (v - lo) / (hi - lo) * (size - top - bottom)

    parts = [
        f'<svg class="chart cg-scatter" viewBox="0 0 {size} {size}" width="{size}" height="{size}" '
        'role="img" aria-label="predicted against measured effect">',
        f'<text x="{size / 2}" y="16" text-anchor="middle" class="ct">Ablation: predicted vs measured</text>',
        f'<text x="{(left + size - right) / 2}" y="{size - 6}" text-anchor="middle" class="ax">predicted by the graph</text>',
        f'<text x="12" y="{(top + size - bottom) / 2}" text-anchor="middle" class="ax" '
        f'transform="rotate(-90 12 {(top + size - bottom) / 2})">measured</text>',
    ]
    for t in ticks(lo, hi, 4):
        parts.append(
            f'<line x1="{left}" x2="{size - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
            f'<text x="{left - 5}" y="{py(t) + 3:.1f}" text-anchor="end" class="tk">{tick_text(t)}</text>'
            f'<text x="{px(t):.1f}" y="{size - bottom + 14}" text-anchor="middle" class="tk">{tick_text(t)}</text>'
        )
    parts.append(
        f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" '
        'stroke="#9ca3af" stroke-dasharray="4 3"/>'
    )
    if lo < 0 < hi:
        parts.append(
            f'<line x1="{px(0):.1f}" x2="{px(0):.1f}" y1="{top}" y2="{size - bottom}" stroke="#e5e7eb"/>'
        )
    for x, y in pts:
        tip = escape(f"predicted {tick_text(x)}, measured {tick_text(y)}")
        parts.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="#2563eb" fill-opacity=".7">'
            f"<title>{tip}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def top_heads(rows: list[dict[str, Any]], n: int = TOP_HEADS) -> list[dict[str, Any]]:
    """The n best-scoring heads, best first (missing scores last)."""
    return sorted(rows, key=lambda r: -r["score"] if _finite(r.get("score")) else math.inf)[:n]


def lens_table(t: dict[str, Any]) -> LensTable:
    layers: list[Any] = t.get("layers") or []
    tops: list[Any] = t.get("top_tokens") or []
    probs: list[Any] = t.get("target_prob") or []
    rows: list[tuple[Any, list[str], Any]] = []
    for i, layer in enumerate(layers):
        top: Any = tops[i] if i < len(tops) else []
        toks = [str(x) for x in cast(list[Any], top)] if isinstance(top, list) else [str(top)]
        rows.append((layer, toks, probs[i] if i < len(probs) else None))
    target = t.get("target")
    return LensTable(str(t.get("prompt", "")), None if target is None else str(target), rows)
