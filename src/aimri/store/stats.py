"""Activation statistics per site, streamed shard by shard from a store (bounded memory).

Per site: norm quantiles, norm by position, the BOS token's norm against the rest, outlier
("massive activation") dimensions, and the cosine between consecutive residual sites.
Not here: anything needing the model's weights (`lens.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aimri.model.sites import RESIDUAL_KINDS, parse_site
from aimri.store.reader import ActivationStore

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


@dataclass(frozen=True)
class SiteStats:
    site: str
    n_tokens: int
    norm_mean: float
    norm_quantiles: dict[str, float]
    """Quantiles of the per-token L2 norm, excluding position 0 (keys 'p1', 'p10', ...)."""
    bos_norm_ratio: float
    """Mean norm at position 0 over the median norm elsewhere (attention sinks show here)."""
    norm_by_position: list[float]
    """Mean norm at each position of the context."""
    top_dims: list[tuple[int, float]]
    """Dimensions with the largest mean |activation|, with that mean over the median dim's."""
    cos_with_previous: float | None
    """Mean cosine, token by token, with the previous residual site in the store."""


def site_statistics(store: ActivationStore, sites: list[str] | None = None) -> list[SiteStats]:
    sites = sites or store.sites
    positions = torch.cat([store.load("positions", i) for i in range(store.n_shards)]).long()
    residual = [s for s in sites if parse_site(s).kind in RESIDUAL_KINDS]
    out: list[SiteStats] = []
    for site in sites:
        prev = residual[residual.index(site) - 1] if site in residual[1:] else None
        out.append(_one_site(store, site, positions, prev))
    return out


def _one_site(
    store: ActivationStore, site: str, positions: torch.Tensor, prev: str | None
) -> SiteStats:
    norms, abs_sum, cos_sum = [], None, 0.0
    for i in range(store.n_shards):
        x = store.load(site, i).float()  # [n, d]
        norms.append(x.norm(dim=-1))
        a = x.abs().sum(0)
        abs_sum = a if abs_sum is None else abs_sum + a
        if prev is not None:
            cos_sum += torch.cosine_similarity(x, store.load(prev, i).float(), dim=-1).sum().item()
    norm = torch.cat(norms)
    assert abs_sum is not None
    rest = norm[positions != 0]
    q = torch.quantile(rest[: 1 << 20], torch.tensor(QUANTILES))
    ctx_len = int(positions.max()) + 1
    by_pos = torch.zeros(ctx_len).index_add_(0, positions, norm) / torch.bincount(
        positions, minlength=ctx_len
    )
    mean_abs = abs_sum / len(norm)
    top = torch.topk(mean_abs, k=min(5, len(mean_abs)))
    median_dim = float(mean_abs.median()) or 1.0
    return SiteStats(
        site=site,
        n_tokens=len(norm),
        norm_mean=float(rest.mean()),
        norm_quantiles={f"p{round(p * 100)}": float(v) for p, v in zip(QUANTILES, q, strict=True)},
        bos_norm_ratio=float(norm[positions == 0].mean() / rest.median()),
        norm_by_position=[round(float(v), 4) for v in by_pos],
        top_dims=[
            (int(i), float(v) / median_dim) for v, i in zip(top.values, top.indices, strict=True)
        ],
        cos_with_previous=cos_sum / len(norm) if prev is not None else None,
    )
