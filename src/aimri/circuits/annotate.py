"""Words on a graph's nodes, computed from weights: what each feature writes towards.

A transcoder feature at any layer writes its decoder row into the residual stream; read
through the final norm's gain and the unembedding (the logit lens of a direction), that row
promotes some output tokens over others. `logit_labels` names each kept feature by the tokens
it promotes most, and `supernodes` groups kept features at the same position that promote the
same token, the way a person would group them by hand. `word_labels` adds the input side: the
whole words where the feature fired hardest on a sample of text (`firing_index`, one pass).
All computed, never written by hand.
Not here: the graph itself (`graph.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aimri.circuits.graph import Graph
from aimri.circuits.replacement import norm_gain
from aimri.dicts.clt import TranscoderStack
from aimri.dicts.dictionary import Transcoder
from aimri.dicts.transcoder_set import as_stack
from aimri.model.adapter import Model


@torch.no_grad()
def logit_labels(
    model: Model,
    transcoders: Sequence[Transcoder] | TranscoderStack,
    graph: Graph,
    k: int = 3,
) -> dict[tuple[int, int], str]:
    """{(layer, latent): '→ " Paris", " France"'} for every kept feature of the graph."""
    st = as_stack(transcoders)
    W_U = model.layout.unembed.weight.detach().float()  # type: ignore[union-attr]
    norm = model.layout.final_norm
    D = model.info.d_model
    gain = torch.ones(D) if norm is None else norm_gain(norm, D)
    decode = model.tokenizer.decode
    keep = graph.node_mask[: graph.n_features].nonzero().flatten()
    out: dict[tuple[int, int], str] = {}
    for layer, _, latent in graph.features[keep].tolist():
        if (layer, latent) in out:
            continue
        # Everything the feature writes, into its own layer and (CLTs) every later one.
        row = torch.stack(
            [st.decoder(layer, j).detach()[latent].float() for j in st.reach(layer)]
        ).sum(0)
        effect = W_U @ (row * gain)
        tokens = [decode([int(i)]) for i in effect.topk(k).indices]
        out[(layer, latent)] = "→ " + ", ".join(f'"{t}"' for t in tokens)
    return out


def supernodes(graph: Graph, labels: dict[tuple[int, int], str]) -> list[list[str]]:
    """Kept features at one position whose labels lead with the same token, two or more:
    [[name, node_id, ...], ...] (circuit-tracer's qParams.supernodes)."""
    groups: dict[tuple[int, str], list[str]] = defaultdict(list)
    for i in graph.node_mask[: graph.n_features].nonzero().flatten().tolist():
        layer, pos, latent = graph.features[i].tolist()
        label = labels.get((layer, latent), "")
        if label:
            lead = label.removeprefix("→ ").split(", ")[0]
            groups[(pos, lead)].append(graph.node_id(i))
    return [
        [f"{lead} @ “{graph.tokens[pos]}”", *ids]
        for (pos, lead), ids in sorted(groups.items())
        if len(ids) >= 2
    ]


@dataclass(frozen=True)
class FiringIndex:
    """Where each transcoder feature fires hardest on a sample of text: per layer, the token
    positions of its `k` largest activations ([k, d_sae]) and their values, plus the text's
    token ids ([n]) to read the words back."""

    tokens: Tensor
    positions: dict[int, Tensor]
    values: dict[int, Tensor]


@torch.no_grad()
def firing_index(
    model: Model,
    transcoders: Sequence[Transcoder] | TranscoderStack,
    contexts: Tensor,
    k: int = 8,
    batch: int = 16,
) -> FiringIndex:
    """One pass of `contexts` [n, ctx_len] through the model, each layer's MLP input encoded by
    its transcoder; position 0 of each context (the attention sink) is left out."""
    st = as_stack(transcoders)
    layers = range(st.n_layers)
    sites = [f"blocks.{L}.ln2.hook_normalized" for L in layers]
    best_v: dict[int, Tensor] = {}
    best_p: dict[int, Tensor] = {}
    offset = 0
    for chunk in contexts.split(batch):
        acts = model.run(chunk, read=sites, logits=False).acts
        for L, site in zip(layers, sites, strict=True):
            x = acts[site].float()
            x[:, 0] = 0  # the sink: never a word's evidence
            codes = st.encode(L, x.reshape(-1, x.shape[-1]))
            dense = codes.to_dense(st.encoder(L).shape[0]).float()
            pos = torch.arange(offset, offset + len(dense))[:, None].expand_as(dense)
            v = dense if L not in best_v else torch.cat([best_v[L], dense])
            p = pos if L not in best_p else torch.cat([best_p[L], pos])
            top = v.topk(min(k, len(v)), dim=0)
            best_v[L], best_p[L] = top.values, p.gather(0, top.indices)
        offset += chunk.numel()
    return FiringIndex(contexts.reshape(-1), best_p, best_v)


def word_at(tokenizer: Any, tokens: Tensor, pos: int) -> str:
    """The whole word the token at `pos` belongs to: pieces before it that do not start a word
    and pieces after it that continue it are joined on."""
    decode = lambda a, b: tokenizer.decode(tokens[a:b].tolist())  # noqa: E731
    starts = lambda i: decode(i, i + 1)[:1] in (" ", "\n", "") or not decode(i, i + 1)[:1].isalnum()  # noqa: E731
    a = pos
    while a > 0 and not starts(a) and decode(a - 1, a)[-1:].isalnum():
        a -= 1
    b = pos + 1
    while b < len(tokens) and not starts(b) and decode(b, b + 1)[:1].isalnum():
        b += 1
    return decode(a, b).strip()


def word_labels(
    model: Model,
    index: FiringIndex,
    graph: Graph,
    promotes: dict[tuple[int, int], str],
    n_words: int = 3,
) -> dict[tuple[int, int], str]:
    """{(layer, latent): 'fires on “Paris”, “France” → " Paris"'}: the words where each kept
    feature fired hardest on the sample (distinct, strongest first), then what it writes
    towards. A feature that never fired on the sample keeps its output label alone."""
    keep = graph.node_mask[: graph.n_features].nonzero().flatten()
    out: dict[tuple[int, int], str] = {}
    for layer, _, latent in graph.features[keep].tolist():
        if (layer, latent) in out:
            continue
        vals, pos = index.values[layer][:, latent], index.positions[layer][:, latent]
        words: list[str] = []
        for v, p in zip(vals.tolist(), pos.tolist(), strict=True):
            w = word_at(model.tokenizer, index.tokens, int(p)) if v > 0 else ""
            if w and w.lower() not in (x.lower() for x in words):
                words.append(w)
        fires = "fires on " + ", ".join(f"“{w}”" for w in words[:n_words]) if words else ""
        out[(layer, latent)] = " ".join(x for x in (fires, promotes.get((layer, latent), "")) if x)
    return out
