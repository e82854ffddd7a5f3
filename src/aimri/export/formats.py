"""Neuronpedia's and circuit-tracer's formats, as pure functions from aimri's records to JSON.

- A graph: the JSON that circuit-tracer's frontend and Neuronpedia read (`metadata`, `qParams`,
  `nodes`, `links`; `node_threshold` a number, as Neuronpedia's graph schema wants, set so that
  the viewers' pruning slider starts by showing every node), every node with circuit-tracer's
  fields in its order and its node ids
  (`{layer}_{latent}_{pos}` features, `0_{layer}_{pos}` errors, `E_{token}_{pos}` tokens,
  `{n_layers+1}_{token}_{pos}` logits), so that its pydantic models read it back unchanged.
  aimri's own graphs name errors `{layer}_-1_{pos}`, which can never equal a feature's id;
  circuit-tracer's error id can (layer 0, latent L, pos P is `0_L_P` too), so where it would,
  that error keeps aimri's id and the export says so.
- A feature: circuit-tracer's feature file (`index`, `examples_quantiles`, top/bottom logits,
  `quantile_values`, `histogram`, `activation_frequency`).
- A source: the records of Neuronpedia's bulk export (model, source set, source, and per feature
  one feature row, its activation texts and its explanations), with the columns of Neuronpedia's
  tables and the layout its importer reads (`<model>/<source>/{model,sourceset,source}.jsonl`,
  `features|activations|explanations/batch-<n>.jsonl.gz`).
Not here: reading a run or writing files (`neuronpedia.py`), uploading (`upload.py`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aimri.features.records import Example, FeatureStats, Label

CT_NODE_FIELDS = (
    "node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
    "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation",
)  # fmt: skip
"""circuit-tracer's `Node` fields, in its order (`circuit_tracer/frontend/graph_models.py`)."""
CT_METADATA_FIELDS = (
    "slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
    "schema_version",
)  # fmt: skip
HOOK_NAMES = {
    "hook_resid_pre": "res-pre",
    "hook_resid_mid": "res-mid",
    "hook_resid_post": "res",
    "hook_attn_out": "att",
    "hook_mlp_out": "mlp",
    "ln2.hook_normalized": "mlp-in",
}
"""Site kind → the short hook name in a Neuronpedia source-set name (`gemmascope-res-16k`)."""
# Neuronpedia's export records name each example set by its quantile; aimri's "top" examples
# are the highest activations, its buckets 1…n equal-count slices of firing contexts.
TOP = "Top activations"


@dataclass(frozen=True)
class NeuronpediaGraph:
    data: dict[str, Any]
    renamed_errors: list[str]
    """Error nodes that keep aimri's id because circuit-tracer's would equal a feature's."""


def neuronpedia_graph(graph: dict[str, Any], *, model_id: str) -> NeuronpediaGraph:
    """aimri's graph JSON (`aimri.circuits.graph.graph_json`) in circuit-tracer's exact form,
    for the model `model_id` on Neuronpedia (the graph's `scan`)."""
    taken = {
        n["node_id"] for n in graph["nodes"] if n["feature_type"] != "mlp reconstruction error"
    }
    ids: dict[str, str] = {}
    nodes, kept = [], []
    for node in graph["nodes"]:
        new = _ct_node(node)
        if node["feature_type"] == "mlp reconstruction error":
            if new["node_id"] in taken:  # keep aimri's id: it cannot collide
                new["node_id"] = node["node_id"]
                kept.append(node["node_id"])
            taken.add(new["node_id"])
        ids[node["node_id"]] = new["node_id"]
        nodes.append(new)
    links = [
        {"source": ids[e["source"]], "target": ids[e["target"]], "weight": float(e["weight"])}
        for e in graph["links"]
    ]
    q = graph.get("qParams", {})
    qparams = {
        "pinnedIds": [ids.get(i, i) for i in q.get("pinnedIds", [])],
        "supernodes": [[s[0], *(ids.get(i, i) for i in s[1:])] for s in q.get("supernodes", [])],
        "linkType": q.get("linkType", "both"),
        "clickedId": ids.get(q.get("clickedId", ""), q.get("clickedId", "")),
        "sg_pos": q.get("sg_pos", ""),
    }
    meta = graph["metadata"]
    metadata = {
        "slug": meta["slug"],
        "scan": model_id,
        "transcoder_list": list(meta.get("transcoder_list", [])),
        "prompt_tokens": list(meta["prompt_tokens"]),
        "prompt": meta["prompt"],
        "node_threshold": meta.get("node_threshold") or _threshold(nodes),
        "schema_version": meta.get("schema_version", 1),
    }
    data = {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}
    return NeuronpediaGraph(data, kept)


def _threshold(nodes: list[dict[str, Any]]) -> float:
    """The pruning threshold that shows every exported node: the viewers hide feature and error
    nodes whose cumulative influence is above it, and Neuronpedia wants a number here."""
    pruned = [n["influence"] for n in nodes if n["feature_type"] not in ("embedding", "logit")]
    top = max((x for x in pruned if x is not None), default=0.8)
    return math.ceil(top * 1000) / 1000


def _ct_node(node: dict[str, Any]) -> dict[str, Any]:
    """One node with circuit-tracer's fields and ids (see the module docstring)."""
    out = {
        "node_id": node["node_id"],
        "feature": int(node["feature"]),
        "layer": str(node["layer"]),
        "ctx_idx": int(node["ctx_idx"]),
        "feature_type": node["feature_type"],
        "token_prob": float(node.get("token_prob", 0.0)),
        "is_target_logit": bool(node.get("is_target_logit", False)),
        "run_idx": int(node.get("run_idx", 0)),
        "reverse_ctx_idx": int(node.get("reverse_ctx_idx", 0)),
        "jsNodeId": node.get("jsNodeId", node["node_id"]),
        "clerp": node.get("clerp", ""),
        "influence": node.get("influence"),
        "activation": node.get("activation"),
    }
    if node["feature_type"] == "mlp reconstruction error":
        layer, pos = out["layer"], out["ctx_idx"]
        out["node_id"], out["jsNodeId"] = f"0_{layer}_{pos}", f"{layer}_{pos}-0"
    assert tuple(out) == CT_NODE_FIELDS
    return out


def graph_index(metadatas: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`graph-metadata.json`: the graphs a viewer lists (circuit-tracer writes the same)."""
    return {"graphs": [{k: m[k] for k in CT_METADATA_FIELDS} for m in metadatas]}


def source_name(kind: str, width: int) -> str:
    """The default source-set name: `aimri-res-4608` for an SAE on hook_resid_post."""
    return f"aimri-{HOOK_NAMES.get(kind, 'site')}-{width}"


def feature_json(f: FeatureStats, *, source_id: str) -> dict[str, Any]:
    """circuit-tracer's feature file for one described feature."""
    quantiles = [
        {"quantile_name": name, "examples": [_ct_example(e) for e in examples]}
        for name, examples in _example_sets(f)
    ]
    acts = [a for e in f.examples for a in e.acts]
    return {
        "transcoder_id": source_id,
        "index": f.index,
        "examples_quantiles": quantiles,
        "top_logits": [t.token for t in f.promoted],
        "bottom_logits": [t.token for t in f.suppressed],
        "act_min": min([0.0, *acts]),
        "act_max": float(f.max_act),
        "quantile_values": [float(v) for _, v in sorted(f.quantiles.items(), key=_pct)],
        "histogram": [float(c) for c in f.hist_counts],
        "activation_frequency": float(f.density),
    }


def _pct(item: tuple[str, float]) -> float:
    return float(item[0].lstrip("p"))


def _example_sets(f: FeatureStats) -> list[tuple[str, list[Example]]]:
    """The firing examples by set: the top ones, then each quantile bucket, highest first."""
    sets: list[tuple[str, list[Example]]] = [(TOP, f.of_kind("top"))]
    buckets = sorted({e.bucket for e in f.of_kind("quantile")})
    sets += [
        (f"Quantile {b}", [e for e in f.of_kind("quantile") if e.bucket == b]) for b in buckets
    ]
    return [(name, examples) for name, examples in sets if examples]


def _ct_example(e: Example) -> dict[str, Any]:
    return {
        "tokens_acts_list": [float(a) for a in e.acts],
        "train_token_ind": _argmax(e.acts),
        "is_repeated_datapoint": False,
        "tokens": list(e.tokens),
    }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__) if values else 0


# --- Neuronpedia's bulk export ---------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    model_id: str
    source_set: str
    layer: int
    site: str
    n_features: int
    description: str
    saelens_config: dict[str, Any] | None
    """The dictionary's cfg.json (SAELens layout)."""
    created: str
    """ISO time of the export."""
    n_layers: int
    """The model's layers (at least the dictionary's layer + 1 where the run does not say)."""
    d_model: int | None = None
    d_mlp: int = 0
    """The model's MLP width (Neuronpedia's `neuronsPerLayer`); 0 where the run does not say."""

    @property
    def source_id(self) -> str:
        return f"{self.layer}-{self.source_set}"


CREATOR = "clkht01d40000jv08hvalcvly"
"""`creatorId` / `authorId` of every record: Neuronpedia's default creator user (its
DEFAULT_CREATOR_USER_ID, seeded in every instance), as its own exports have it. The rows of the
model, the source set and the source are created one by one through its ORM, so they hold only
its columns and every column without a default; the feature, activation and explanation rows go
in by column name (unknown keys are dropped) and reference users and explanation types by key."""


def source_headers(s: SourceInfo) -> dict[str, dict[str, Any]]:
    """One record each for `model.jsonl`, `sourceset.jsonl` and `source.jsonl`."""
    base = {"creatorId": CREATOR, "createdAt": s.created}
    model = {"id": s.model_id, "displayNameShort": s.model_id, "displayName": s.model_id}
    model |= {"dimension": s.d_model, "visibility": "PUBLIC", "instruct": False}
    model |= {"layers": s.n_layers, "neuronsPerLayer": s.d_mlp, "owner": ""} | base
    sourceset = {"modelId": s.model_id, "name": s.source_set, "hasDashboards": True}
    sourceset |= {"visibility": "PUBLIC", "description": s.description, "type": ""}
    sourceset |= {"creatorName": "aimri", "urls": []} | base
    source = {"id": s.source_id, "modelId": s.model_id, "setName": s.source_set}
    source |= {"hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": []}
    source |= {"saelensConfig": s.saelens_config, "visibility": "PUBLIC"}
    source |= {"notes": f"{s.n_features} features at {s.site}, exported by aimri"} | base
    return {"model": model, "sourceset": sourceset, "source": source}


def feature_record(s: SourceInfo, f: FeatureStats) -> dict[str, Any]:
    """The feature's row of `features/batch-N.jsonl.gz`."""
    edges = f.hist_edges
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    return {
        "modelId": s.model_id,
        "layer": s.source_id,
        "index": str(f.index),
        "sourceSetName": s.source_set,
        "creatorId": CREATOR,
        "createdAt": s.created,
        "maxActApprox": float(f.max_act),
        "hasVector": False,
        "hookName": s.site,
        "topkCosSimIndices": [n.feature for n in f.neighbours],
        "topkCosSimValues": [float(n.value) for n in f.neighbours],
        "neg_str": [t.token for t in f.suppressed],
        "neg_values": [float(t.value) for t in f.suppressed],
        "pos_str": [t.token for t in f.promoted],
        "pos_values": [float(t.value) for t in f.promoted],
        "frac_nonzero": float(f.density),
        "freq_hist_data_bar_heights": [float(c) for c in f.hist_counts],
        "freq_hist_data_bar_values": centres,
    }


def activation_records(s: SourceInfo, f: FeatureStats) -> list[dict[str, Any]]:
    """The feature's rows of `activations/batch-N.jsonl.gz`: its firing examples, each set with
    its bin (the values it spans, and the share of firing contexts it stands for)."""
    sets = _example_sets(f)
    n_buckets = max((e.bucket for e in f.of_kind("quantile")), default=0)
    rows = []
    for name, examples in sets:
        peaks = [e.max_act for e in examples]
        contains = None if name == TOP or not n_buckets else 1 / n_buckets
        for k, e in enumerate(examples):
            top = _argmax(e.acts)
            rows.append(
                {
                    "id": _cuid(s.source_id, f.index, name, k),
                    "tokens": list(e.tokens),
                    "index": str(f.index),
                    "layer": s.source_id,
                    "modelId": s.model_id,
                    "maxValue": float(e.max_act),
                    "maxValueTokenIndex": top,
                    "minValue": float(min(e.acts, default=0.0)),
                    "values": [float(a) for a in e.acts],
                    "creatorId": CREATOR,
                    "createdAt": s.created,
                    "binMin": float(min(peaks)),
                    "binMax": float(max(peaks)),
                    "binContains": contains,
                    "qualifyingTokenIndex": top,
                }
            )
    return rows


def explanation_records(s: SourceInfo, labels: list[Label], best: str | None) -> list[dict]:
    """The feature's rows of `explanations/batch-N.jsonl.gz`: its best-scoring label first.
    Neuronpedia's explanation types and explainer models are keys into its own tables, so
    aimri's explainer is named in `notes` instead."""
    ordered = sorted(labels, key=lambda label: label.text != best)
    return [
        {
            "id": _cuid(s.source_id, label.feature, "label", label.explainer),
            "modelId": s.model_id,
            "layer": s.source_id,
            "index": str(label.feature),
            "description": label.text,
            "authorId": CREATOR,
            "typeName": None,
            "explanationModelName": None,
            "notes": f"aimri {label.explainer} explainer"
            + (" (its best-scoring label)" if label.text == best else ""),
            "createdAt": s.created,
        }
        for label in ordered
    ]


def _cuid(*parts: object) -> str:
    """A stable 25-character id in Neuronpedia's style (a 'c' and 24 lowercase base-36 chars)."""
    n = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest(), 16)
    chars = []
    for _ in range(24):
        n, r = divmod(n, 36)
        chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[r])
    return "c" + "".join(chars)
