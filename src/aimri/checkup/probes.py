"""Concept probes: per-layer directions for each concept, measured on held-out pairs.

`probe_concepts` reads every text's mean residual stream (`blocks.{L}.hook_resid_post`, all
layers in one forward pass per batch, BOS excluded, as `aimri.steer.directions` pools) and, per
concept and layer, fits on the TRAIN pairs (a seeded split of pairs, so a minimal pair never
straddles train and test):
- a difference of means and a logistic probe (`fit_probe`), both unit directions pointing
  toward the positive side; scores are projections on them;
- held-out AUROC (positive vs negative test texts), and recall of positive test texts at a
  threshold that flags at most 1% of neutral texts (the threshold comes from one half of the
  neutral texts, `neutral_fpr` is measured on the other half);
- baselines at the same layer: random unit directions (sign-agnostic AUROC, mean and 95th
  percentile) and the best single neuron (chosen and signed on train, AUROC on test).
The best layer is the one with the highest cross-validated AUROC of the difference of means
over folds of the TRAIN pairs (among layers within 0.01 of it, the one whose folds separate by
the most pooled standard deviations, since AUROC saturates at 1); the method at that layer
(difference of means or probe) is chosen the same way. The test split is never consulted for a
choice. With a dictionary (an SAE
at a resid_post site) its features are ranked by standardized mean difference on train, then
measured on test, and compared with the directions (decoder cosine, score correlation).
`probe_concepts` also runs `causal_check` on each flagged direction and top feature.
Numbers are evidence about these texts, not a certificate about the model.

Not here: the data (`concepts.py`), the fitting and measuring on pooled activations
(`probe_fit.py`), interventions (`causal.py`), the scan and report.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from aimri.checkup.causal import CausalCheck, CausalSettings, causal_check
from aimri.checkup.concepts import CONCEPTS_VERSION, ConceptSet, require_pairs
from aimri.checkup.probe_directions import (
    ProbeDirection,
    load_probe_directions,
    write_directions,
)
from aimri.checkup.probe_fit import (
    FPR,
    ConceptRows,
    CvScores,
    Detector,
    Directions,
    FeatureRow,
    LayerRow,
    Method,
    Pooled,
    best_of,
    cv_scores,
    detector,
    feature_rows,
    fit_directions,
    layer_rows,
    pooled_activations,
    probe_fit,
)
from aimri.checkup.probe_metrics import split_pairs
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.model.sites import parse_site
from aimri.steer.directions import mean_difference
from aimri.steer.edits import dictionary_sites

log = logging.getLogger(__name__)
N_RANDOM = 32
MIN_NEUTRAL = 10
__all__ = [
    "ConceptProbe",
    "Detector",
    "FeatureRow",
    "LayerRow",
    "ProbeDirection",
    "ProbeResult",
    "ProbeSettings",
    "load_probe_directions",
    "probe_concepts",
    "save_probe_directions",
]


@dataclass(frozen=True)
class ConceptProbe:
    """Everything measured for one concept (JSON-able)."""

    concept: str
    version: str
    positive_label: str
    negative_label: str
    n_pairs: int
    n_train_pairs: int
    n_test_pairs: int
    detector: Detector
    layers: list[LayerRow]
    features: list[FeatureRow]
    feature_site: str | None
    causal: list[CausalCheck]
    finding: str


@dataclass(frozen=True)
class ProbeSettings:
    model: str
    layers: list[int]
    seed: int
    test_fraction: float
    n_neutral_calibration: int
    n_neutral_test: int
    n_random: int
    fpr: float
    concepts_version: str
    dictionary_site: str | None


@dataclass(frozen=True)
class ProbeResult:
    concepts: list[ConceptProbe]
    settings: ProbeSettings
    directions: dict[str, ProbeDirection] = field(repr=False)
    """Concept → its flagged direction (tensors: not part of `to_json`)."""

    def to_json(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "concepts": [asdict(c) for c in self.concepts]}


def probe_concepts(
    model: Model,
    concepts: Sequence[ConceptSet],
    neutral_texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    dictionary: Dictionary | None = None,
    dict_site: str | None = None,
    feature_labels: Mapping[int, str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
    causal: CausalSettings | None = CausalSettings(),  # noqa: B008 (frozen, so never mutated)
    n_random: int = N_RANDOM,
) -> ProbeResult:
    """Probe every concept (see the module docstring). `causal=None` skips the causal checks;
    `n_random` random directions make the detection baseline."""
    d_site = _dictionary_site(model, dictionary, dict_site)
    layer_list = _layers(model, layers, d_site)
    names = [c.name for c in concepts]
    if not concepts or len(set(names)) < len(names):
        raise AimriError(
            f"concepts {names} must be non-empty and uniquely named: drop the duplicates"
        )
    splits = []
    for c in concepts:
        require_pairs(c)
        split = split_pairs(len(c.pairs), test_fraction, seed)
        require_pairs(c, n_train=len(split.train), n_test=len(split.test))
        splits.append(split)
    if len(neutral_texts) < MIN_NEUTRAL:
        raise AimriError(
            f"{len(neutral_texts)} neutral texts given; the 1%-false-positive threshold needs "
            f"at least {MIN_NEUTRAL} (better 200+): pass builtin_neutral_texts() or corpus text"
        )
    texts = [t for c in concepts for pair in c.pairs for t in pair] + list(neutral_texts)
    d_layer = parse_site(d_site).layer if d_site else None
    started = time.perf_counter()
    pooled = pooled_activations(model, texts, layer_list, dictionary, d_layer)
    log.info(
        "concept probes: %d texts, %d tokens, %d layers read in %.1f s",
        len(texts),
        int(pooled.n_tokens.sum()),
        len(layer_list),
        time.perf_counter() - started,
    )
    neutral = list(range(len(texts) - len(neutral_texts), len(texts)))
    random.Random(seed).shuffle(neutral)
    calib, neutral_test = sorted(neutral[: len(neutral) // 2]), sorted(neutral[len(neutral) // 2 :])
    gen = torch.Generator().manual_seed(seed)
    rand = torch.nn.functional.normalize(
        torch.randn(n_random, model.info.d_model, generator=gen), dim=-1
    )
    ctx = _Context(
        model, pooled, layer_list, rand, dictionary, d_site, feature_labels, causal, seed
    )
    reports, directions, start = [], {}, 0
    for concept, split in zip(concepts, splits, strict=True):
        rows = ConceptRows(start, split, calib, neutral_test)
        start += 2 * len(concept.pairs)
        started = time.perf_counter()
        report, direction = _probe_one(ctx, concept, rows)
        log.info("%s (%.1f s): %s", concept.name, time.perf_counter() - started, report.finding)
        reports.append(report)
        directions[concept.name] = direction
    settings = ProbeSettings(
        model=model.info.spec,
        layers=layer_list,
        seed=seed,
        test_fraction=test_fraction,
        n_neutral_calibration=len(calib),
        n_neutral_test=len(neutral_test),
        n_random=n_random,
        fpr=FPR,
        concepts_version=CONCEPTS_VERSION,
        dictionary_site=d_site,
    )
    return ProbeResult(reports, settings, directions)


class _Context(NamedTuple):
    model: Model
    pooled: Pooled
    layers: list[int]
    rand: Tensor
    """[n_random, d] unit random directions."""
    dictionary: Dictionary | None
    dict_site: str | None
    labels: Mapping[int, str] | None
    causal: CausalSettings | None
    seed: int


def _probe_one(
    ctx: _Context, concept: ConceptSet, r: ConceptRows
) -> tuple[ConceptProbe, ProbeDirection]:
    """Fit, choose on train (layer by difference-of-means CV, then the method), measure."""
    X = ctx.pooled.means  # [n, L, d]
    dirs = fit_directions(X, r)
    dom_cv = cv_scores(X, r, mean_difference)  # [L] each
    best = best_of(dom_cv)
    probe_cv = cv_scores(X[:, best], r, probe_fit)
    both = CvScores(
        torch.stack([dom_cv.auroc[best], probe_cv.auroc[0]]),
        torch.stack([dom_cv.separation[best], probe_cv.separation[0]]),
    )
    method: Method = ("diff_of_means", "probe")[best_of(both)]
    u = (dirs.dom if method == "diff_of_means" else dirs.probe)[best]
    cv = float(both.auroc[("diff_of_means", "probe").index(method)])
    det = detector(X[:, best] @ u, r, ctx.layers[best], method, cv)
    rows = layer_rows(X, dirs, dom_cv.auroc, r, ctx.layers, ctx.rand)
    features = _features(ctx, dirs, r)
    checks = _causal_checks(ctx, concept, det, u, features, r)
    report = ConceptProbe(
        concept=concept.name,
        version=concept.version,
        positive_label=concept.positive_label,
        negative_label=concept.negative_label,
        n_pairs=len(concept.pairs),
        n_train_pairs=len(r.split.train),
        n_test_pairs=len(r.split.test),
        detector=det,
        layers=rows,
        features=features,
        feature_site=ctx.dict_site,
        causal=checks,
        finding=_finding(concept, det, rows[best], len(r.split.test), features),
    )
    direction = ProbeDirection(concept.name, det.site, method, u.clone(), det.threshold, det.auroc)
    return report, direction


def _features(ctx: _Context, dirs: Directions, r: ConceptRows) -> list[FeatureRow]:
    if ctx.dictionary is None or ctx.dict_site is None:
        return []
    li = ctx.layers.index(parse_site(ctx.dict_site).layer)
    return feature_rows(ctx.pooled, ctx.dictionary, dirs, li, r, ctx.labels)


def _causal_checks(
    ctx: _Context,
    concept: ConceptSet,
    det: Detector,
    u: Tensor,
    features: list[FeatureRow],
    r: ConceptRows,
) -> list[CausalCheck]:
    """The flagged direction steered in units of its site's mean norm on neutral text; the
    top feature clamped in units of its largest activation on the positive train texts."""
    cs = ctx.causal
    if cs is None:
        return []
    p, li = ctx.pooled, ctx.layers.index(det.layer)
    neutral = r.calib + r.neutral_test
    scale = float(p.norm_sum[neutral, li].sum() / p.n_ordinary[neutral, li].sum())
    checks = [
        causal_check(
            ctx.model,
            concept,
            site=det.site,
            direction=u,
            scale=scale,
            strengths=cs.strengths,
            n_random=cs.n_random,
            random_ablation=cs.random_ablation,
            seed=ctx.seed,
        )
    ]
    d = ctx.dictionary
    if features and d is not None and p.feature_max is not None:
        f = features[0].feature
        peak = float(p.feature_max[r.pos(r.split.train), f].max())
        if peak > 0:  # a top feature by mean difference fires on some positive text
            checks.append(
                causal_check(
                    ctx.model,
                    concept,
                    site=d.cfg.site,
                    dictionary=d,
                    feature=f,
                    scale=peak,
                    strengths=cs.feature_strengths,
                    n_random=cs.n_random,
                    random_ablation=cs.random_ablation,
                    seed=ctx.seed,
                )
            )
    return checks


def _finding(
    concept: ConceptSet, det: Detector, row: LayerRow, n_test: int, features: list[FeatureRow]
) -> str:
    how = "difference of means" if det.method == "diff_of_means" else "logistic probe"
    pos, neg = concept.positive_label, concept.negative_label
    text = (
        f"Layer {det.layer} ({how}, both chosen on training pairs only): held-out AUROC "
        f"{det.auroc:.2f} separating {pos} from {neg} texts on {n_test} test pairs (random "
        f"directions {row.random_auroc_mean:.2f} mean, {row.random_auroc_p95:.2f} at the 95th "
        f"percentile; best single neuron {row.neuron_auroc:.2f}). At a threshold passing 1% of "
        f"calibration neutral texts it flags {det.recall:.0%} of held-out {pos} texts and "
        f"{det.neutral_fpr:.1%} of held-out neutral texts."
    )
    if features:
        f = features[0]
        name = f" ('{f.label}')" if f.label else ""
        text += (
            f" Top dictionary feature {f.feature}{name}: held-out AUROC {f.auroc:.2f}, decoder "
            f"cosine with the probe direction {f.cos_probe:+.2f}, correlation of their scores "
            f"{'n/a' if f.score_corr is None else format(f.score_corr, '+.2f')}."
        )
    return text + (
        " This is evidence that the distinction is linearly readable on these texts, not a "
        "certificate about the model's behaviour."
    )


def _dictionary_site(
    model: Model, dictionary: Dictionary | None, dict_site: str | None
) -> str | None:
    """The dictionary's resid_post site, checked against the model; None without a dictionary."""
    if dictionary is None:
        if dict_site:
            raise AimriError(f"dict_site '{dict_site}' given without a dictionary: pass both")
        return None
    tc = dictionary.cfg.transcoder
    site = (
        dict_site or dictionary.cfg.site
        if tc
        else dictionary_sites(dictionary, model, dict_site)[0]
    )
    if tc or parse_site(site).kind != "hook_resid_post":
        raise AimriError(
            f"concept features need an SAE on a resid_post site (the directions live there); "
            f"got a {'transcoder' if tc else 'dictionary'} at '{site}': train or load an SAE at "
            "blocks.<L>.hook_resid_post"
        )
    return site


def _layers(model: Model, layers: Sequence[int] | None, dict_site: str | None) -> list[int]:
    n = model.info.n_layers
    chosen = set(range(n)) if layers is None else {int(x) for x in layers}
    bad = sorted(x for x in chosen if not 0 <= x < n)
    if bad or not chosen:
        raise AimriError(
            f"layers {bad or '(none)'} are not usable: model '{model.info.spec}' has layers "
            f"0-{n - 1}; pass some of those, or None for all"
        )
    if dict_site:
        chosen.add(parse_site(dict_site).layer)
    return sorted(chosen)


def save_probe_directions(result: ProbeResult, folder: str | Path) -> Path:
    """Write the flagged directions (see `probe_directions.py`); returns the sidecar's path."""
    settings = result.settings
    return write_directions(
        result.directions,
        Path(folder),
        model=settings.model,
        concepts_version=settings.concepts_version,
    )
