"""Attention sinks and massive activations: the tokens every statistic leaves out by default.

A few tokens in a transformer's residual stream carry norms tens to hundreds of times the
median ("massive activations", Sun et al. 2024; the attention sinks of Xiao et al. 2023): the
first position, special tokens (BOS, EOS, the document separator) and often the first word of a
document. On SmolLM2-135M at `blocks.15.hook_resid_post` the separator's norm is ~13,500
against a median of 172, and 0.3% of tokens hold ~94% of the variance. Left in, they dominate
every mean-squared metric (FVU, PCA), every baseline that "fires" on them, and every unit
derived from norms (steering strength).

The rule, applied to each chunk of data as it is read (a shard, a forward batch):
- by identity: position 0 and any token id in `special` (BOS, EOS, pad, the separator);
- by norm: any other token whose activation norm, at any of the sites read, exceeds
  `factor × median`. The factor comes from the data: max(MIN_FACTOR, exp(MAD_MULT · σ)), with σ
  the robust spread (1.4826 · MAD) of the chunk's log-norms. Ordinary tokens' log-norms are
  tight (σ ≈ 0.1 mid-network on SmolLM2), so massive ones stand far outside.

Not here: what each stage does with the mask (reader, evaluate, features, steering, probes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from aimri.corpus.contexts import special_tokens

MIN_FACTOR = 5.0
"""A token is never massive below 5× the median norm."""
MAD_MULT = 6.0
"""How many robust standard deviations of log-norm above the median make a token massive."""
MIN_TOKENS = 32
"""Below this many ordinary tokens in a chunk the norm rule is not applied (too few to judge)."""


class SinkMask(NamedTuple):
    sink: Tensor
    """[N] bool: True where the token is left out."""
    by_identity: Tensor
    """[N] bool: position 0 or a special token."""
    median: list[float]
    """Per site read, the median norm of the chunk's non-special tokens."""
    threshold: list[float]
    """Per site, the norm above which a token counts as massive (inf: rule not applied)."""


def special_ids(tokenizer: Any, extra: Iterable[int | None] = ()) -> tuple[int, ...]:
    """Every id the tokenizer calls special (BOS, EOS, pad, unknown...) plus `extra` (e.g. the
    corpus's document separator)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if (v := getattr(tokenizer, name, None)) is not None:
            ids.add(int(v))
    ids.update(int(i) for i in extra if i is not None)
    return tuple(sorted(ids))


def model_special_ids(tokenizer: Any, prepend_bos: bool = True) -> tuple[int, ...]:
    """`special_ids` with the corpus's document separator, as contexts are built for `tokenizer`."""
    return special_ids(tokenizer, [special_tokens(tokenizer, prepend_bos).separator])


def find_sinks(
    tokens: Tensor, positions: Tensor, acts: Sequence[Tensor], special: Sequence[int]
) -> SinkMask:
    """Sinks among N tokens: `tokens`/`positions` [N], `acts` one [N, width] per site read."""
    by_identity = positions == 0
    if len(special):
        by_identity |= torch.isin(tokens, torch.as_tensor(list(special), dtype=tokens.dtype))
    sink = by_identity.clone()
    medians, thresholds = [], []
    for a in acts:
        norms = a.float().norm(dim=-1)
        ordinary = norms[~by_identity]
        if len(ordinary) < MIN_TOKENS:
            medians.append(float(ordinary.median()) if len(ordinary) else float("nan"))
            thresholds.append(float("inf"))
            continue
        med = float(ordinary.median())
        threshold = med * norm_factor(ordinary)
        sink |= norms > threshold
        medians.append(med)
        thresholds.append(threshold)
    return SinkMask(sink, by_identity, medians, thresholds)


def norm_factor(norms: Tensor) -> float:
    """The data-derived multiple of the median beyond which a norm is massive."""
    log_n = norms.clamp_min(1e-12).log()
    sigma = 1.4826 * float((log_n - log_n.median()).abs().median())
    return max(MIN_FACTOR, float(torch.tensor(MAD_MULT * sigma).exp()))


def sinks_in_contexts(
    tokens: Tensor, acts: Sequence[Tensor], special: Sequence[int], exclude: bool = True
) -> Tensor:
    """[B, T] bool: the sinks of whole contexts, `tokens` [B, T] and each of `acts` [B, T, d];
    with `exclude` off, position 0 alone (it has no preceding context to predict from)."""
    B, T = tokens.shape
    positions = torch.arange(T, device=tokens.device).repeat(B)
    if not exclude:
        return (positions == 0).view(B, T)
    flat = [a.reshape(B * T, -1) for a in acts]
    mask = find_sinks(tokens.reshape(-1), positions, flat, special)
    return mask.sink.view(B, T)


def chunk_summary(
    tokens: Tensor, positions: Tensor, acts: dict[str, Tensor], special: Sequence[int]
) -> dict[str, Any]:
    """What the rule leaves out of one chunk, site by site, for a shard's sidecar (merged into
    the store's manifest by `merge_summaries`)."""
    sites: dict[str, Any] = {}
    identity = None
    for site, a in acts.items():
        mask = find_sinks(tokens, positions, [a], special)
        identity = mask.by_identity
        massive = mask.sink & ~mask.by_identity
        counts = Counter(int(t) for t in tokens[massive].tolist())
        sites[site] = {
            "n_massive": int(massive.sum()),
            "median_norm": round(mask.median[0], 4),
            "threshold": round(mask.threshold[0], 4) if mask.threshold[0] != float("inf") else None,
            "massive_tokens": [[t, c] for t, c in counts.most_common(10)],
        }
    n_identity = int(identity.sum()) if identity is not None else 0
    return {
        "n_tokens": len(tokens),
        "n_identity": n_identity,
        "special_ids": list(special),
        "sites": sites,
    }


def merge_summaries(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The store's summary from its shards': counts summed, each site's median norm and
    threshold as the median over shards, its most frequent massive tokens."""
    n = sum(p["n_tokens"] for p in parts)
    sites: dict[str, Any] = {}
    for site in parts[0]["sites"] if parts else []:
        rows = [p["sites"][site] for p in parts]
        counts: Counter[int] = Counter()
        for r in rows:
            counts.update({int(t): int(c) for t, c in r["massive_tokens"]})
        thresholds = [r["threshold"] for r in rows if r["threshold"] is not None]
        n_massive = sum(r["n_massive"] for r in rows)
        sites[site] = {
            "n_massive": n_massive,
            "fraction_massive": n_massive / n if n else 0.0,
            "median_norm": _median([r["median_norm"] for r in rows]),
            "threshold": _median(thresholds) if thresholds else None,
            "massive_tokens": [[t, c] for t, c in counts.most_common(10)],
        }
    n_identity = sum(p["n_identity"] for p in parts)
    return {
        "rule": (
            f"position 0, special ids, or a norm above max({MIN_FACTOR:g}, exp({MAD_MULT:g}σ)) × "
            "the median (σ: robust spread of log-norms)"
        ),
        "special_ids": parts[0]["special_ids"] if parts else [],
        "n_tokens": n,
        "n_identity": n_identity,
        "fraction_identity": n_identity / n if n else 0.0,
        "sites": sites,
    }


def _median(xs: Sequence[float]) -> float:
    return round(float(torch.tensor(xs, dtype=torch.float64).median()), 4)
