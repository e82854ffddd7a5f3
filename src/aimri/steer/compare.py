"""Many steering directions at once, measured the same way: the fair comparison for a feature.

A feature's direction "steers toward its concept" only if it does so beyond what any direction
of the same norm does. This module adds one vector per batch row (`AddRows`), so a feature's
decoder direction, random unit directions and residual-stream neurons (one-hot directions), all
scaled to the same norm, run in one batched forward pass or one batched generation. For each
direction it measures:
- `text_effect`: teacher-forced on fixed texts, with the vector added at every position, the
  log of the mean probability (over the texts' positions, BOS excluded) that the next token is
  one of a concept's tokens (the model's own probability of saying the concept), and the NLL
  of the texts' own next tokens (what the vector costs);
- from generations (greedy, the vector added at every position): the text of each
  continuation and its share of distinct tokens (`distinct_share`).
Not here: choosing the feature and the verdict (`golden_gate.py`), single edits (`edits.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, final

import torch
from torch import Tensor

from aimri.model.adapter import Model, PatchFn
from aimri.steer.edits import Edit, Positions
from aimri.steer.generate import Generation, generate, prompt_ids, right_pad

CHUNK_TOKENS = 1024
"""Tokens per teacher-forced forward pass (bounds the [batch, pos, vocab] logits in memory)."""


@final
@dataclass(frozen=True, eq=False)
class AddRows(Edit):
    """Add row b of `deltas` [B, d_model] to every position of batch row b at `site`."""

    site: str
    deltas: Tensor = field(repr=False)
    positions: Positions = "all"

    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        delta = self.deltas.to(model.device, next(model.hf.parameters()).dtype)

        def add(t: Tensor) -> Tensor:
            return t + delta[:, None, :]

        return {self.site: add}


def random_directions(d_model: int, n: int, seed: int) -> Tensor:
    """[n, d_model] seeded random unit directions."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d_model, generator=g)
    return w / w.norm(dim=-1, keepdim=True)


def aligned_neurons(direction: Tensor, n: int) -> Tensor:
    """[n, d_model] the one-hot neuron directions most aligned with `direction`, each signed
    like it: the best the neuron basis can do toward the same concept."""
    top = direction.abs().topk(n).indices
    out = torch.zeros(n, len(direction))
    out[torch.arange(n), top] = direction[top].sign()
    return out


class TextEffect(NamedTuple):
    concept_logprob: Tensor
    """[R, K] log of the mean probability that the next token is one of concept k's tokens."""
    nll: Tensor
    """[R] mean negative log-likelihood of the texts' own next tokens (the damage)."""


@torch.no_grad()
def text_effect(
    model: Model,
    site: str,
    deltas: Tensor,
    texts: Sequence[str],
    concepts: Sequence[Sequence[int]],
) -> TextEffect:
    """For each added vector in `deltas` [R, d_model], teacher-forced on `texts` (means over
    their real positions but BOS): each concept's log-probability (`concepts`: K lists of
    token ids) and the texts' NLL."""
    padded = right_pad([prompt_ids(model, t) for t in texts])
    ids, real = padded.ids, padded.mask.bool()
    real[:, 0] = False
    n, T = ids.shape
    target = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # next token (last column unused)
    scored = real.clone()
    scored[:, -1] = False
    scored[:, :-1] &= real[:, 1:]  # a position is scored when its next token is real
    per_chunk = max(1, CHUNK_TOKENS // (n * T))
    lp: list[list[float]] = []
    nll: list[float] = []
    for i in range(0, len(deltas), per_chunk):
        rows = deltas[i : i + per_chunk].repeat_interleave(n, 0)  # [r * n, d]
        logits = _run(model, ids.repeat(len(rows) // n, 1), AddRows(site, rows))
        logp = logits.float().log_softmax(-1).cpu().view(-1, n, T, logits.shape[-1])
        own = logp.gather(-1, target.expand(len(logp), n, T)[..., None])[..., 0]  # [r, n, T]
        nll += [-float(o[scored].mean()) for o in own]
        for lp_j in logp:
            p = [lp_j[..., list(c)].logsumexp(-1).exp()[real].mean() for c in concepts]
            lp.append([math.log(max(float(v), 1e-30)) for v in p])
    return TextEffect(torch.tensor(lp).view(len(deltas), len(concepts)), torch.tensor(nll))


def _run(model: Model, ids: Tensor, edit: AddRows) -> Tensor:
    logits = model.run(ids, patch=edit.patches(model)).logits
    assert logits is not None
    return logits


def generate_rows(
    model: Model, site: str, deltas: Tensor, prompts: Sequence[str], max_new_tokens: int
) -> list[list[Generation]]:
    """For each added vector in `deltas` [R, d_model], greedy generations from every prompt
    (one batched generation for all of them)."""
    rows = deltas.repeat_interleave(len(prompts), 0)
    all_prompts = list(prompts) * len(deltas)
    gens = generate(
        model,
        all_prompts,
        [AddRows(site, rows)],
        max_new_tokens=max_new_tokens,
        batch_size=len(all_prompts),
    )
    n = len(prompts)
    return [gens[i * n : (i + 1) * n] for i in range(len(deltas))]
