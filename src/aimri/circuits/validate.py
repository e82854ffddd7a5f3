"""Validation by intervention: does the graph predict what happens in the real model?

For the strongest edges of a pruned graph whose source is a feature, the source feature is
ablated in the real model (its decoder write removed from the MLP output at its position; the
model then runs on, attention, norms and all later features free to respond) and the change in
the target (a feature's pre-activation, or a logit minus the mean logit) is measured. Two
predictions from the graph are compared with it:

- direct: minus the edge weight (only the direct path);
- total:  minus the source's effect along every path of the full graph, features responding
  linearly (one sweep through the active features from the target).

The same is done for the most influential feature nodes against the top logit. Agreement is
reported per graph (Pearson r, sign agreement, median relative error); a graph whose numbers
are poor is shown as such. Not here: computing the graph (`attribute.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from aimri.circuits.attribute import Targets, logit_vectors, sweep
from aimri.circuits.graph import Graph
from aimri.circuits.replacement import Replacement
from aimri.model.adapter import Model

METHOD = (
    "ablate the source feature in the real model (remove its decoder write at its position; "
    "everything downstream free to respond) and measure the target's change"
)


@dataclass(frozen=True)
class CheckedEdge:
    source: str
    target: str
    kind: str
    """'edge' (a graph edge) or 'node' (a feature's effect on the top logit)."""
    predicted_direct: float
    predicted_total: float
    measured: float


@dataclass(frozen=True)
class Validation:
    method: str
    items: list[CheckedEdge]
    pearson: float
    """Between the total (all-path) prediction and the measured change."""
    pearson_direct: float
    sign_agreement: float
    median_relative_error: float

    @property
    def n(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class _Node:
    """A node as an intervention sees it."""

    index: int
    layer: int
    pos: int
    slot: int
    latent: int
    activation: float


@torch.no_grad()
def validate(
    model: Model,
    rep: Replacement,
    graph: Graph,
    *,
    n_edges: int = 16,
    n_nodes: int = 8,
) -> Validation:
    """Check the graph's strongest feature → feature/logit edges and its most influential
    features by ablation in the real model. `rep` is the graph's replacement model
    (`build_replacement(model, transcoders, graph.input_ids, freeze_bos=graph.bos_frozen)`)."""
    pairs = _edge_pairs(graph, n_edges) + _node_pairs(graph, n_nodes)
    items = [
        CheckedEdge(
            source=graph.node_id(s),
            target=graph.node_id(t),
            kind=kind,
            predicted_direct=-direct,
            predicted_total=-_total_effect(rep, graph, t, _as_node(rep, graph, s)),
            measured=_measured(model, rep, graph, _as_node(rep, graph, s), t),
        )
        for s, t, direct, kind in pairs
    ]
    return _summary(items)


def _edge_pairs(graph: Graph, n: int) -> list[tuple[int, int, float, str]]:
    """The n strongest kept edges from a feature to a feature or a logit."""
    t, s = graph.edges.T
    ok = (s < graph.n_features) & (
        (t < graph.n_features) | (t >= graph.n_nodes - len(graph.logit_ids))
    )
    order = graph.weights.abs().where(ok, torch.tensor(-1.0)).argsort(descending=True)
    chosen = [int(i) for i in order[:n] if ok[i]]
    return [(int(s[i]), int(t[i]), float(graph.weights[i]), "edge") for i in chosen]


def _node_pairs(graph: Graph, n: int) -> list[tuple[int, int, float, str]]:
    """The n most influential kept features against the top logit (direct: the edge if kept)."""
    top_logit = graph.n_nodes - len(graph.logit_ids)
    feats = graph.node_mask[: graph.n_features].nonzero().flatten()
    ranked = feats[graph.influence[feats].argsort(descending=True)][:n]
    pairs = zip(graph.edges.tolist(), graph.weights.tolist(), strict=True)
    direct = {(t, s): w for (t, s), w in pairs}
    return [(int(s), top_logit, direct.get((top_logit, int(s)), 0.0), "node") for s in ranked]


def _as_node(rep: Replacement, graph: Graph, i: int) -> _Node:
    layer, pos, latent = graph.features[i].tolist()
    slot = int((rep.feat_idx[layer, pos] == latent).nonzero()[0])
    return _Node(i, layer, pos, slot, latent, float(graph.activations[i]))


def _target_of(rep: Replacement, graph: Graph, t: int) -> Targets:
    if t < graph.n_features:
        layer, pos, latent = graph.features[t].tolist()
        vec = rep.transcoders.encoder(layer).detach()[latent].float()[None]
        return Targets(layer, torch.tensor([pos]), vec)
    j = t - (graph.n_nodes - len(graph.logit_ids))
    return logit_vectors(rep, graph.logit_ids[j : j + 1])


def _total_effect(rep: Replacement, graph: Graph, t: int, source: _Node) -> float:
    edges, _ = sweep(rep, _target_of(rep, graph, t), through_features=True)
    return float(edges[0, source.layer, source.pos, source.slot])


def _measured(model: Model, rep: Replacement, graph: Graph, source: _Node, t: int) -> float:
    """Target value after ablating `source` in the real model (its writes removed from every
    MLP output it reaches), minus its value before."""
    st = rep.transcoders

    def ablate(write: Tensor) -> Callable[[Tensor], Tensor]:
        def edit(x: Tensor) -> Tensor:
            x = x.clone()
            x[:, source.pos] -= write.to(x.dtype)
            return x

        return edit

    patch = {
        f"blocks.{j}.hook_mlp_out": ablate(
            st.decoder(source.layer, j).detach()[source.latent].float() * source.activation
        )
        for j in st.reach(source.layer)
    }
    ids = graph.input_ids[None]
    if t < graph.n_features:
        layer, pos, latent = graph.features[t].tolist()
        read = f"blocks.{layer}.ln2.hook_normalized"
        after = model.run(ids, read=[read], patch=patch, logits=False).acts[read]
        w = st.encoder(layer).detach()[latent].float()
        return float(w @ (after[0, pos].float() - rep.mlp_in[layer, pos]))
    j = t - (graph.n_nodes - len(graph.logit_ids))
    token = int(graph.logit_ids[j])
    logits = model.run(ids, patch=patch).logits
    assert logits is not None
    new, old = logits[0, -1].float(), rep.logits[-1]
    return float((new[token] - new.mean()) - (old[token] - old.mean()))


def _summary(items: list[CheckedEdge]) -> Validation:
    pred = torch.tensor([i.predicted_total for i in items], dtype=torch.float64)
    direct = torch.tensor([i.predicted_direct for i in items], dtype=torch.float64)
    meas = torch.tensor([i.measured for i in items], dtype=torch.float64)
    if len(items) == 0:
        return Validation(METHOD, items, math.nan, math.nan, math.nan, math.nan)
    rel = (meas - pred).abs() / pred.abs().clamp_min(1e-6)
    return Validation(
        method=METHOD,
        items=items,
        pearson=_pearson(pred, meas),
        pearson_direct=_pearson(direct, meas),
        sign_agreement=float((pred.sign() == meas.sign()).double().mean()),
        median_relative_error=float(rel.median()),
    )


def _pearson(a: Tensor, b: Tensor) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])
