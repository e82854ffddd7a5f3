"""The base model's dictionary read on both models: which features change, and does it still fit.

The dictionary (trained on model A) encodes A's and B's activations at its site on the same
tokens. Per feature: firing rate and mean activation in each model, and two numbers for the
change, both computed on the token pairs (the same token through A and through B):
- `smd`, the standardised mean difference (mean_B − mean_A) / sqrt((var_A + var_B) / 2): an
  effect size, which ranks the features;
- `z`, the paired z statistic mean(a_B − a_A) / (sd(a_B − a_A) / sqrt(n)): the noise check; a
  feature counts as changed when |z| exceeds the tolerance (tokens of one text are not
  independent, so z overstates the evidence; it filters, it does not prove).
Contexts: where the model with the higher mean fires the feature most (B for features that
rise, A for those that fall), one per text. FVU: the dictionary's reconstruction error on each
model's activations. Not here: the per-layer and KL statistics (`stats.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aimri.corpus.text import TokenText
from aimri.dicts.dictionary import Dictionary
from aimri.diff.stats import FeatureContext, TextBatch, Tolerances, window

N_CONTEXTS = 3


@dataclass(frozen=True)
class ChangedFeature:
    feature: int
    label: str | None
    rate_a: float
    """Share of tokens where the feature fires in A."""
    rate_b: float
    mean_a: float
    """Mean activation over all tokens in A (zeros included)."""
    mean_b: float
    smd: float
    """Standardised mean difference, B − A (the ranking key, by absolute value)."""
    z: float
    """Paired z statistic of the per-token change."""
    contexts: list[FeatureContext]


@dataclass(frozen=True)
class FeatureDiff:
    site: str
    d_sae: int
    n_tokens: int
    fvu_a: float
    """Fraction of variance the dictionary leaves unexplained on A's activations."""
    fvu_b: float
    """The same on B's: well above fvu_a means the dictionary no longer fits B."""
    n_changed: int
    """Features with |z| above the tolerance."""
    changed: list[ChangedFeature]
    """The top changed features by |smd| (empty when nothing changed)."""


class FeatureAccumulator:
    """Per-feature sums over token pairs, per-text maxima, and reconstruction errors."""

    def __init__(self, d: Dictionary, site: str, target: str, n_texts: int) -> None:
        self.d, self.site, self.target = d, site, target
        F = d.cfg.d_sae
        z = torch.zeros
        self.fire = z(2, F, dtype=torch.float64)  # [A/B, F] tokens where it fires
        self.s1 = z(2, F, dtype=torch.float64)  # sums of activations
        self.s2 = z(2, F, dtype=torch.float64)  # sums of squares
        self.d1, self.d2 = z(F, dtype=torch.float64), z(F, dtype=torch.float64)  # of a_B − a_A
        self.top = z(2, n_texts, F)  # [A/B, text, F] the model's max activation in the text
        self.other = z(2, n_texts, F)  # the other model's activation at that position
        self.pos = z(2, n_texts, F, dtype=torch.long)
        self.err = z(2, dtype=torch.float64)  # squared reconstruction errors
        self.x1 = z(2, d.cfg.out_width, dtype=torch.float64)  # target sums
        self.x2 = z(2, dtype=torch.float64)  # target squared norms
        self.n = 0

    @torch.no_grad()
    def update(self, acts_a: Mapping[str, Tensor], acts_b: Mapping[str, Tensor], b: TextBatch):
        """acts_*: site → [B, T, width] for the dictionary's sites; one batch of texts."""
        B, T = b.ids.shape
        mask = b.mask.reshape(-1)
        codes = [self._encode(acts, i, mask) for i, acts in enumerate((acts_a, acts_b))]
        for i, c in enumerate(codes):  # c: [B*T, F], zero off the mask
            valid = c[mask].double()
            self.fire[i] += (valid > 0).sum(0)
            self.s1[i] += valid.sum(0)
            self.s2[i] += valid.pow(2).sum(0)
            best = c.view(B, T, -1).max(1)  # per text: the largest value and its position
            other = codes[1 - i].view(B, T, -1).gather(1, best.indices[:, None])[:, 0]
            self.top[i, b.text_index] = best.values
            self.pos[i, b.text_index] = best.indices
            self.other[i, b.text_index] = other
        delta = (codes[1] - codes[0])[mask].double()
        self.d1 += delta.sum(0)
        self.d2 += delta.pow(2).sum(0)
        self.n += int(mask.sum())

    def _encode(self, acts: Mapping[str, Tensor], i: int, mask: Tensor) -> Tensor:
        """[B*T, F] dense codes of model i, zero off the mask; adds to its reconstruction sums."""
        d = self.d
        w = d.W_enc
        x = acts[self.site].reshape(-1, d.cfg.d_in).to(w.device, w.dtype)
        y = acts[self.target].reshape(-1, d.cfg.out_width).to(w.device, w.dtype)
        codes = d.encode(x)
        m = mask.to(w.device)
        err = (d.decode(codes, x) - y)[m].double()
        ym = y[m].double()
        self.err[i] += float(err.pow(2).sum())
        self.x1[i] += ym.sum(0).cpu()
        self.x2[i] += float(ym.pow(2).sum())
        return codes.to_dense(d.cfg.d_sae).float().cpu() * mask[:, None]

    def finish(
        self,
        seqs: Sequence[list[int]],
        tokenizer: Any,
        labels: Mapping[int, str] | None,
        tol: Tolerances,
        top_k: int,
    ) -> FeatureDiff:
        n = max(self.n, 1)
        mean = self.s1 / n  # [2, F]
        var = (self.s2 / n - mean.pow(2)).clamp_min(0)
        smd = _capped((mean[1] - mean[0]) / ((var[0] + var[1]) / 2).sqrt().clamp_min(1e-12))
        md = self.d1 / n
        sd = (self.d2 / n - md.pow(2)).clamp_min(0).sqrt()
        z = _capped(md / (sd / n**0.5).clamp_min(1e-12))
        changed = z.abs() > tol.feature_z
        score = torch.where(changed, smd.abs(), -1.0)
        text = TokenText(tokenizer)
        out = []
        for f in score.topk(min(top_k, len(score))).indices.tolist():
            if not bool(changed[f]):
                break
            out.append(
                ChangedFeature(
                    feature=f,
                    label=(labels or {}).get(f),
                    rate_a=float(self.fire[0, f] / n),
                    rate_b=float(self.fire[1, f] / n),
                    mean_a=float(mean[0, f]),
                    mean_b=float(mean[1, f]),
                    smd=float(smd[f]),
                    z=float(z[f]),
                    contexts=self._contexts(f, 1 if smd[f] > 0 else 0, seqs, text),
                )
            )
        fvu = self.err / (self.x2 - self.x1.pow(2).sum(-1) / n).clamp_min(1e-12)
        return FeatureDiff(
            self.site,
            self.d.cfg.d_sae,
            self.n,
            float(fvu[0]),
            float(fvu[1]),
            int(changed.sum()),
            out,
        )

    def _contexts(
        self, f: int, i: int, seqs: Sequence[list[int]], text: TokenText
    ) -> list[FeatureContext]:
        """Up to N_CONTEXTS texts where model i fires feature f most, one position each."""
        vals = self.top[i, :, f]
        out = []
        for t in vals.topk(min(N_CONTEXTS, len(vals))).indices.tolist():
            if float(vals[t]) <= 0:
                break
            p = int(self.pos[i, t, f])
            own, other = float(self.top[i, t, f]), float(self.other[i, t, f])
            a, b = (other, own) if i == 1 else (own, other)
            out.append(FeatureContext(t, p, window(text, seqs[t], p), text([seqs[t][p]])[0], a, b))
        return out


def _capped(x: Tensor, cap: float = 1e6) -> Tensor:
    """Finite values for JSON: a zero-variance change would otherwise be infinite."""
    return x.clamp(-cap, cap)
