"""What a feature's direction does, read off the weights: logit effects and decoder neighbours.

No data needed: the direction through the final norm and the unembedding (which tokens it
promotes and suppresses), and the nearest other directions by cosine. Not here: statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from aimri.features.basis import FeatureBasis
from aimri.model.adapter import Model


class LogitEffects(NamedTuple):
    promoted: Tensor
    """[F, k] token ids whose logits the direction raises most."""
    promoted_values: Tensor
    suppressed: Tensor
    suppressed_values: Tensor


def decoder_neighbours(basis: FeatureBasis, sel: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """(cosines [S, k], feature ids [S, k]) of the nearest decoder directions; None for the
    residual coordinates (orthogonal axes: every cosine is 0)."""
    if basis.info.kind == "residual" or basis.n_features < 2:
        return None
    W = basis.write_directions().float()
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    vals, ids = [], []
    for chunk in sel.split(1024):
        sims = W[chunk] @ W.T
        sims[torch.arange(len(chunk)), chunk] = -2.0  # not its own neighbour
        top = sims.topk(min(k, basis.n_features - 1), dim=-1)
        vals.append(top.values)
        ids.append(top.indices)
    return torch.cat(vals), torch.cat(ids)


@torch.no_grad()
def logit_effects(model: Model, directions: Tensor, k: int = 10) -> LogitEffects:
    """Direct effect of each direction [F, d_model] on the logits through the final norm and the
    unembedding. A norm rescales a single direction, so the ranking of tokens is exact; the
    values are in logits per unit of the normalised direction."""
    layout = model.layout
    dtype = next(model.hf.parameters()).dtype
    base = layout.unembed(torch.zeros(1, directions.shape[1], device=model.device, dtype=dtype))
    parts: list[LogitEffects] = []
    for chunk in directions.split(256):
        x = chunk.to(model.device, dtype)
        if layout.final_norm is not None:
            x = layout.final_norm(x)
        eff = (layout.unembed(x) - base).float().cpu()
        up, down = eff.topk(k, dim=-1), (-eff).topk(k, dim=-1)
        parts.append(LogitEffects(up.indices, up.values, down.indices, -down.values))
    return LogitEffects(*(torch.cat(t) for t in zip(*parts, strict=True)))
