"""Words on a graph's nodes, computed from weights: what each feature writes towards.

A transcoder feature at any layer writes its decoder row into the residual stream; read
through the final norm's gain and the unembedding (the logit lens of a direction), that row
promotes some output tokens over others. `logit_labels` names each kept feature by the tokens
it promotes most, and `supernodes` groups kept features at the same position that promote the
same token, the way a person would group them by hand. Both are computed, never written by
hand; labels from the features pipeline (`aimri features`) replace them where present.
Not here: the graph itself (`graph.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

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
