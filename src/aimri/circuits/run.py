"""`aimri circuit`: trace one prompt end to end and write its graph.

attribute → validate by intervention → name the kept features → graph JSON on disk, and a
JSON-ready record of it all (what the scan's circuits stage and the report read).
Not here: the steps themselves (the other modules of `aimri.circuits`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aimri._io import write_json_atomic
from aimri.circuits.annotate import FiringIndex, logit_labels, supernodes, word_labels
from aimri.circuits.attribute import AttributionSettings, attribute, logit_vectors
from aimri.circuits.graph import Graph, graph_json, strongest_links
from aimri.circuits.qk import qk_attribution
from aimri.circuits.replacement import build_replacement
from aimri.circuits.validate import Validation, validate
from aimri.config import CircuitConfig
from aimri.dicts.clt import TranscoderStack
from aimri.dicts.dictionary import Transcoder
from aimri.dicts.transcoder_set import as_stack, load_transcoders
from aimri.model.adapter import Model
from aimri.model.load import load_model

MAX_LINKS_EMBEDDED = 5000
"""Links of each graph kept in the record (the scan's JSON and report); the file has all."""


@dataclasses.dataclass(frozen=True)
class TraceResult:
    graph: Graph
    validation: Validation | None
    path: Path
    record: dict[str, Any]
    """The JSON-ready summary (what the scan stores): target, scores, sizes, graph, checks."""


def trace(cfg: CircuitConfig, model: Model | None = None) -> TraceResult:
    model = model or load_model(cfg.model)
    transcoders = load_transcoders(cfg.transcoders, n_layers=model.info.n_layers)
    settings = AttributionSettings(
        max_n_logits=cfg.max_n_logits,
        desired_logit_prob=cfg.desired_logit_prob,
        target=cfg.target,
        batch_size=cfg.batch_size,
        node_threshold=cfg.node_threshold,
        edge_threshold=cfg.edge_threshold,
    )
    slug = cfg.slug or slug_of(cfg.prompt)
    return trace_prompt(
        model, transcoders, cfg.out, slug, "", cfg.prompt, settings, check=cfg.validate
    )


def trace_prompt(
    model: Model,
    transcoders: Sequence[Transcoder] | TranscoderStack,
    out: Path,
    slug: str,
    title: str,
    prompt: str,
    settings: AttributionSettings | None = None,
    *,
    check: bool = True,
    firing: FiringIndex | None = None,
) -> TraceResult:
    settings = settings or AttributionSettings(progress=False)
    transcoders = as_stack(transcoders)
    graph = attribute(model, transcoders, prompt, settings)
    rep = build_replacement(model, transcoders, graph.input_ids, freeze_bos=graph.bos_frozen)
    validation = validate(model, rep, graph) if check else None
    top_logit = graph.n_nodes - len(graph.logit_ids)
    qk = qk_attribution(
        model, rep, graph, logit_vectors(rep, graph.logit_ids[:1]), graph.node_id(top_logit)
    )
    labels = logit_labels(model, transcoders, graph)
    words = word_labels(model, firing, graph, labels) if firing is not None else labels
    data = graph_json(
        graph, slug=slug, scan=model.info.spec, labels=words, supernodes=supernodes(graph, labels)
    )
    path = out / f"{slug}.json"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    record = {
        "slug": slug,
        "title": title,
        "prompt": prompt,
        "target": {
            "token": graph.logit_tokens[0],
            "token_id": int(graph.logit_ids[0]),
            "prob": float(graph.logit_probs[0]),
        },
        "scores": dataclasses.asdict(graph.scores),
        "sizes": {
            "features": graph.n_features,
            "nodes": graph.n_nodes,
            "edges": graph.n_edges_total,
            "pruned_nodes": int(graph.node_mask.sum()),
            "pruned_edges": len(graph.edges),
            "embedded_edges": min(len(graph.edges), MAX_LINKS_EMBEDDED),
        },
        "seconds": round(graph.seconds, 2),
        "graph": strongest_links(data, MAX_LINKS_EMBEDDED),
        "file": path.name,
        "validation": _validation_record(validation),
        "qk": qk.records(),
        "qk_note": qk.note,
    }
    return TraceResult(graph, validation, path, record)


def slug_of(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "graph"


def _validation_record(v: Validation | None) -> dict[str, Any] | None:
    if v is None:
        return None
    summary = {k: val for k, val in dataclasses.asdict(v).items() if k != "items"}
    items = [{**dataclasses.asdict(i), "predicted": i.predicted_total} for i in v.items]
    return {
        **summary,
        "n": v.n,
        "predicted": "total effect along all paths of the graph",
        "items": items,
    }
