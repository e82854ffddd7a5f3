"""Fit and measure concept directions on pooled activations (the numerical core of `probes.py`).

`pooled_activations` runs the model once per batch of texts and keeps, per text and layer, the
mean resid_post over its tokens (BOS excluded, the pooling of `aimri.steer.directions`), the
sum of token norms (for the steering unit) and, with a dictionary, its codes' per-text mean and
maximum. Everything after that is matrix work on those arrays, all layers at once where it can
be: directions fitted on train pairs, cross-validation on train folds, held-out AUROC,
thresholds on neutral texts, random-direction and single-neuron baselines, feature ranking.
Not here: which layer and method to flag and the causal checks (`probes.py`), metric
primitives (`probe_metrics.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from aimri.checkup.probe_metrics import (
    PairSplit,
    auroc_columns,
    cv_folds,
    pearson,
    standardized_mean_difference,
    threshold_at_fpr,
)
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.directions import fit_probe, mean_difference
from aimri.steer.generate import prompt_ids, right_pad
from aimri.store.sinks import MIN_TOKENS, model_special_ids, norm_factor

Method = Literal["diff_of_means", "probe"]
FPR = 0.01
"""False-positive rate on neutral texts at which recall is measured."""
CV_FOLDS = 3
TIE = 0.01
"""AUROCs this close count as equal when choosing a layer or method on train folds."""
TOP_FEATURES = 8
BATCH = 32


class Pooled(NamedTuple):
    means: Tensor
    """[n_texts, n_layers, d] each text's mean activation over its ordinary tokens (BOS and
    the layer's massive activations excluded: see `ordinary_tokens`)."""
    norm_sum: Tensor
    """[n_texts, n_layers] sum over the text's ordinary tokens of their L2 norms."""
    n_tokens: Tensor
    """[n_texts] tokens per text (BOS excluded)."""
    n_ordinary: Tensor
    """[n_texts, n_layers] the ordinary tokens each mean is over."""
    features: Tensor | None
    """[n_texts, d_sae] per-text mean of the dictionary's codes, when one is given."""
    feature_max: Tensor | None
    """[n_texts, d_sae] per-text maximum of the codes."""


@torch.no_grad()
def pooled_activations(
    model: Model,
    texts: Sequence[str],
    layers: Sequence[int],
    dictionary: Dictionary | None = None,
    dict_layer: int | None = None,
    batch_size: int = BATCH,
) -> Pooled:
    """One forward pass per batch reads every layer's resid_post (texts batched by length);
    with a dictionary, also its codes at layer `dict_layer` (one of `layers`)."""
    sites = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    bos = prompt_ids(model, "")  # the BOS prefix every text gets; one tokenizer call for all
    seqs = [
        bos + list(t) for t in model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    if any(len(s) < 2 for s in seqs):
        raise AimriError("every text needs at least one token besides BOS: drop empty texts")
    n, d = len(texts), model.info.d_model
    means, norm_sum = torch.zeros(n, len(layers), d), torch.zeros(n, len(layers))
    n_ordinary = torch.zeros(n, len(layers))
    special = model_special_ids(model.tokenizer)
    d_sae = dictionary.cfg.d_sae if dictionary is not None else 0
    feats, feat_max = torch.zeros(n, d_sae), torch.zeros(n, d_sae)
    li = list(layers).index(dict_layer) if dict_layer is not None else None
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    for b in range(0, n, batch_size):
        rows = order[b : b + batch_size]
        acts = model.run(right_pad([seqs[i] for i in rows]).ids, read=sites, logits=False).acts
        stack = torch.stack([acts[s].float().cpu() for s in sites], dim=2)  # [B, T, L, d]
        keep = ordinary_tokens(
            stack, [len(seqs[i]) for i in rows], special, [seqs[i] for i in rows]
        )
        for j, i in enumerate(rows):
            k = keep[j]  # [T, L]
            w = k[..., None].float()
            norm_sum[i] = (stack[j].norm(dim=-1) * k).sum(0)
            n_ordinary[i] = k.sum(0).float()
            means[i] = (stack[j] * w).sum(0) / n_ordinary[i].clamp_min(1)[:, None]
            if dictionary is not None and li is not None:
                codes = _dense_codes(dictionary, stack[j, k[:, li], li])  # [n_ord, d_sae]
                if len(codes):
                    feats[i], feat_max[i] = codes.mean(0), codes.max(0).values
    n_tokens = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.float32)
    has = dictionary is not None
    return Pooled(
        means, norm_sum, n_tokens, n_ordinary, feats if has else None, feat_max if has else None
    )


def ordinary_tokens(
    stack: Tensor, lengths: Sequence[int], special: Sequence[int], seqs: Sequence[Sequence[int]]
) -> Tensor:
    """[B, T, L] bool: the tokens a text's mean is over, per layer: not BOS or padding, not a
    special token, and not a massive activation at that layer (norm beyond the batch's
    data-derived threshold, `store.sinks`). A text whose every token is massive at a layer
    keeps them all there (it has nothing else to say)."""
    B, T, L, _ = stack.shape
    real = torch.zeros(B, T, dtype=torch.bool)
    for j, n in enumerate(lengths):
        real[j, 1:n] = True
        ids = torch.tensor(list(seqs[j]))
        real[j, : len(ids)] &= ~torch.isin(ids, torch.tensor(list(special), dtype=ids.dtype))
        real[j, 0] = False
    keep = real[..., None].expand(B, T, L).clone()
    norms = stack.norm(dim=-1)  # [B, T, L]
    for layer in range(L):
        ordinary = norms[..., layer][real]
        if len(ordinary) >= MIN_TOKENS:
            threshold = float(ordinary.median()) * norm_factor(ordinary)
            keep[..., layer] &= norms[..., layer] <= threshold
    empty = keep.sum(1) == 0  # [B, L]
    keep |= empty[:, None, :] & real[..., None]
    return keep


class ConceptRows(NamedTuple):
    """Where one concept's texts sit in the pooled arrays: pair i at rows start + 2i
    (positive) and start + 2i + 1 (negative); neutral rows split in two."""

    start: int
    split: PairSplit
    calib: list[int]
    """Neutral rows that set the threshold."""
    neutral_test: list[int]
    """Neutral rows that measure the false-positive rate."""

    def pos(self, pairs: Sequence[int]) -> list[int]:
        return [self.start + 2 * i for i in pairs]

    def neg(self, pairs: Sequence[int]) -> list[int]:
        return [self.start + 2 * i + 1 for i in pairs]


class Directions(NamedTuple):
    dom: Tensor
    """[L, d] unit differences of means, fitted on train pairs."""
    probe: Tensor
    """[L, d] unit logistic-probe directions, fitted on train pairs."""


def fit_directions(X: Tensor, r: ConceptRows) -> Directions:
    """X [n, L, d] → both directions at every layer, from the train pairs only."""
    train = r.split.train
    dom = mean_difference(X[r.pos(train)], X[r.neg(train)])  # [L, d]
    probe = [probe_fit(X[r.pos(train), li], X[r.neg(train), li]) for li in range(X.shape[1])]
    return Directions(torch.nn.functional.normalize(dom, dim=-1), torch.stack(probe))


def probe_fit(pos: Tensor, neg: Tensor) -> Tensor:
    """[d] unit logistic-probe direction from positive [p, d] and negative [q, d] texts."""
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    return fit_probe(torch.cat([pos, neg]), labels)


class CvScores(NamedTuple):
    auroc: Tensor
    """[L] (or [1]) mean over folds of the held-out fold's AUROC."""
    separation: Tensor
    """[L] mean over folds of (mean positive − mean negative score) / pooled sd: unlike AUROC it
    does not saturate at 1, so it breaks ties between layers that all separate the folds."""


def cv_scores(X: Tensor, r: ConceptRows, fit: Callable[[Tensor, Tensor], Tensor]) -> CvScores:
    """Cross-validation over folds of the TRAIN pairs (test pairs are not used) of the direction
    `fit(positive, negative)` returns. X [n, L, d] (a direction per layer: → [L]) or [n, d]."""
    auc = torch.zeros(X.shape[1] if X.dim() == 3 else 1)
    sep = torch.zeros_like(auc)
    for fold in cv_folds(r.split.train, CV_FOLDS):
        u = fit(X[r.pos(fold.train)], X[r.neg(fold.train)])
        pos, neg = (X[r.pos(fold.test)] * u).sum(-1), (X[r.neg(fold.test)] * u).sum(-1)
        pos, neg = pos.reshape(len(pos), -1), neg.reshape(len(neg), -1)
        auc += auroc_columns(pos, neg)
        sep += standardized_mean_difference(pos, neg)
    return CvScores(auc / CV_FOLDS, sep / CV_FOLDS)


def best_of(scores: CvScores, tie: float = TIE) -> int:
    """Index with the highest AUROC; among those within `tie` of it, the best separation."""
    near = scores.auroc >= scores.auroc.max() - tie
    return int(torch.where(near, scores.separation, -torch.inf).argmax())


@dataclass(frozen=True)
class LayerRow:
    """One layer's held-out numbers for one concept (directions fitted on train)."""

    layer: int
    dom_auroc: float
    probe_auroc: float
    dom_cv_auroc: float
    """Train-split cross-validated AUROC of the difference of means (chooses the layer)."""
    dom_recall: float
    """Recall of positive test texts at the 1%-neutral threshold."""
    probe_recall: float
    dom_probe_cos: float
    """Cosine between the two directions: how far the methods agree."""
    random_auroc_mean: float
    """Random unit directions, sign-agnostic AUROC max(a, 1 - a)."""
    random_auroc_p95: float
    neuron: int
    """The single neuron with the most separating train AUROC (sign chosen on train)."""
    neuron_auroc: float


def layer_rows(
    X: Tensor, dirs: Directions, cv: Tensor, r: ConceptRows, layers: list[int], rand: Tensor
) -> list[LayerRow]:
    """Per layer: both directions' test AUROC and recall, and the baselines (`rand` [k, d])."""
    train, test = r.split
    tp, tn = r.pos(test), r.neg(test)
    dom_s, probe_s = (X * dirs.dom).sum(-1), (X * dirs.probe).sum(-1)  # [n, L]
    dom_auc = auroc_columns(dom_s[tp], dom_s[tn])
    probe_auc = auroc_columns(probe_s[tp], probe_s[tn])
    L = len(layers)
    rs = torch.einsum("nld,rd->nlr", X[tp + tn], rand)  # [n_test, L, k]
    rand_auc = auroc_columns(rs[: len(tp)].flatten(1), rs[len(tp) :].flatten(1)).view(L, -1)
    rand_auc = torch.maximum(rand_auc, 1 - rand_auc)  # a random direction has no sign
    train_auc = auroc_columns(X[r.pos(train)].flatten(1), X[r.neg(train)].flatten(1)).view(L, -1)
    neuron = (train_auc - 0.5).abs().argmax(-1)  # [L], chosen on train
    rows = []
    for li, layer in enumerate(layers):
        j = int(neuron[li])
        sign = 1.0 if float(train_auc[li, j]) >= 0.5 else -1.0
        n_auc = auroc_columns(sign * X[tp, li, j : j + 1], sign * X[tn, li, j : j + 1])
        rows.append(
            LayerRow(
                layer=layer,
                dom_auroc=float(dom_auc[li]),
                probe_auroc=float(probe_auc[li]),
                dom_cv_auroc=float(cv[li]),
                dom_recall=_recall(dom_s[:, li], r),
                probe_recall=_recall(probe_s[:, li], r),
                dom_probe_cos=float(dirs.dom[li] @ dirs.probe[li]),
                random_auroc_mean=float(rand_auc[li].mean()),
                random_auroc_p95=float(rand_auc[li].quantile(0.95)),
                neuron=j,
                neuron_auroc=float(n_auc[0]),
            )
        )
    return rows


def _recall(scores: Tensor, r: ConceptRows) -> float:
    """Recall of positive test texts at the threshold set on the calibration neutral texts."""
    t = threshold_at_fpr(scores[r.calib], FPR)
    return float((scores[r.pos(r.split.test)] > t).float().mean())


@dataclass(frozen=True)
class Detector:
    """The flagged direction: the chosen layer and method, measured on held-out data."""

    layer: int
    site: str
    method: Method
    cv_auroc: float
    """Train-split cross-validated AUROC (what chose the layer and method)."""
    auroc: float
    pair_accuracy: float
    """Share of test pairs whose positive text scores above its negative partner."""
    threshold: float
    """Score above which a text is flagged: at most 1% of the calibration neutral texts are."""
    recall: float
    """Share of positive test texts above the threshold."""
    neutral_fpr: float
    """Share of held-out neutral texts above the threshold."""


def detector(scores: Tensor, r: ConceptRows, layer: int, method: Method, cv: float) -> Detector:
    """The flagged direction's numbers from its scores [n] on every pooled text."""
    test = r.split.test
    pos, neg = scores[r.pos(test)], scores[r.neg(test)]
    t = threshold_at_fpr(scores[r.calib], FPR)
    return Detector(
        layer=layer,
        site=f"blocks.{layer}.hook_resid_post",
        method=method,
        cv_auroc=cv,
        auroc=float(auroc_columns(pos[:, None], neg[:, None])[0]),
        pair_accuracy=float((pos > neg).float().mean()),
        threshold=t,
        recall=float((pos > t).float().mean()),
        neutral_fpr=float((scores[r.neutral_test] > t).float().mean()),
    )


@dataclass(frozen=True)
class FeatureRow:
    """A dictionary feature more active on the positive side, measured on test pairs."""

    feature: int
    label: str | None
    train_auroc: float
    """AUROC of its per-text mean activation on the train pairs (ranks features)."""
    train_smd: float
    """Standardized mean difference on train (breaks ties in the ranking)."""
    auroc: float
    """Held-out AUROC on the test pairs."""
    cos_dom: float
    """Cosine of its decoder row with the difference of means at the dictionary's layer."""
    cos_probe: float
    score_corr: float | None
    """Pearson correlation of the probe's score and the feature's activation on test texts
    (None when the feature is constant there, e.g. never fires)."""


def feature_rows(
    pooled: Pooled,
    dictionary: Dictionary,
    dirs: Directions,
    li: int,
    r: ConceptRows,
    labels: Mapping[int, str] | None = None,
) -> list[FeatureRow]:
    """The features most active on the positive side by train AUROC (a rank statistic, so a
    feature firing on one or two texts does not win; ties by standardized mean difference),
    measured on test. `li` is the dictionary's layer's index in the pooled arrays."""
    F = pooled.features
    assert F is not None, "pooled_activations ran without the dictionary"
    train, test = r.split
    train_auc = auroc_columns(F[r.pos(train)], F[r.neg(train)])  # [d_sae]
    smd = standardized_mean_difference(F[r.pos(train)], F[r.neg(train)])
    key = train_auc + 1e-6 * smd.clamp(-100, 100)  # AUROC steps are ≥ 1/p·q ≫ 1e-4
    top = [int(f) for f in key.argsort(descending=True)[:TOP_FEATURES] if float(train_auc[f]) > 0.5]
    if not top:
        return []
    auc = auroc_columns(F[r.pos(test)][:, top], F[r.neg(test)][:, top])
    W = torch.nn.functional.normalize(dictionary.W_dec.detach()[top].float().cpu(), dim=-1)
    cos_dom, cos_probe = W @ dirs.dom[li], W @ dirs.probe[li]  # [k]
    rows = r.pos(test) + r.neg(test)
    probe_score = pooled.means[rows, li] @ dirs.probe[li]  # [n_test]
    out = []
    for k, f in enumerate(top):
        corr = pearson(probe_score, F[rows, f])
        out.append(
            FeatureRow(
                feature=f,
                label=(labels or {}).get(f),
                train_auroc=float(train_auc[f]),
                train_smd=float(smd[f]),
                auroc=float(auc[k]),
                cos_dom=float(cos_dom[k]),
                cos_probe=float(cos_probe[k]),
                score_corr=None if math.isnan(corr) else corr,
            )
        )
    return out


@torch.no_grad()
def _dense_codes(dictionary: Dictionary, x: Tensor) -> Tensor:
    """x [n, d] → [n, d_sae] float32 CPU codes."""
    w = dictionary.W_enc
    codes = dictionary.encode(x.to(w.device, w.dtype))
    return codes.to_dense(dictionary.cfg.d_sae).float().cpu()
