"""QK attribution: which heads moved information into a target, and what formed their
queries and keys.

The graph freezes attention patterns, so it says which earlier positions a target read from
but not why attention went there. This module answers both for one target node:

1. Moved: for every head, the part of the target's direct input that the head carried from
   another position (its OV output at the target's cone, read by the target's gradient, key
   positions other than the query's own). Heads are ranked by it.
2. Formed: for the top heads, take the (query, key) pair carrying the most, and split that
   attention score (before the softmax) over what the residual stream at each side is made of:
   the token embedding, each earlier attention block's output, each earlier transcoder feature,
   error node and bias. The score is bilinear in the two streams, so the query side's parts sum
   to the score (keys held whole), and so do the key side's.

Both splits are checked: the parts recompute the model's own attention pattern, or the head is
reported as not decomposable. Rotary embeddings are applied as the model does (read from its
rotary module). Not here: the frozen model (`replacement.py`), the graph (`attribute.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aimri.circuits.attribute import NodeIndex, Targets, sweep
from aimri.circuits.graph import Graph
from aimri.circuits.replacement import Replacement
from aimri.model.adapter import Model


@dataclass(frozen=True)
class Part:
    label: str
    node_id: str
    """The graph's node id for features, errors and tokens; '' for attention and bias parts."""
    weight: float
    """Contribution to the attention score (pre-softmax logit)."""


@dataclass(frozen=True)
class HeadQK:
    layer: int
    head: int
    moved: float
    """What the head carried into the target from other positions (direct effect)."""
    query_pos: int
    key_pos: int
    pattern: float
    """Attention probability of that pair."""
    score: float
    """The pair's attention score (pre-softmax), = Σ query parts = Σ key parts."""
    query: list[Part]
    key: list[Part]


@dataclass(frozen=True)
class QKAttribution:
    target: str
    heads: list[HeadQK]
    note: str = ""
    """Why some heads could not be split (e.g. a family without q_proj/k_proj)."""

    def records(self) -> list[dict[str, Any]]:
        """JSON-ready rows, one per head."""
        return [
            {
                "target": self.target,
                "layer": h.layer,
                "head": h.head,
                "score": h.moved,
                "attention_score": h.score,
                "query_pos": h.query_pos,
                "key_pos": h.key_pos,
                "pattern": h.pattern,
                "query": [
                    {"node_id": p.node_id, "label": p.label, "weight": p.weight} for p in h.query
                ],
                "key": [
                    {"node_id": p.node_id, "label": p.label, "weight": p.weight} for p in h.key
                ],
            }
            for h in self.heads
        ]


@torch.no_grad()
def qk_attribution(
    model: Model,
    rep: Replacement,
    graph: Graph,
    target: Targets,
    target_id: str,
    *,
    n_heads: int = 3,
    n_parts: int = 5,
) -> QKAttribution:
    """Rank heads by what they moved into `target` and split the top ones' scores."""
    grads: dict[int, Tensor] = {}
    sweep(rep, target, on_attention=lambda layer, g: grads.__setitem__(layer, g[0].clone()))
    moved = {layer: _moved_by_head(rep, layer, g) for layer, g in grads.items()}
    ranked = sorted(
        ((layer, h) for layer, m in moved.items() for h in range(m.shape[0])),
        key=lambda lh: -abs(float(moved[lh[0]][lh[1]].sum())),
    )
    index = NodeIndex(rep, len(graph.logit_ids))
    heads, notes = [], []
    for layer, h in ranked[:n_heads]:
        per_pair = moved[layer][h]
        q, k = divmod(int(per_pair.abs().argmax()), per_pair.shape[1])
        split = _split_score(model, rep, graph, index, layer, h, q, k, n_parts)
        if isinstance(split, str):
            notes.append(split)
            continue
        heads.append(HeadQK(layer, h, float(per_pair.sum()), q, k, *split))
    return QKAttribution(target_id, heads, "; ".join(dict.fromkeys(notes)))


def _moved_by_head(rep: Replacement, layer: int, g: Tensor) -> Tensor:
    """[H, q, k]: head h's OV write from key k into query q, read by the target's gradient g
    [P', D] (w.r.t. the attention output); the diagonal (a position reading itself) is zeroed."""
    attn = rep.attn[layer]
    P1 = g.shape[0]
    x = rep.ln1[layer](rep.resid_pre[layer, :P1])
    v = x @ attn.W_V.T + (0 if attn.b_V is None else attn.b_V)
    v = v.view(P1, attn.n_kv, attn.d_head).repeat_interleave(attn.n_heads // attn.n_kv, 1)
    u = (g @ attn.W_O).view(P1, attn.n_heads, attn.d_head)
    contrib = attn.pattern[:, :P1, :P1] * torch.einsum("qhd,khd->hqk", u, v)
    return contrib * (1 - torch.eye(P1))


def _parts(
    rep: Replacement, graph: Graph, index: NodeIndex, layer: int, pos: int
) -> tuple[Tensor, list[tuple[str, str]]]:
    """The residual stream entering `layer` at `pos`, as a sum of named vectors [n, D]."""
    vecs = [rep.embed[pos]]
    names = [(f"token “{graph.tokens[pos]}”", graph.node_id(index.token_start + pos))]
    K = rep.feat_val.shape[-1]
    for j in range(layer):
        attn_out = rep.attn[j](rep.ln1[j](rep.resid_pre[j, : pos + 1]))[pos]
        vecs.append(attn_out)
        names.append((f"attention L{j}", ""))
        src = rep.stream_writes(j, layer)[pos]  # [K+1, D]
        for s in range(K):
            g_idx = int(index.of_slot[j, pos, s])
            if g_idx >= 0:
                vecs.append(src[s])
                names.append(
                    (f"feature L{j} #{int(rep.feat_idx[j, pos, s])}", graph.node_id(g_idx))
                )
        vecs.append(src[K])
        names.append((f"error L{j}", graph.node_id(int(index.of_slot[j, pos, K]))))
    stacked = torch.stack(vecs)
    rest = rep.resid_pre[layer, pos] - stacked.sum(0)  # biases (b_dec, b_O, ...) and skips
    return torch.cat([stacked, rest[None]]), [*names, ("biases", "")]


def _split_score(
    model: Model,
    rep: Replacement,
    graph: Graph,
    index: NodeIndex,
    layer: int,
    h: int,
    q: int,
    k: int,
    n_parts: int,
) -> tuple[float, float, list[Part], list[Part]] | str:
    module = model.layout.layers[layer].get_submodule(model.layout.block.attn)
    W_Q = getattr(getattr(module, "q_proj", None), "weight", None)
    W_K = getattr(getattr(module, "k_proj", None), "weight", None)
    scaling = getattr(module, "scaling", None)
    if W_Q is None or W_K is None or scaling is None:
        return f"'{model.info.family}' attention has no q_proj/k_proj/scaling to split"
    attn, ln1 = rep.attn[layer], rep.ln1[layer]
    dh, G = attn.d_head, attn.n_heads // attn.n_kv
    Wq = W_Q.detach().float()[h * dh : (h + 1) * dh]
    Wk = W_K.detach().float()[(h // G) * dh : (h // G + 1) * dh]
    rot = _rotary(model, rep.n_pos, dh)

    def query(parts: Tensor) -> Tensor:
        return rot(ln1.linear_at(parts, q) @ Wq.T, q)

    def key(parts: Tensor, at: int | None = None) -> Tensor:
        at = k if at is None else at
        return rot(ln1.linear_at(parts, at) @ Wk.T, at)

    q_vecs, q_names = _parts(rep, graph, index, layer, q)
    k_vecs, k_names = _parts(rep, graph, index, layer, k)
    q_parts, k_parts = query(q_vecs), key(k_vecs)
    bq = _bias(module, "q_proj", h * dh, dh, rot, q)
    bk = _bias(module, "k_proj", (h // G) * dh, dh, rot, k)
    q_parts[-1] += bq  # the projections' biases join the "biases" part
    k_parts[-1] += bk
    q_total, k_total = q_parts.sum(0), k_parts.sum(0)
    score = float(q_total @ k_total) * scaling
    # Check: the whole query against every key reproduces the model's pattern row.
    keys = torch.stack(
        [
            key(rep.resid_pre[layer, j][None], j)[0]
            + _bias(module, "k_proj", (h // G) * dh, dh, rot, j)
            for j in range(q + 1)
        ]
    )
    row = ((keys @ q_total) * scaling).softmax(-1)
    if not torch.allclose(row, attn.pattern[h, q, : q + 1], atol=1e-3):
        return f"layer {layer} head {h}: the split does not reproduce the model's pattern"
    q_w = (q_parts @ k_total) * scaling
    k_w = (k_parts @ q_total) * scaling
    return (
        float(attn.pattern[h, q, k]),
        score,
        _top(q_w, q_names, n_parts),
        _top(k_w, k_names, n_parts),
    )


def _top(weights: Tensor, names: list[tuple[str, str]], n: int) -> list[Part]:
    order = weights.abs().argsort(descending=True)[:n]
    return [Part(names[i][0], names[i][1], float(weights[i])) for i in order.tolist()]


def _bias(module: Any, proj: str, start: int, dh: int, rot, pos: int) -> Tensor:
    b = getattr(getattr(module, proj), "bias", None)
    if b is None:
        return torch.zeros(dh)
    return rot(b.detach().float()[start : start + dh][None], pos)[0]


def _rotary(model: Model, n_pos: int, dh: int):
    """pos-wise rotation of [n, dh] rows as the model's rotary embedding does (identity if
    the model has none)."""
    rotary = getattr(model.hf.base_model, "rotary_emb", None)
    if rotary is None:
        return lambda x, pos: x
    probe = torch.zeros(1, n_pos, dh)
    cos, sin = rotary(probe, torch.arange(n_pos)[None])
    cos, sin = cos[0].float(), sin[0].float()

    def rot(x: Tensor, pos: int) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[pos] + rotated * sin[pos]

    return rot
