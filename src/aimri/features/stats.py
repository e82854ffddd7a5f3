"""Feature statistics, streamed in bounded memory: two passes over whole contexts.

Pass 1 (every context): firing counts and sums for all features; for the analysed ones a
log-spaced activation histogram, the top contexts by maximum activation, a uniform reservoir of
activating contexts (for examples across quantile buckets), and co-occurrence counts when codes
are sparse. Memory: O(features × (top + reservoir + bins)), whatever the corpus size.
Pass 2 (only contexts some example needs): token-level activations → example windows, random
and hard negatives. Logit effects and neighbours come from `effects.py`. Sinks (position 0,
special tokens, massive activations: the source's `sink` mask) never count.
Not here: labels, scores, storage (`explain.py`, `score.py`, `catalog.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aimri.corpus.text import TokenText
from aimri.errors import AimriError
from aimri.features.basis import FeatureBasis
from aimri.features.effects import LogitEffects, decoder_neighbours, logit_effects
from aimri.features.records import (
    Example,
    ExampleKind,
    FeatureSet,
    FeatureStats,
    Neighbour,
    TokenEffect,
)
from aimri.features.sources import ContextSource
from aimri.model.adapter import Model

log = logging.getLogger(__name__)
HIST_LO, HIST_HI, HIST_BINS = -4.0, 4.0, 64  # log10 of activation values
SPARSE_CODES = 64  # co-occurrence is counted only when tokens have at most this many active


@dataclass(frozen=True, kw_only=True)
class ExampleSpec:
    """How many examples of each kind to keep per feature, and their window."""

    n_top: int = 20
    n_buckets: int = 10
    """Activation deciles of the firing contexts, sampled alike (as delphi does), so that held-out
    positives span weak activations as well as strong ones."""
    per_bucket: int = 4
    n_random_negative: int = 12
    n_hard_negative: int = 8
    window: int = 32
    after: int = 4
    """Tokens kept after the maximum in a window (the rest come before it)."""
    reservoir: int = 60
    n_logits: int = 10
    n_neighbours: int = 8
    seed: int = 0


def feature_statistics(
    basis: FeatureBasis,
    model: Model,
    source: ContextSource,
    *,
    features: Sequence[int] | None = None,
    spec: ExampleSpec = ExampleSpec(),
) -> FeatureSet:
    """Statistics of `features` (default all) of `basis` over every context of `source`."""
    basis.check_fits(model)
    sel = _selection(basis, features)
    p1 = _first_pass(basis, source, sel, spec)
    neighbours = decoder_neighbours(basis, sel, spec.n_neighbours)
    plan = _plan_examples(p1, sel, neighbours, source.n_contexts, spec)
    text = TokenText(model.tokenizer)
    examples = _second_pass(basis, source, sel, plan, spec, text)
    effects = logit_effects(model, basis.write_directions()[sel], spec.n_logits)
    records = [_record(j, sel, p1, examples[j], effects, neighbours, text) for j in range(len(sel))]
    density = p1.fire_count / max(p1.n_tokens, 1)
    alive = density[density > 0]
    counts, edges = torch.histogram(alive.log10().double(), bins=30, range=(-7.0, 0.0))
    return FeatureSet(
        basis=basis.info,
        features=records,
        n_tokens=p1.n_tokens,
        dead_fraction=float((density == 0).float().mean()),
        density_hist_edges=[round(float(e), 4) for e in edges],
        density_hist_counts=[int(c) for c in counts],
    )


def _selection(basis: FeatureBasis, features: Sequence[int] | None) -> Tensor:
    if features is None:
        return torch.arange(basis.n_features)
    sel = torch.as_tensor(list(features), dtype=torch.long)
    bad = sel[(sel < 0) | (sel >= basis.n_features)]
    if len(bad):
        raise AimriError(
            f"feature index {int(bad[0])} is out of range: {basis.info.name} has features "
            f"0-{basis.n_features - 1}"
        )
    return sel


@dataclass
class _FirstPass:
    n_tokens: int
    fire_count: Tensor  # [F] all features
    act_sum: Tensor  # [F] all features
    hist: Tensor  # [S, bins] selected features
    top_vals: Tensor  # [K, S] max activation of the top contexts
    top_ids: Tensor  # [K, S] their context ids
    res_keys: Tensor  # [R, S] reservoir keys (-1: empty)
    res_vals: Tensor
    res_ids: Tensor
    cooc: Tensor | None  # [S, S] tokens on which both fire


@torch.no_grad()
def _first_pass(basis: FeatureBasis, source: ContextSource, sel: Tensor, spec: ExampleSpec):
    F, S = basis.n_features, len(sel)
    K, R = spec.n_top, spec.reservoir
    p = _FirstPass(
        n_tokens=0,
        fire_count=torch.zeros(F, dtype=torch.long),
        act_sum=torch.zeros(F, dtype=torch.float64),
        hist=torch.zeros(S, HIST_BINS, dtype=torch.long),
        top_vals=torch.full((K, S), -math.inf),
        top_ids=torch.full((K, S), -1, dtype=torch.long),
        res_keys=torch.full((R, S), -1.0),
        res_vals=torch.zeros(R, S),
        res_ids=torch.full((R, S), -1, dtype=torch.long),
        cooc=torch.zeros(S, S, dtype=torch.long) if S <= 16384 else None,
    )
    g = torch.Generator().manual_seed(spec.seed)
    for batch in tqdm(source, desc=f"statistics {basis.info.name}", unit="batch", leave=False):
        B, T, _ = batch.acts.shape
        ordinary = ~batch.sink  # [B, T]: sinks never count
        a = basis.activations(batch.acts[ordinary]).cpu()  # [N, F]
        fired = a > 0
        p.n_tokens += len(a)
        p.fire_count += fired.sum(0)
        p.act_sum += a.clamp_min(0).sum(0, dtype=torch.float64)
        a_sel = a[:, sel]
        _add_histogram(p.hist, a_sel)
        by_pos = torch.zeros(B, T, S)
        by_pos[ordinary] = a_sel
        per_ctx = by_pos.amax(1).clamp_min(0)  # [B, S]
        _update_top(p, per_ctx, batch.ids, K)
        _update_reservoir(p, per_ctx, batch.ids, R, g)
        if p.cooc is not None:
            p.cooc = _add_cooccurrence(p.cooc, fired[:, sel])
    if p.n_tokens == 0:
        raise AimriError(f"the source of '{source.site}' holds no tokens: collect some first")
    return p


def _add_histogram(hist: Tensor, a: Tensor) -> None:
    S = a.shape[1]
    pos = a > 0
    cols = torch.arange(S).expand_as(a)[pos]
    scaled = (a[pos].log10() - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS
    bins = scaled.long().clamp(0, HIST_BINS - 1)
    hist += torch.bincount(cols * HIST_BINS + bins, minlength=S * HIST_BINS).view(S, HIST_BINS)


def _update_top(p: _FirstPass, per_ctx: Tensor, ids: Tensor, K: int) -> None:
    vals = torch.cat([p.top_vals, per_ctx])
    cand = torch.cat([p.top_ids, ids[:, None].expand_as(per_ctx)])
    top = vals.topk(min(K, len(vals)), dim=0)
    p.top_vals, p.top_ids = top.values, cand.gather(0, top.indices)


def _update_reservoir(
    p: _FirstPass, per_ctx: Tensor, ids: Tensor, R: int, g: torch.Generator
) -> None:
    """Uniform sample without replacement of activating contexts: keep the R largest random
    keys (a context that does not fire gets key -1 and is never kept)."""
    keys = torch.rand(per_ctx.shape, generator=g)
    keys = torch.where(per_ctx > 0, keys, torch.full_like(keys, -1.0))
    all_keys = torch.cat([p.res_keys, keys])
    top = all_keys.topk(R, dim=0)
    p.res_keys = top.values
    p.res_vals = torch.cat([p.res_vals, per_ctx]).gather(0, top.indices)
    p.res_ids = torch.cat([p.res_ids, ids[:, None].expand_as(per_ctx)]).gather(0, top.indices)


def _add_cooccurrence(cooc: Tensor, fired: Tensor) -> Tensor | None:
    """cooc[i, j] += tokens where features i and j both fire; None when codes are dense."""
    n_active = fired.sum(1)
    if len(n_active) and float(n_active.float().mean()) > SPARSE_CODES:
        return None  # dense bases (neurons, random): co-occurrence says nothing
    S = fired.shape[1]
    tok, feat = fired.nonzero(as_tuple=True)
    if len(tok) == 0:
        return cooc
    m = int(n_active.max())
    # Pad every token's active features to m slots, then count all pairs per token.
    slot = torch.arange(len(tok)) - torch.repeat_interleave(n_active.cumsum(0) - n_active, n_active)
    padded = torch.full((len(fired), m), S, dtype=torch.long)
    padded[tok, slot] = feat
    pairs = padded[:, :, None] * (S + 1) + padded[:, None, :]
    counts = torch.bincount(pairs.flatten(), minlength=(S + 1) ** 2).view(S + 1, S + 1)
    return cooc + counts[:S, :S]


class _Request(NamedTuple):
    column: int
    """The selected feature the window is for."""
    kind: ExampleKind
    bucket: int
    peak: int
    """Feature whose maximum centres the window: -1 for the feature itself; a neighbour's id
    for hard negatives (kept only where the feature is silent)."""


class _Plan(NamedTuple):
    requests: dict[int, list[_Request]]
    """context id → the windows to cut from that context."""
    negatives: list[int]
    """A shared pool of random contexts; each feature takes windows where it is silent."""


def _plan_examples(
    p: _FirstPass,
    sel: Tensor,
    neighbours: tuple[Tensor, Tensor] | None,
    n_contexts: int,
    spec: ExampleSpec,
) -> _Plan:
    g = torch.Generator().manual_seed(spec.seed + 1)
    requests: dict[int, list[_Request]] = {}
    column_of = {int(f): j for j, f in enumerate(sel.tolist())}
    for j in range(len(sel)):
        for v, c in zip(p.top_vals[:, j].tolist(), p.top_ids[:, j].tolist(), strict=True):
            if v > 0:
                requests.setdefault(c, []).append(_Request(j, "top", 0, -1))
        # Quantile examples come from contexts other than the top ones, so that a context an
        # explainer saw as a top example is never a held-out example as well.
        top_ctx = p.top_ids[:, j][p.top_vals[:, j] > 0]
        filled = (p.res_keys[:, j] >= 0) & ~torch.isin(p.res_ids[:, j], top_ctx)
        vals, ids = p.res_vals[filled, j], p.res_ids[filled, j]
        order = vals.argsort(descending=True)
        for b, chunk in enumerate(order.tensor_split(spec.n_buckets), start=1):
            pick = chunk[torch.randperm(len(chunk), generator=g)[: spec.per_bucket]]
            for c in ids[pick].tolist():
                requests.setdefault(c, []).append(_Request(j, "quantile", b, -1))
        for n, c in _hard_candidates(p, j, neighbours, column_of, spec.n_hard_negative):
            requests.setdefault(c, []).append(_Request(j, "hard_negative", 0, n))
    n_pool = min(n_contexts, 4 * spec.n_random_negative)
    negatives = torch.randperm(n_contexts, generator=g)[:n_pool].tolist()
    for c in negatives:
        requests.setdefault(c, [])
    return _Plan(requests, negatives)


def _hard_candidates(
    p: _FirstPass,
    j: int,
    neighbours: tuple[Tensor, Tensor] | None,
    column_of: dict[int, int],
    n: int,
) -> list[tuple[int, int]]:
    """(neighbour feature, context) pairs: the top contexts of the nearest analysed neighbours."""
    if neighbours is None:
        return []
    out: list[tuple[int, int]] = []
    for f in neighbours[1][j].tolist():
        col = column_of.get(int(f))
        if col is None:
            continue
        top = [
            c
            for v, c in zip(p.top_vals[:2, col].tolist(), p.top_ids[:2, col].tolist(), strict=True)
            if v > 0
        ]
        out += [(int(f), c) for c in top]
    return out[:n]


@torch.no_grad()
def _second_pass(
    basis: FeatureBasis,
    source: ContextSource,
    sel: Tensor,
    plan: _Plan,
    spec: ExampleSpec,
    text: TokenText,
) -> list[list[Example]]:
    """Per selected feature, its example windows (top, quantile, negatives)."""
    S = len(sel)
    out: list[list[Example]] = [[] for _ in range(S)]
    negative_pool: list[tuple[int, list[int], Tensor]] = []  # (context, tokens, acts [T, S])
    wanted = set(plan.requests)
    for batch in source:
        keep = [i for i, c in enumerate(batch.ids.tolist()) if c in wanted]
        if not keep:
            continue
        acts = batch.acts[keep]
        B, T, _ = acts.shape
        full = basis.activations(acts.reshape(B * T, -1)).cpu().view(B, T, -1)
        full[batch.sink[keep]] = 0  # sinks never count
        a = full[:, :, sel]
        for row, i in enumerate(keep):
            c = int(batch.ids[i])
            tokens = batch.tokens[i].tolist()
            for r in plan.requests[c]:
                own = a[row, :, r.column]
                if r.peak < 0:
                    out[r.column].append(_window(own, tokens, c, r.kind, r.bucket, spec, text))
                    continue
                at = int(full[row, :, r.peak].argmax())
                w = _window(own, tokens, c, r.kind, 0, spec, text, at=at)
                if not w.active:
                    out[r.column].append(w)
            if c in plan.negatives:
                negative_pool.append((c, tokens, a[row]))
    _add_random_negatives(out, negative_pool, spec, text)
    order = {"top": 0, "quantile": 1, "hard_negative": 2, "random_negative": 3}
    for examples in out:
        examples.sort(key=lambda e: (order[e.kind], e.bucket, -e.max_act))
    return out


def _window(
    acts: Tensor,
    tokens: list[int],
    context: int,
    kind: ExampleKind,
    bucket: int,
    spec: ExampleSpec,
    text: TokenText,
    at: int | None = None,
) -> Example:
    """A window of `spec.window` tokens around the maximum (or around `at`)."""
    T = len(tokens)
    peak = int(acts.argmax()) if at is None else at
    start = max(1, min(peak - (spec.window - spec.after) + 1, T - spec.window))
    end = min(T, start + spec.window)
    vals = [round(float(v), 4) for v in acts[start:end].clamp_min(0)]
    return Example(text(tokens[start:end]), vals, context, start, kind, bucket)


def _add_random_negatives(
    out: list[list[Example]],
    pool: list[tuple[int, list[int], Tensor]],
    spec: ExampleSpec,
    text: TokenText,
) -> None:
    """Random windows where the feature is quietest: silent ones when there are enough (sparse
    features); otherwise, for dense directions that fire somewhere in every window (neurons,
    random directions), the windows with the lowest maximum."""
    g = torch.Generator().manual_seed(spec.seed + 2)
    tries = 4
    for j, examples in enumerate(out):
        candidates: list[tuple[float, int, int, list[int], Tensor]] = []
        for n, (_, tokens, a) in enumerate(pool):
            T = len(tokens)
            for t in range(tries):
                at = int(torch.randint(1, T, (1,), generator=g))
                lo = max(1, min(at - (spec.window - spec.after) + 1, T - spec.window))
                peak = float(a[lo : lo + spec.window, j].max())
                candidates.append((max(peak, 0.0), t * len(pool) + n, at, tokens, a[:, j]))
        candidates.sort(key=lambda x: (x[0], x[1]))
        for _, key, at, tokens, acts in candidates[: spec.n_random_negative]:
            c = pool[key % len(pool)][0]
            examples.append(_window(acts, tokens, c, "random_negative", 0, spec, text, at=at))


def _record(
    j: int,
    sel: Tensor,
    p: _FirstPass,
    examples: list[Example],
    effects: LogitEffects,
    neighbours: tuple[Tensor, Tensor] | None,
    text: TokenText,
) -> FeatureStats:
    f = int(sel[j])
    fires = int(p.fire_count[f])
    hist = p.hist[j]
    edges = 10 ** torch.linspace(HIST_LO, HIST_HI, HIST_BINS + 1)
    return FeatureStats(
        index=f,
        density=fires / p.n_tokens,
        max_act=round(max(float(p.top_vals[0, j]), 0.0), 4),
        mean_act=round(float(p.act_sum[f]) / fires, 4) if fires else 0.0,
        quantiles={f"p{q}": _quantile(hist, edges, q / 100) for q in (50, 90, 99)},
        hist_edges=[float(f"{e:.4g}") for e in edges.tolist()],
        hist_counts=[int(c) for c in hist],
        examples=examples,
        promoted=_effects(text, effects.promoted[j], effects.promoted_values[j]),
        suppressed=_effects(text, effects.suppressed[j], effects.suppressed_values[j]),
        neighbours=_pairs(neighbours, j),
        cooccurring=_cooccurring(p, sel, j),
    )


def _quantile(hist: Tensor, edges: Tensor, q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return 0.0
    b = int(torch.searchsorted(hist.cumsum(0), torch.tensor(q * total)))
    return float(f"{float((edges[b] * edges[b + 1]).sqrt()):.4g}")  # geometric bin centre


def _effects(text: TokenText, ids: Tensor, vals: Tensor) -> list[TokenEffect]:
    return [
        TokenEffect(t, round(float(v), 4))
        for t, v in zip(text(ids.tolist()), vals.tolist(), strict=True)
    ]


def _pairs(neighbours: tuple[Tensor, Tensor] | None, j: int) -> list[Neighbour]:
    if neighbours is None:
        return []
    vals, ids = neighbours
    return [
        Neighbour(int(i), round(float(v), 4))
        for v, i in zip(vals[j].tolist(), ids[j].tolist(), strict=True)
    ]


def _cooccurring(p: _FirstPass, sel: Tensor, j: int, k: int = 8) -> list[Neighbour]:
    """Jaccard of firing sets among the analysed features."""
    if p.cooc is None:
        return []
    both = p.cooc[j].double()
    either = p.cooc.diagonal().double() + p.cooc[j, j] - both
    jac = torch.where(either > 0, both / either.clamp_min(1), torch.zeros_like(both))
    jac[j] = 0
    top = jac.topk(min(k, len(jac)))
    return [Neighbour(int(sel[i]), round(float(v), 4)) for v, i in zip(*top, strict=True) if v > 0]
