"""The logit lens: read the residual stream through the final norm and the unembedding.

Per residual site, on a sample of stored tokens: how often the lens's top token is the actual
next token, the cross-entropy of the next token, and agreement with the model's own top
prediction. Plus a table of the top token per layer for a few prompts.
Not here: statistics that need no weights (`stats.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aimri.model.adapter import Model
from aimri.model.sites import RESIDUAL_KINDS, parse_site
from aimri.store.reader import ActivationStore


@dataclass(frozen=True)
class LensLayer:
    site: str
    next_token_accuracy: float
    next_token_ce: float
    agreement_with_model: float
    """Share of tokens where the lens's top token equals the model's own top prediction."""


@dataclass(frozen=True)
class LensTable:
    prompt: str
    sites: list[str]
    top_tokens: list[list[str]]
    """Per site, the lens's top tokens at the prompt's last position."""
    model_top: list[str]
    target_prob: list[float] | None = None
    """Per site, the lens's probability of a chosen token (when one was asked for)."""


def residual_sites(sites: list[str]) -> list[str]:
    return [s for s in sites if parse_site(s).kind in RESIDUAL_KINDS]


@torch.inference_mode()
def lens_logits(model: Model, resid: Tensor) -> Tensor:
    """[..., d_model] residual → [..., vocab] logits through the final norm and LM head."""
    x = resid.to(model.device, next(model.hf.parameters()).dtype)
    if model.layout.final_norm is not None:
        x = model.layout.final_norm(x)
    return model.layout.unembed(x).float()


@torch.inference_mode()
def lens_over_store(
    model: Model, store: ActivationStore, sample: int = 512, seed: int = 0
) -> list[LensLayer]:
    """Logit-lens quality by layer on `sample` stored tokens that have a next token."""
    sites = residual_sites(store.sites)
    if not sites:
        return []
    tokens = store.tokens().long()
    positions = torch.cat([store.load("positions", i) for i in range(store.n_shards)]).long()
    ctx_len = int(store.identity["ctx_len"])
    usable = torch.nonzero((positions > 0) & (positions < ctx_len - 1)).squeeze(1)
    g = torch.Generator().manual_seed(seed)
    idx = usable[torch.randperm(len(usable), generator=g)[:sample]].sort().values
    targets = tokens[idx + 1].to(model.device)
    resid = {s: _gather_rows(store, s, idx) for s in sites}
    last = f"blocks.{model.info.n_layers - 1}.hook_resid_post"
    if last in resid:  # the lens of the last block's output is the model's own output
        final = lens_logits(model, resid[last]).argmax(-1)
    else:
        final = _model_top(model, idx, tokens, ctx_len)
    out = []
    for s in sites:
        logits = lens_logits(model, resid[s])
        out.append(
            LensLayer(
                site=s,
                next_token_accuracy=float((logits.argmax(-1) == targets).float().mean()),
                next_token_ce=float(torch.nn.functional.cross_entropy(logits, targets)),
                agreement_with_model=float((logits.argmax(-1) == final).float().mean()),
            )
        )
    return out


@torch.inference_mode()
def lens_table(
    model: Model, prompt: str, sites: list[str], k: int = 1, target: int | None = None
) -> LensTable:
    """The lens's top-k tokens at the prompt's last position after each site, and with
    `target` (a token id) its probability there."""
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    run = model.run(ids, read=sites)
    assert run.logits is not None
    decode = model.tokenizer.decode
    tops, probs = [], []
    for s in sites:
        logits = lens_logits(model, run.acts[s][0, -1])
        tops.append([decode([int(i)]) for i in logits.topk(k).indices])
        if target is not None:
            probs.append(float(logits.float().softmax(-1)[target]))
    model_top = [decode([int(i)]) for i in run.logits[0, -1].topk(k).indices]
    return LensTable(prompt, sites, tops, model_top, probs if target is not None else None)


def _gather_rows(store: ActivationStore, site: str, idx: Tensor) -> Tensor:
    rows, start = [], 0
    for shard in store.iter_shards(site):
        local = idx[(idx >= start) & (idx < start + len(shard))] - start
        rows.append(shard[local])
        start += len(shard)
    return torch.cat(rows)


def _model_top(model: Model, idx: Tensor, tokens: Tensor, ctx_len: int, batch: int = 16) -> Tensor:
    """The model's own top next-token prediction at the sampled positions."""
    contexts = tokens.view(-1, ctx_len)
    rows, pos = idx // ctx_len, idx % ctx_len
    out = torch.empty(len(idx), dtype=torch.long)
    for chunk in rows.unique().split(batch):
        logits = model.run(contexts[chunk]).logits
        assert logits is not None
        top = logits.argmax(-1).cpu()  # [len(chunk), ctx_len]
        for j, c in enumerate(chunk.tolist()):
            mask = rows == c
            out[mask] = top[j, pos[mask]]
    return out.to(model.device)
