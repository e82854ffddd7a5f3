"""The scan's features stage: describe a sample of the dictionary's features, with baselines.

Reads the dictionary the dictionary stage trained (or loaded) and the activations it was
trained on (or, for a loaded dictionary, the corpus through the model), and runs
`aimri.features.pipeline.describe` on a seeded random sample of features, so that the
interpretable fraction is an unbiased estimate for the whole dictionary. Writes
`features/catalog.sqlite` and returns the JSON the report's dashboards read.
Not here: the statistics, labels and scores themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypedDict

import torch

from aimri.config import FeaturesConfig, ScanConfig
from aimri.features.pipeline import BasisResult, describe
from aimri.features.records import KIND_NAMES
from aimri.features.sources import ContextSource, ModelContexts, StoreContexts
from aimri.features.stats import ExampleSpec
from aimri.model.adapter import Model
from aimri.report.features import features_scripts, features_view
from aimri.report.view import View
from aimri.scanner.dictionary import DICTIONARY, scan_dictionary
from aimri.scanner.finding import Finding
from aimri.scanner.findings import (
    HEADLINE_SCORER,
    best_label_rows,
    ci,
    interpretability_verdict,
    pct,
)
from aimri.scanner.layout import ScanRun
from aimri.scanner.read import FEATURE_TOKENS
from aimri.scanner.stage import Method, Stage
from aimri.store.manifest import read_manifest
from aimri.store.reader import ActivationStore

CATALOG = Path("features") / "catalog.sqlite"
SCAN_SCORERS = ("simulation", "rule")
"""Simulation is the headline; `rule` is the cheap token check beside it. The `embedding`
scorer (`aimri features describe --scorers embedding`) is left out of the scan for time: it
embeds every example window and was the stage's largest cost."""


class BasisInfo(TypedDict):
    info: dict[str, Any]
    """The basis: its name, kind (sae, neurons, random...), site and size."""
    n_tokens: int
    dead_fraction: float
    density_hist_edges: list[float]
    density_hist_counts: list[int]


class FeaturesResult(TypedDict):
    site: str
    catalog: str
    n_tokens: int
    n_features_total: int
    sampled: int
    bases: list[BasisInfo]
    """The dictionary, then its baselines (MLP neurons, random sparse dictionary, residual
    coordinates, random directions)."""
    summary: list[dict[str, Any]]
    """One interpretability row per basis × explainer × scorer."""
    features: list[dict[str, Any]]
    """The sampled features' dashboards, labels and scores."""


def features_stage(run: ScanRun) -> FeaturesResult:
    cfg, model, layout = run.cfg, run.model, run.layout
    dict_stage = DICTIONARY.required(run)
    dictionary = scan_dictionary(run)
    site = dict_stage["site"]
    source = _source(cfg, model, layout.dict_activations, site)
    llm = cfg.labeler == "llm"
    fcfg = FeaturesConfig(
        dictionary=layout.resolve(dict_stage["path"]),
        out=layout.catalog,
        model=cfg.model,
        explainers=("tokens", "logits", "llm") if llm else ("tokens", "logits"),
        scorers=(*SCAN_SCORERS, "detection") if llm else SCAN_SCORERS,
        n_baseline=min(64, cfg.n_features),
        llm=cfg.llm,
        seed=cfg.corpus.seed,
    )
    d_sae = dictionary.cfg.d_sae
    g = torch.Generator().manual_seed(cfg.corpus.seed)
    picked = torch.randperm(d_sae, generator=g)[: cfg.n_features].sort().values
    sample: list[int] = picked.tolist()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    r = describe(
        fcfg, model=model, source=source, features=sample, spec=ExampleSpec(), loaded=dictionary
    )
    return {
        "site": site,
        "catalog": layout.relative(layout.catalog),
        "n_tokens": r.dictionary.features.n_tokens,
        "n_features_total": d_sae,
        "sampled": len(sample),
        "bases": [_basis_json(b) for b in [r.dictionary, *r.baselines]],
        "summary": [dataclasses.asdict(row) for row in r.summary],
        "features": _dashboards(r.dictionary),
    }


def _source(cfg: ScanConfig, model: Model, store: Path, site: str) -> ContextSource:
    """The dictionary's own training activations when the scan collected them."""
    if (store / "manifest.json").is_file() and read_manifest(store).get("complete"):
        s = ActivationStore(store)
        if site in s.sites:
            return StoreContexts(s, site)
    corpus = dataclasses.replace(cfg.corpus, max_tokens=FEATURE_TOKENS)
    return ModelContexts(model, corpus, site)


def _basis_json(r: BasisResult) -> BasisInfo:
    fs = r.features
    return {
        "info": dataclasses.asdict(fs.basis),
        "n_tokens": fs.n_tokens,
        "dead_fraction": fs.dead_fraction,
        "density_hist_edges": fs.density_hist_edges,
        "density_hist_counts": fs.density_hist_counts,
    }


def _dashboards(r: BasisResult) -> list[dict[str, Any]]:
    labels: dict[int, list[dict[str, Any]]] = {}
    scores: dict[int, list[dict[str, Any]]] = {}
    for label in r.labels:
        labels.setdefault(label.feature, []).append(dataclasses.asdict(label))
    for score in r.scores:
        scores.setdefault(score.feature, []).append(dataclasses.asdict(score))
    return [
        {
            **dataclasses.asdict(f),
            "labels": labels.get(f.index, []),
            "scores": scores.get(f.index, []),
        }
        for f in r.features.features
    ]


def _findings(stage: FeaturesResult) -> list[Finding]:
    """Dictionary features against every baseline: the interpretable fraction, worded by the
    strictest baseline."""
    labelled = best_label_rows(stage)
    if labelled is None:
        return []
    best, same, by_kind = labelled
    others = "; ".join(
        f"{KIND_NAMES.get(k, k)} {pct(r)} ({ci(r)}, mean score {r['mean'] or 0:.2f})"
        for k, r in by_kind.items()
        if k not in ("sae", "transcoder")
    )
    verdict = interpretability_verdict(best, by_kind)
    what = (
        "predicts their activations token by token (simulation r"
        if best["scorer"] == HEADLINE_SCORER
        else f"predicts them ({best['scorer']} score"
    )
    return [
        Finding(
            id="interpretable-fraction",
            title=f"{pct(best)} of sampled dictionary features have a label that predicts "
            f"them: {verdict}",
            severity="info",
            summary=f"With the {best['explainer']} explainer's labels, {pct(best)} of "
            f"{best['n']} sampled features have a label that {what} ≥ {best['threshold']:g} on "
            f"windows of the scan's own text held out from labelling; {ci(best)}, mean score {best['mean'] or 0:.2f}; with shuffled "
            f"labels {pct(best, 'frac_above_baseline')}). Same site, same pipeline: "
            f"{others or 'no baselines'}. Verdict by the intervals: {verdict}.",
            evidence={"rows": same},
        )
    ]


def _sure(r: FeaturesResult) -> str:
    labelled = best_label_rows(r)
    if labelled is None:
        return "No feature labels were scored."
    best = labelled.best
    verdict = interpretability_verdict(best, labelled.by_kind)
    weak = not verdict.startswith("above")
    return (
        f"{100 * (best['frac_above'] or 0):.0f}% of sampled features have a label that predicts "
        f"them on windows held out from labelling ({best['scorer']} ≥ {best['threshold']:g}; 95% CI "
        f"{100 * (best['ci_low'] or 0):.0f}–{100 * (best['ci_high'] or 0):.0f}%): {verdict}"
        + (", so treat feature labels as weak evidence." if weak else ".")
    )


FEATURES = Stage[FeaturesResult](
    "features",
    features_stage,
    needs=(DICTIONARY,),
    findings=_findings,
    checked=lambda r: (
        f"{r['sampled']} of {r['n_features_total']:,} features labelled and "
        "scored on windows held out from labelling, against the layer's MLP neurons, a random sparse dictionary, "
        "residual coordinates and random directions"
    ),
    sure=_sure,
    method=lambda r, c: Method(
        "feature labels",
        "token and logit explainers, scored by simulation (pooled Pearson r of predicted vs "
        "real per-token activations on held-out top, decile and random windows) and a token "
        "rule, against shuffled labels; baselines: the layer's MLP neurons, an untrained sparse "
        "dictionary of the same width and k, residual coordinates, random directions; sinks "
        "left out",
        f"{r['sampled']} sampled features, labeler {c.get('labeler')}",
    ),
    view=View(
        "features.html.j2",
        features_view,
        nav="Features",
        styles=("features.css",),
        scripts=features_scripts,
    ),
)
