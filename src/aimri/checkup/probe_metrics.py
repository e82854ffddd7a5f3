"""The numbers behind concept probes, on plain tensors: AUROC for many scores at once, a
threshold at a false-positive rate, pair splits and folds, correlation.

`auroc_columns` counts pairs (positive above negative, ties one half), so it agrees exactly
with `aimri.features.summary.auroc` and handles the many ties of sparse feature activations.
Not here: models, activations, directions (`probes.py`).
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22
"""Pairwise comparisons held in memory at once by `auroc_columns`."""


def auroc_columns(positive: Tensor, negative: Tensor) -> Tensor:
    """positive [p, k], negative [q, k] → [k]: for each column, P(positive > negative) with
    ties counting one half. nan for columns when either side is empty."""
    p, q = positive.shape[0], negative.shape[0]
    k = positive.shape[1] if positive.dim() == 2 else negative.shape[1]
    if p == 0 or q == 0:
        return torch.full((k,), math.nan)
    pos, neg = positive.double(), negative.double()
    out = torch.empty(k, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // (p * q))
    for c in range(0, k, step):
        a = pos[:, None, c : c + step]  # [p, 1, chunk]
        b = neg[None, :, c : c + step]  # [1, q, chunk]
        wins = (a > b).sum((0, 1)).double() + 0.5 * (a == b).sum((0, 1)).double()
        out[c : c + step] = wins / (p * q)
    return out.float()


def threshold_at_fpr(scores: Tensor, fpr: float) -> float:
    """The smallest observed score t such that at most floor(fpr · n) of `scores` lie strictly
    above it: flagging `score > t` keeps the false-positive rate on these scores ≤ fpr."""
    if scores.numel() == 0:
        raise ValueError("threshold_at_fpr needs at least one score")
    allowed = math.floor(fpr * scores.numel() + 1e-9)
    ranked = scores.flatten().sort(descending=True).values
    return float(ranked[min(allowed, len(ranked) - 1)])


class PairSplit(NamedTuple):
    train: list[int]
    """Pair indices to fit on."""
    test: list[int]
    """Pair indices to measure on (disjoint from train)."""


def split_pairs(n_pairs: int, test_fraction: float, seed: int) -> PairSplit:
    """A seeded split of pair indices: round(test_fraction · n) pairs (at least 1) to test."""
    order = list(range(n_pairs))
    random.Random(seed).shuffle(order)
    n_test = min(n_pairs - 1, max(1, round(test_fraction * n_pairs)))
    return PairSplit(sorted(order[n_test:]), sorted(order[:n_test]))


def cv_folds(items: list[int], k: int) -> list[PairSplit]:
    """k folds over `items` (in the given order): each fold holds out every k-th item."""
    return [
        PairSplit([x for j, x in enumerate(items) if j % k != f], items[f::k]) for f in range(k)
    ]


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two [n] tensors; nan when either is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else math.nan


def standardized_mean_difference(positive: Tensor, negative: Tensor) -> Tensor:
    """positive [p, k], negative [q, k] → [k] (mean_p − mean_q) / pooled sd, the sd floored at
    1e-6 so that a column constant on both sides gives 0, or a large value if the sides differ."""
    diff = positive.float().mean(0) - negative.float().mean(0)
    var = (positive.float().var(0, unbiased=False) + negative.float().var(0, unbiased=False)) / 2
    return diff / var.sqrt().clamp_min(1e-6)
