"""`attribute(model, transcoders, prompt)` → an attribution Graph, exact and fast.

The replacement model (`replacement.py`) is linear, so the row of the adjacency matrix for a
target (a feature's pre-activation, or a logit) is one vector-Jacobian sweep from the target
down to the embeddings, read out against every source's output vector on the way. How this
is fast and bounded in memory:

- Targets are swept in batches of the same layer, sorted by position; a batch covers only
  positions up to its last target's (its causal cone) and only the layers below it.
- Sweeps are plain matrix products (no autograd graph, no hooks).
- Nothing of size nodes × nodes is stored. Influence on the output flows from the logits
  downwards, so sweeping the layers from the top, every target's influence is final before
  its own row is computed; each row adds its share to its sources' influence and is dropped.
  Targets with no influence are not swept at all.
- Pruning keeps the nodes holding `node_threshold` of the influence; only their rows are swept
  again (a second, small pass) into a dense matrix among kept nodes, where edges are pruned.

Cross-layer transcoders: a feature of layer l writes every layer j ≥ l, so its edge into a
target is the sum over those j (below the target) of the gradient at j's MLP output · its
decoder row into j, times its activation; one sweep collects all of them on the way down.

The graph equals circuit-tracer's for the same transcoders and thresholds (benchmarks/).
Not here: the frozen model (`replacement.py`), node numbering and JSON (`graph.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aimri.circuits.graph import Graph, GraphScores, find_threshold, prune_edges
from aimri.circuits.replacement import Replacement, build_replacement
from aimri.dicts.clt import TranscoderStack
from aimri.dicts.dictionary import Transcoder
from aimri.errors import AimriError
from aimri.model.adapter import Model


@dataclass(frozen=True, kw_only=True)
class AttributionSettings:
    max_n_logits: int = 10
    """Attribute at most this many output tokens (the most likely ones)..."""
    desired_logit_prob: float = 0.95
    """...stopping once they hold this much probability."""
    target: str | None = None
    """Attribute this one next token instead (its text must be a single token)."""
    batch_size: int = 256
    """Targets per sweep; memory grows with batch_size × prompt length × d_model."""
    node_threshold: float = 0.8
    """Keep the nodes that together hold this share of the influence on the logits."""
    edge_threshold: float = 0.98
    """Keep the edges that together hold this share of the (pruned) influence."""
    freeze_bos: bool = True
    """When the prompt starts with a special token (BOS), hold its features and error as a
    constant instead of making them nodes, as circuit-tracer does."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the sweeps' matrix products. bfloat16 is several times faster on CPUs with
    AVX-512 BF16/AMX and on GPUs, with edges good to about 3 significant digits."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold", "desired_logit_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise AimriError(f"{name}={v} must lie between 0 and 1")
        if self.max_n_logits < 1 or self.batch_size < 1:
            raise AimriError("max_n_logits and batch_size must be at least 1")


@dataclass(frozen=True)
class Targets:
    layer: int
    """Layer whose MLP input the targets read; n_layers for logits."""
    pos: Tensor
    """[B] positions."""
    vecs: Tensor
    """[B, D] gradient of each target w.r.t. that layer's MLP input (or the final norm's
    output, for logits)."""


def tokenize(model: Model, prompt: str) -> Tensor:
    """The prompt's token ids [P], checked against the model's context length."""
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids[0]
    limit = getattr(model.hf.config, "max_position_embeddings", None)
    if len(ids) == 0:
        raise AimriError("the prompt is empty: attribution needs at least one token")
    if limit is not None and len(ids) > limit:
        raise AimriError(
            f"the prompt has {len(ids)} tokens, more than this model's context of {limit}; "
            "shorten the prompt"
        )
    return ids


@torch.no_grad()
def attribute(
    model: Model,
    transcoders: Sequence[Transcoder] | TranscoderStack,
    prompt: str,
    settings: AttributionSettings | None = None,
) -> Graph:
    """The pruned attribution graph of `prompt` (see the module docstring)."""
    settings = settings or AttributionSettings()
    start = time.perf_counter()
    ids = tokenize(model, prompt)
    rep = build_replacement(model, transcoders, ids, freeze_bos=settings.freeze_bos)
    rep = rep.with_sweep_dtype(getattr(torch, settings.precision))
    logit_ids, logit_probs = _logit_targets(model, rep, settings)
    index = NodeIndex(rep, len(logit_ids))
    logit_targets = logit_vectors(rep, logit_ids)
    bar = tqdm(total=index.n_features, disable=not settings.progress, desc="attribution")
    first = _influence_pass(rep, index, logit_targets, logit_probs, settings.batch_size, bar)
    bar.close()
    node_mask = first.influence >= find_threshold(first.influence, settings.node_threshold)
    node_mask[index.n_features + index.n_errors :] = True  # tokens and logits stay
    edges, weights, node_mask = _pruned_edges(
        rep, index, logit_targets, logit_probs, node_mask, settings
    )
    return Graph(
        prompt=prompt,
        tokens=[model.tokenizer.decode([int(t)]) for t in ids],
        input_ids=ids,
        n_layers=rep.n_layers,
        features=index.features,
        activations=rep.feat_val[tuple(index.features_lps.T)],
        logit_ids=logit_ids,
        logit_probs=logit_probs,
        logit_tokens=[model.tokenizer.decode([int(t)]) for t in logit_ids],
        influence=first.influence,
        node_mask=node_mask,
        edges=edges,
        weights=weights,
        scores=first.scores,
        n_edges_total=first.n_edges,
        seconds=time.perf_counter() - start,
        bos_frozen=bool(rep.frozen_out[:, 0].any()),
    )


class NodeIndex:
    """Where each (layer, position, slot) of the replacement lives in the node numbering.
    Slot K (the last) of every (layer, position) is its error node."""

    def __init__(self, rep: Replacement, n_logits: int) -> None:
        L, P, K = rep.feat_val.shape
        active = rep.feat_val > 0
        self.features_lps = active.nonzero()  # [n_f, 3] (layer, pos, slot), layer-major
        self.n_features = len(self.features_lps)
        layer, pos, slot = self.features_lps.T
        self.features = torch.stack([layer, pos, rep.feat_idx[layer, pos, slot]], dim=1)
        self.n_errors = L * P
        self.n_nodes = self.n_features + self.n_errors + P + n_logits
        glob = torch.full((L, P, K + 1), -1, dtype=torch.long)
        glob[layer, pos, slot] = torch.arange(self.n_features)
        glob[:, :, K] = self.n_features + torch.arange(L * P).view(L, P)
        self.of_slot = glob
        self.token_start = self.n_features + self.n_errors
        self.logit_start = self.token_start + P


def _logit_targets(
    model: Model, rep: Replacement, settings: AttributionSettings
) -> tuple[Tensor, Tensor]:
    probs = rep.logits[-1].softmax(-1)
    if settings.target is not None:
        ids = model.tokenizer(settings.target, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise AimriError(
                f"target {settings.target!r} is {len(ids)} tokens for this tokenizer, not one; "
                "give the single next token to attribute (mind the leading space)"
            )
        t = torch.tensor(ids)
        return t, probs[t]
    top = probs.sort(descending=True)
    n = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(settings.desired_logit_prob)))
    n = max(1, min(n + 1, settings.max_n_logits))
    return top.indices[:n], top.values[:n]


def logit_vectors(rep: Replacement, logit_ids: Tensor) -> Targets:
    """A logit target is the logit minus the mean logit (as circuit-tracer defines it)."""
    vecs = rep.W_U[logit_ids] - rep.W_U.mean(0)
    pos = torch.full((len(logit_ids),), rep.n_pos - 1)
    return Targets(rep.n_layers, pos, vecs)


def sweep(
    rep: Replacement,
    targets: Targets,
    *,
    through_features: bool = False,
    on_attention: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Direct effects of every source on B targets: (features and errors [B, layers below,
    P', K+1], tokens [B, P']) with P' = the last target position + 1.

    With `through_features`, the sweep also passes through the active features of the layers
    it crosses (each held active, so its activation follows its pre-activation): the result is
    then each source's total effect along all paths of the graph, not only the direct one.
    `on_attention(layer, g)` sees the gradient w.r.t. each attention block's output."""
    B, D = targets.vecs.shape
    P1 = int(targets.pos.max()) + 1
    g = targets.vecs.new_zeros(B, P1, D)
    g[torch.arange(B), targets.pos] = targets.vecs
    top = targets.layer
    if top == rep.n_layers:
        g = rep.final_norm.vjp(g)
    else:
        g = rep.ln2[top].vjp(g)
        if on_attention is not None:
            on_attention(top, g)
        g = g + rep.ln1[top].vjp(rep.attn[top].vjp(g))
    # edges[:, l, :, :K]: d target / d activation of each feature of layer l (through all the
    # layers it writes), scaled by the activation at the end; edges[:, l, :, K]: error nodes.
    edges = g.new_zeros(B, top, P1, rep.feat_val.shape[-1] + 1)
    for j in reversed(range(top)):
        edges[:, j] += torch.einsum("bpd,pkd->bpk", g, rep.own_rows(j)[:P1])
        for s in rep.writers(j)[:-1]:  # earlier layers' features writing into j (CLTs)
            edges[:, s, :, :-1] += torch.einsum("bpd,pkd->bpk", g, rep.rows(s, j)[:P1])
        g = g + _mlp_vjp(rep, j, g, edges[:, j, :, :-1] if through_features else None)
        if on_attention is not None:
            on_attention(j, g)
        g = g + rep.ln1[j].vjp(rep.attn[j].vjp(g))
    edges[..., :-1] *= rep.feat_val[:top, :P1]
    return edges, torch.einsum("bpd,pd->bp", g, rep.embed[:P1])


def _mlp_vjp(rep: Replacement, layer: int, g: Tensor, coef: Tensor | None) -> Tensor | int:
    """What reaches the MLP's input from its output: the skip path, and given `coef` [B, P',
    K] (the gradient w.r.t. each feature's activation, through every layer it writes) the
    active features (→ encoder row)."""
    skip = rep.transcoders.skip(layer)
    g_in = None
    if skip is not None:
        g_in = g @ skip.detach().float().T
    if coef is not None:
        P1 = g.shape[1]
        idx = rep.feat_idx[layer, :P1]
        active = (rep.feat_val[layer, :P1] > 0).to(g.dtype)
        W_enc = rep.transcoders.encoder(layer).detach().float()
        via = torch.einsum("bpk,pkd->bpd", coef * active, W_enc[idx])
        g_in = via if g_in is None else g_in + via
    return 0 if g_in is None else rep.ln2[layer].vjp(g_in)


@dataclass(frozen=True)
class _FirstPass:
    influence: Tensor
    scores: GraphScores
    n_edges: int


def _influence_pass(
    rep: Replacement,
    index: NodeIndex,
    logit_targets: Targets,
    logit_probs: Tensor,
    batch_size: int,
    bar: tqdm,
) -> _FirstPass:
    """Sweep every influential target once, from the logits down; see the module docstring."""
    L, P, K = rep.feat_val.shape
    infl = torch.zeros(L, P, K + 1)  # slot K: error nodes
    infl_tok = torch.zeros(P)
    acc = {"complete": 0.0, "weight": 0.0, "n_edges": 0}

    def consume(targets: Targets, weight: Tensor) -> None:
        edges, tok = sweep(rep, targets)
        a, a_tok = edges.abs(), tok.abs()
        row_sum = (a.sum((1, 2, 3)) + a_tok.sum(1)).clamp_min(1e-10)
        error_share = a[..., K].sum((1, 2)) / row_sum
        coef = weight / row_sum
        infl[: targets.layer, : a.shape[2]] += torch.einsum("b,blpk->lpk", coef, a)
        infl_tok[: a.shape[2]] += coef @ a_tok
        acc["complete"] += float(((1 - error_share) * weight).sum())
        acc["weight"] += float(weight.sum())
        acc["n_edges"] += int((edges != 0).sum() + (tok != 0).sum())

    consume(logit_targets, logit_probs)
    for layer in reversed(range(L)):
        lps = index.features_lps[index.features_lps[:, 0] == layer]
        for targets, rows in _feature_batches(rep, lps, batch_size):
            slots = lps[rows, 2]
            weight = infl[layer, targets.pos, slots]
            live = weight > 0
            bar.update(len(slots))
            if live.any():
                live_targets = Targets(layer, targets.pos[live], targets.vecs[live])
                consume(live_targets, weight[live])
    influence = torch.cat(
        [
            infl[tuple(index.features_lps.T)],
            infl[..., K].flatten(),
            infl_tok,
            torch.zeros(len(logit_probs)),
        ]
    )
    err_infl, tok_infl = float(infl[..., K].sum()), float(infl_tok.sum())
    # Error and token nodes have no inputs: all of their (zero) input is "complete".
    complete = acc["complete"] + err_infl + tok_infl
    weight_total = acc["weight"] + err_infl + tok_infl
    scores = GraphScores(
        replacement=tok_infl / max(tok_infl + err_infl, 1e-30),
        completeness=complete / max(weight_total, 1e-30),
    )
    return _FirstPass(influence, scores, acc["n_edges"])


def _feature_batches(rep: Replacement, lps: Tensor, batch_size: int):
    """(Targets, rows) for the features lps [n, 3] (layer, position, slot) of one layer, in
    batches of `batch_size`; `rows` index lps."""
    for i in range(0, len(lps), batch_size):
        chunk = lps[i : i + batch_size]
        layer = int(chunk[0, 0])
        latents = rep.feat_idx[layer, chunk[:, 1], chunk[:, 2]]
        vecs = rep.transcoders.encoder(layer).detach()[latents].float()
        yield Targets(layer, chunk[:, 1], vecs), torch.arange(i, i + len(chunk))


def _pruned_edges(
    rep: Replacement,
    index: NodeIndex,
    logit_targets: Targets,
    logit_probs: Tensor,
    node_mask: Tensor,
    settings: AttributionSettings,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sweep the kept targets again into a dense matrix among kept nodes; prune its edges.
    Returns (edges [n_e, 2] global (target, source), weights [n_e], final node mask)."""
    kept = node_mask.nonzero().flatten()
    local = torch.full((index.n_nodes,), -1, dtype=torch.long)
    local[kept] = torch.arange(len(kept))
    M = torch.zeros(len(kept), len(kept))
    P = rep.n_pos

    def fill(targets: Targets, rows: Tensor) -> None:
        edges, tok = sweep(rep, targets)
        P1 = edges.shape[2]
        cols = local[index.of_slot[: targets.layer, :P1]]  # [layers, P1, K+1]
        take = cols >= 0
        M[rows[:, None], cols[take][None, :]] = edges[:, take]
        tok_cols = local[index.token_start + torch.arange(P1)]
        M[rows[:, None], tok_cols[None, :]] = tok

    fill(logit_targets, local[index.logit_start + torch.arange(len(logit_probs))])
    kept_features = index.features_lps[node_mask[: index.n_features]]
    kept_global = kept[kept < index.n_features]
    for layer in range(rep.n_layers):
        on_layer = kept_features[:, 0] == layer
        glob = kept_global[on_layer]
        for targets, rows in _feature_batches(rep, kept_features[on_layer], settings.batch_size):
            fill(targets, local[glob[rows]])
    weights = torch.zeros(len(kept))
    weights[local[index.logit_start :]] = logit_probs
    n_kept_features = int((kept < index.n_features).sum())
    pruned = prune_edges(M, weights, n_kept_features, P + len(logit_probs), settings.edge_threshold)
    final_mask = torch.zeros_like(node_mask)
    final_mask[kept[pruned.node_keep]] = True
    t, s = pruned.edge_keep.nonzero().T
    return torch.stack([kept[t], kept[s]], dim=1), M[t, s], final_mask
