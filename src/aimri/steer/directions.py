"""Steering directions from data rather than a dictionary: difference of means, linear probe.

Both read each text's mean activation at a site over its tokens, BOS excluded (texts get the
corpus's BOS prefix, as prompts do in `generate.py`). `site_norm` gives the site's mean
activation norm, the natural unit for `AddDirection.scale`. The model-free halves
(`mean_difference`, `fit_probe`) work on any [n, d] activations.
Not here: applying a direction (`edits.py`), judging whether it steers (`sweep.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.generate import prompt_ids, right_pad

BATCH = 16


@torch.no_grad()
def mean_activations(
    model: Model, site: str, texts: Sequence[str], batch_size: int = BATCH
) -> Tensor:
    """[n_texts, d]: each text's activation at `site` averaged over its tokens (BOS excluded),
    float32 on the CPU."""
    site_acts = token_activations(model, site, texts, batch_size)
    return torch.stack([a.mean(0) for a in site_acts])


@torch.no_grad()
def token_activations(
    model: Model, site: str, texts: Sequence[str], batch_size: int = BATCH
) -> list[Tensor]:
    """Per text, [n_tokens, d] activations at `site` without the BOS position (float32 CPU)."""
    if len(model.expand_sites([site])) != 1:
        raise AimriError(f"'{site}' names several sites: name one, e.g. 'blocks.3.hook_resid_post'")
    seqs = [prompt_ids(model, t) for t in texts]
    if any(len(s) < 2 for s in seqs):
        raise AimriError("every text needs at least one token besides BOS: drop empty texts")
    out: list[Tensor] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        ids = right_pad(chunk).ids
        acts = model.run(ids, read=[site], logits=False).acts[site].float().cpu()
        out += [acts[j, 1 : len(s)] for j, s in enumerate(chunk)]
    return out


def site_norm(model: Model, site: str, texts: Sequence[str]) -> float:
    """Mean L2 norm of the site's activation over the texts' tokens (BOS excluded)."""
    acts = torch.cat(token_activations(model, site, texts))
    return float(acts.norm(dim=-1).mean())


def diff_of_means(
    model: Model, site: str, positive_texts: Sequence[str], negative_texts: Sequence[str]
) -> Tensor:
    """[d] mean(positive) − mean(negative) of the texts' mean activations: points from the
    negative texts toward the positive ones; its length is the distance between the means."""
    return mean_difference(
        mean_activations(model, site, positive_texts), mean_activations(model, site, negative_texts)
    )


def mean_difference(positive: Tensor, negative: Tensor) -> Tensor:
    """positive [n, d], negative [m, d] → [d] difference of their means."""
    if len(positive) == 0 or len(negative) == 0:
        raise AimriError("a difference of means needs at least one positive and one negative text")
    return positive.float().mean(0) - negative.float().mean(0)


def probe_direction(
    model: Model,
    site: str,
    texts: Sequence[str],
    labels: Sequence[int | bool],
    *,
    l2: float = 1e-3,
    steps: int = 100,
) -> Tensor:
    """[d] unit weight vector of an L2-regularised logistic regression from the texts' mean
    activations to `labels` (1 = the concept): points toward label 1."""
    acts = mean_activations(model, site, texts)
    return fit_probe(acts, torch.as_tensor([float(y) for y in labels]), l2=l2, steps=steps)


def fit_probe(acts: Tensor, labels: Tensor, *, l2: float = 1e-3, steps: int = 100) -> Tensor:
    """acts [n, d], labels [n] (0/1) → [d]: logistic regression (full-batch L-BFGS) on the
    activations centred and scaled by one number (so `l2` means the same at every site);
    returns the unit weight vector in activation space, pointing toward label 1."""
    y = labels.float()
    if len(acts) != len(y):
        raise AimriError(f"{len(acts)} texts but {len(y)} labels: give one label per text")
    if not bool(((y == 0) | (y == 1)).all()) or y.min() == y.max():
        raise AimriError("probe labels must be 0 or 1, with at least one of each")
    x = acts.float()
    x = x - x.mean(0)
    scale = x.norm(dim=-1).mean().clamp_min(1e-8)
    x = x / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(loss_fn)  # type: ignore[arg-type]
    # logit = w·(x − μ)/scale + b: the unscaled direction is w's own.
    return w.detach() / w.detach().norm().clamp_min(1e-12)
