"""Attention heads by behaviour: previous-token heads and induction heads, for every head.

Both scores are means of attention probabilities, so they lie in [0, 1]; 1 means the head puts
all its attention on the expected key at every query (Olsson et al. 2022, "In-context learning
and induction heads"):
- previous-token score: on natural text, the mean attention from each position q ≥ 1 to q − 1;
- induction score: on [BOS, r, r] with r a sequence of n random tokens, the mean attention from
  each token of the second r to the token right after its earlier occurrence (key q − n + 1).
Patterns come from `Model.run(read=["blocks.*.attn.hook_pattern"])` [batch, head, query, key].
Not here: what heads write (their OV circuits), ablations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.model.sites import parse_site

HeadKind = Literal["induction", "previous_token"]
PATTERNS = "blocks.*.attn.hook_pattern"


class Head(NamedTuple):
    layer: int
    head: int
    score: float


@dataclass(frozen=True)
class HeadScores:
    """Scores of every attention head, [n_layers, n_heads], each in [0, 1]."""

    previous_token: Tensor
    """Mean attention to the previous position, on natural text."""
    induction: Tensor
    """Mean attention to the token after the current token's earlier occurrence, on a random
    sequence repeated twice."""

    def top(self, n: int = 5, kind: HeadKind = "induction") -> list[Head]:
        """The `n` heads with the highest score of `kind`, best first."""
        scores = self.induction if kind == "induction" else self.previous_token
        n_heads = scores.shape[1]
        best = scores.flatten().topk(min(n, scores.numel()))
        return [
            Head(int(i) // n_heads, int(i) % n_heads, float(v))
            for v, i in zip(best.values, best.indices, strict=True)
        ]


def previous_token_score(pattern: Tensor) -> Tensor:
    """[batch, head, query, key] attention probabilities → [head]: mean of pattern[q, q − 1]
    over batch and queries q ≥ 1."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).float().mean(dim=(0, -1))


def induction_score(pattern: Tensor, period: int, start: int = 0) -> Tensor:
    """[batch, head, query, key] on tokens whose positions start..start+period−1 repeat at
    start+period.. → [head]: mean attention from each query of the repeat to the key right after
    the same token's earlier occurrence (q − period + 1)."""
    # diag[..., i] = pattern[..., i + period − 1, i]: query q = i + period − 1 and its key
    # q − period + 1. The repeat's queries q ≥ start + period are the entries i ≥ start + 1.
    diag = pattern.diagonal(offset=1 - period, dim1=-2, dim2=-1)  # [batch, head, Q − period + 1]
    return diag[..., start + 1 :].float().mean(dim=(0, -1))


def repeated_random_tokens(
    model: Model, *, length: int = 64, batch: int = 8, seed: int = 0
) -> Tensor:
    """[batch, 1 + 2·length]: BOS (the tokenizer's, else its EOS), then `length` random
    non-special tokens, then the same tokens again."""
    tok = model.tokenizer
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    ordinary = torch.ones(model.info.vocab_size, dtype=torch.bool)
    ordinary[special[special < model.info.vocab_size]] = False
    pool = ordinary.nonzero().squeeze(1)
    r = pool[torch.randint(len(pool), (batch, length), generator=g)]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise AimriError(
            "the tokenizer has neither BOS nor EOS token, which the induction sequence starts "
            "with: set its bos_token or eos_token"
        )
    return torch.cat([torch.full((batch, 1), int(bos)), r, r], dim=1)


def score_heads(
    model: Model, text_ids: Tensor, *, length: int = 64, batch: int = 8, seed: int = 0
) -> HeadScores:
    """Previous-token scores on `text_ids` [batch, pos] (natural text, e.g. a store's
    contexts), induction scores on `batch` random sequences of `length` tokens repeated twice."""
    if text_ids.ndim != 2 or text_ids.shape[1] < 2:
        raise AimriError(
            f"text_ids has shape {list(text_ids.shape)}: pass natural text as token ids "
            "[batch, pos] with at least 2 positions"
        )
    text = _patterns(model, text_ids)
    repeated = _patterns(
        model, repeated_random_tokens(model, length=length, batch=batch, seed=seed)
    )
    return HeadScores(
        previous_token=torch.stack([previous_token_score(p) for p in text]),
        induction=torch.stack([induction_score(p, length, start=1) for p in repeated]),
    )


def _patterns(model: Model, ids: Tensor) -> list[Tensor]:
    """Per layer, in order: the attention pattern [batch, head, query, key] on the CPU."""
    acts = model.run(ids, read=[PATTERNS], logits=False).acts
    by_layer = sorted(acts.items(), key=lambda kv: parse_site(kv[0]).layer)
    return [p.cpu() for _, p in by_layer]
