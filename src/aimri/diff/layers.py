"""Per-layer results of a model diff: the residual change, its logit lens, and steering with it.

From the streamed `LayerMoments` (`stats.py`): per layer the relative change, the mean
difference δ_L read through A's final norm and unembedding (`aimri.features.effects`, the same
reading as a feature's logit effects), and for a few layers `steer_recovery`:
1 − KL(B‖A+δ_L) / KL(B‖A) with δ_L added to A's residual stream at every position but BOS
(`aimri.steer.edits.AddDirection`). 1 means adding the mean difference reproduces B's outputs;
0 means it explains nothing; below 0 it moves A away from B.
Not here: the forward pass that gathers the moments (`models.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from aimri.corpus.text import TokenText
from aimri.diff.stats import (
    LayerMoments,
    TokenScore,
    Tolerances,
    text_batches,
    token_kl,
    token_scores,
)
from aimri.features.effects import logit_effects
from aimri.model.adapter import Model
from aimri.steer.edits import AddDirection, steering

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDiff:
    layer: int
    site: str
    rel_change: float
    """Mean over tokens of ||h_B − h_A|| / ||h_A||."""
    mean_diff_rel: float
    """||δ_L|| / mean ||h_A||, δ_L = mean of h_B − h_A."""
    mean_cosine: float
    changed: bool
    """rel_change above the tolerance; unchanged layers list no tokens."""
    promoted: list[TokenScore]
    """Tokens δ_L raises most through A's final norm and unembedding (logits per unit of the
    normalised direction)."""
    suppressed: list[TokenScore]
    steer_recovery: float | None
    """1 − KL(B‖A+δ_L) / KL(B‖A) on the first `steer_texts` texts; None: not measured."""
    kl_steered: float | None
    """KL(B‖A+δ_L) there, nats per token."""


def steer_choice(m: LayerMoments, tol: Tolerances, k: int) -> list[int]:
    """The k changed layers with the largest ||δ_L|| relative to mean ||h_A||, in order."""
    rel = m.mean_diff.norm(dim=-1) / m.mean_norm_a.clamp_min(1e-12)
    order = rel.argsort(descending=True).tolist()
    return sorted(L for L in order[:k] if float(m.rel_change[L]) > tol.rel_change)


def layer_diffs(
    base: Model,
    m: LayerMoments,
    recovery: dict[int, tuple[float, float]],
    tol: Tolerances,
    top_k: int,
) -> list[LayerDiff]:
    out = []
    for L in range(len(m.rel_change)):
        changed = float(m.rel_change[L]) > tol.rel_change
        lens = _lens(base, m.mean_diff[L], top_k) if changed else ([], [])
        rec = recovery.get(L)
        out.append(
            LayerDiff(
                layer=L,
                site=f"blocks.{L}.hook_resid_post",
                rel_change=float(m.rel_change[L]),
                mean_diff_rel=float(m.mean_diff[L].norm() / m.mean_norm_a[L].clamp_min(1e-12)),
                mean_cosine=float(m.mean_cos[L]),
                changed=changed,
                promoted=lens[0],
                suppressed=lens[1],
                steer_recovery=None if rec is None else rec[0],
                kl_steered=None if rec is None else rec[1],
            )
        )
    return out


def _lens(model: Model, delta: Tensor, k: int) -> tuple[list[TokenScore], list[TokenScore]]:
    """(promoted, suppressed) tokens of the direction delta [d]; empty for a zero vector."""
    if float(delta.norm()) == 0:
        return [], []
    eff = logit_effects(model, delta[None], k)
    text = TokenText(model.tokenizer)
    return (
        token_scores(text, eff.promoted[0], eff.promoted_values[0]),
        token_scores(text, eff.suppressed[0], eff.suppressed_values[0]),
    )


@torch.no_grad()
def steer_recovery(
    base: Model,
    other: Model,
    seqs: Sequence[list[int]],
    kl_before: float,
    m: LayerMoments,
    layers: Sequence[int],
    vocab: int,
    batch_size: int = 8,
) -> dict[int, tuple[float, float]]:
    """Layer → (recovery, KL(B‖A+δ_L)) on `seqs`, given KL(B‖A) = `kl_before` on them."""
    sums = dict.fromkeys(layers, 0.0)
    count = 0
    for b in text_batches(seqs, batch_size):
        lb = other.run(b.ids).logits
        assert lb is not None
        lb = lb[b.mask.to(lb.device)][:, :vocab]
        for L in layers:
            delta = m.mean_diff[L]
            edit = AddDirection(
                f"blocks.{L}.hook_resid_post", delta, float(delta.norm()), positions="generated"
            )
            with steering(base, [edit], prompt_len=1):  # position 0 (BOS) is left alone
                la = base.run(b.ids).logits
            assert la is not None
            sums[L] += float(token_kl(lb, la[b.mask.to(la.device)][:, :vocab]).double().sum())
        count += int(b.mask.sum())
    log.info("diff: steered A with δ_L at layers %s on %d texts", list(layers), len(seqs))
    return {L: (1 - (s / count) / kl_before, s / count) for L, s in sums.items()}
