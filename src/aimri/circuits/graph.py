"""An attribution graph: its nodes, their influence on the output, and the pruned edges.

Nodes are numbered as circuit-tracer numbers them: active features (layer, position, latent),
then one error node per (layer, position), then the prompt's tokens, then the output logits.
An edge `target ← source` is the source's direct effect on the target's pre-activation (or
logit) through the frozen replacement model. Influence is the share of the chosen logits'
attribution that flows through a node along all paths (row-normalised absolute edges); the
pruned graph keeps the nodes holding `node_threshold` of it and the edges holding
`edge_threshold`. This module holds the data and the pure functions on it: pruning a small
dense matrix of kept nodes, and the circuit-tracer / Neuronpedia graph JSON.
Not here: computing edges (`attribute.py`), checking them (`validate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class GraphScores:
    replacement: float
    """Share of the token → logit influence that flows through features rather than errors."""
    completeness: float
    """Share of every node's inputs (weighted by its influence) that come from features or
    tokens rather than error nodes."""


@dataclass(frozen=True)
class Graph:
    prompt: str
    tokens: list[str]
    """The prompt's tokens, as text."""
    input_ids: Tensor
    """[P]"""
    n_layers: int
    features: Tensor
    """[n_f, 3] (layer, position, latent) of every active feature."""
    activations: Tensor
    """[n_f]"""
    logit_ids: Tensor
    """[n_l] the attributed output tokens (most likely first)."""
    logit_probs: Tensor
    """[n_l] their probabilities: the weight of each logit in the influence."""
    logit_tokens: list[str]
    influence: Tensor
    """[n_nodes] each node's influence on the chosen logits (0 for the logits themselves)."""
    node_mask: Tensor
    """[n_nodes] bool: nodes kept after pruning."""
    edges: Tensor
    """[n_e, 2] (target, source) node indices of the kept edges."""
    weights: Tensor
    """[n_e] their direct effects."""
    scores: GraphScores
    n_edges_total: int
    """Non-zero direct effects into the logits and every node with influence on them (the
    rows of nodes without influence are never computed); counted, not stored."""
    seconds: float
    bos_frozen: bool = False
    """Position 0 (a BOS token) was held constant: its features and error are not nodes."""

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_nodes(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + len(self.logit_ids)

    def node_kind(self, i: int) -> str:
        """'feature', 'error', 'token' or 'logit'."""
        f = self.n_features
        e = f + self.n_layers * self.n_pos
        if i < f:
            return "feature"
        if i < e:
            return "error"
        return "token" if i < e + self.n_pos else "logit"

    def node_id(self, i: int) -> str:
        """circuit-tracer's node id: `layer_latent_pos`, `layer_-1_pos` for errors,
        `E_token_pos` for tokens, `{n_layers+1}_token_{last pos}` for logits."""
        kind, P = self.node_kind(i), self.n_pos
        if kind == "feature":
            layer, pos, latent = self.features[i].tolist()
            return f"{layer}_{latent}_{pos}"
        if kind == "error":
            layer, pos = divmod(i - self.n_features, P)
            return f"{layer}_-1_{pos}"
        if kind == "token":
            pos = i - self.n_features - self.n_layers * P
            return f"E_{int(self.input_ids[pos])}_{pos}"
        j = i - self.n_features - (self.n_layers + 1) * P
        return f"{self.n_layers + 1}_{int(self.logit_ids[j])}_{P - 1}"


def find_threshold(scores: Tensor, fraction: float) -> float:
    """The score above which the largest scores hold `fraction` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    total = ordered.sum()
    if not total > 0:
        return 0.0
    cumulative = ordered.cumsum(0) / total
    i = min(int(torch.searchsorted(cumulative, torch.tensor(fraction))), len(ordered) - 1)
    return float(ordered[i])


def row_normalised(matrix: Tensor) -> Tensor:
    """|matrix| with each row summing to 1 (all-zero rows stay zero)."""
    a = matrix.abs()
    return a / a.sum(-1, keepdim=True).clamp_min(1e-10)


def influence_of(normalised: Tensor, logit_weights: Tensor) -> Tensor:
    """Σ_k≥1 w Â^k: influence on the weighted logits along paths of every length (Â is
    nilpotent: the graph is acyclic)."""
    current = logit_weights @ normalised
    total = current.clone()
    for _ in range(normalised.shape[0]):
        if not current.any():
            break
        current = current @ normalised
        total += current
    return total


@dataclass(frozen=True)
class PrunedEdges:
    node_keep: Tensor
    """[n] bool over the kept-node matrix."""
    edge_keep: Tensor
    """[n, n] bool (target, source)."""


def prune_edges(
    matrix: Tensor, logit_weights: Tensor, n_features: int, n_fixed: int, edge_threshold: float
) -> PrunedEdges:
    """Edge pruning on the adjacency among the nodes kept by influence (rows: targets).

    Nodes are ordered features, errors, then `n_fixed` tokens and logits (always kept). Edges
    are scored by their normalised weight times the target's influence (plus its logit weight);
    then features and errors without outgoing edges, and features without incoming ones, are
    dropped until nothing changes."""
    normalised = row_normalised(matrix)
    target_weight = influence_of(normalised, logit_weights) + logit_weights
    scores = normalised * target_weight[:, None]
    edge_keep = scores >= find_threshold(scores, edge_threshold)
    edge_keep &= matrix != 0
    n = matrix.shape[0]
    node_keep = torch.ones(n, dtype=torch.bool)
    while True:
        before = node_keep.clone()
        edge_keep &= node_keep[:, None] & node_keep[None, :]
        node_keep[: n - n_fixed] &= edge_keep[:, : n - n_fixed].any(0)
        node_keep[:n_features] &= edge_keep[:n_features].any(1)
        if torch.equal(before, node_keep):
            return PrunedEdges(node_keep, edge_keep)


def graph_json(
    graph: Graph,
    *,
    slug: str,
    scan: str,
    labels: dict[tuple[int, int], str] | None = None,
    supernodes: list[list[str]] | None = None,
) -> dict[str, Any]:
    """The pruned graph in the JSON that circuit-tracer's frontend and Neuronpedia read
    (`metadata`, `qParams`, `nodes`, `links`). `labels` {(layer, latent): text} fills `clerp`."""
    labels = labels or {}
    kept = graph.node_mask.nonzero().flatten().tolist()
    ordered = graph.influence.sort(descending=True)
    total = graph.influence.sum().clamp_min(1e-10)
    cumulative = torch.empty_like(graph.influence)
    cumulative[ordered.indices] = ordered.values.cumsum(0) / total
    connected = set(graph.edges.flatten().tolist())
    nodes = []
    for i in kept:
        kind = graph.node_kind(i)
        if kind in ("feature", "error") and i not in connected:
            continue
        nodes.append(_node_json(graph, i, kind, float(cumulative[i]), labels))
    ids = {i: graph.node_id(i) for i in kept}
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(w)}
        for (t, s), w in zip(graph.edges.tolist(), graph.weights.tolist(), strict=True)
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": graph.tokens,
            "prompt": graph.prompt,
            "node_threshold": None,
            "schema_version": 1,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": supernodes or [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def strongest_links(data: dict[str, Any], n: int) -> dict[str, Any]:
    """A copy of graph JSON with only its `n` strongest links (by |weight|), for embedding in
    a report; `metadata.links_total` keeps the full count."""
    links = sorted(data["links"], key=lambda e: -abs(e["weight"]))
    metadata = {**data["metadata"], "links_total": len(links)}
    return {**data, "metadata": metadata, "links": links[:n]}


def _node_json(
    graph: Graph, i: int, kind: str, influence: float, labels: dict[tuple[int, int], str]
) -> dict[str, Any]:
    node_id, P, L = graph.node_id(i), graph.n_pos, graph.n_layers
    base = {"node_id": node_id, "jsNodeId": node_id, "run_idx": 0, "reverse_ctx_idx": 0}
    base |= {"token_prob": 0.0, "is_target_logit": False, "influence": influence}
    if kind == "feature":
        layer, pos, latent = graph.features[i].tolist()
        return base | {
            "feature": (layer + latent) * (layer + latent + 1) // 2 + latent,  # Cantor pairing
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": "cross layer transcoder",
            "jsNodeId": f"{layer}_{latent}-0",
            "clerp": labels.get((layer, latent), ""),
            "activation": float(graph.activations[i]),
        }
    if kind == "error":
        layer, pos = divmod(i - graph.n_features, P)
        return base | {
            "feature": -1,
            "layer": str(layer),
            "ctx_idx": pos,
            "feature_type": "mlp reconstruction error",
            "jsNodeId": f"{layer}_-1-{pos}",
            "clerp": f"error: what transcoder {layer} misses at “{graph.tokens[pos]}”",
        }
    if kind == "token":
        pos = i - graph.n_features - L * P
        return base | {
            "feature": pos,
            "layer": "E",
            "ctx_idx": pos,
            "feature_type": "embedding",
            "jsNodeId": f"E_{int(graph.input_ids[pos])}-{pos}",
            "clerp": f"token “{graph.tokens[pos]}”",
        }
    j = i - graph.n_features - (L + 1) * P
    prob, token = float(graph.logit_probs[j]), graph.logit_tokens[j]
    return base | {
        "feature": int(graph.logit_ids[j]),
        "layer": str(L + 1),
        "ctx_idx": P - 1,
        "feature_type": "logit",
        "token_prob": prob,
        "is_target_logit": j == 0,
        "jsNodeId": f"L_{int(graph.logit_ids[j])}-{P - 1}",
        "clerp": f'Output "{token}" (p={prob:.3f})',
        "influence": None,
    }
