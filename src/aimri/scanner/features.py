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
from typing import Any

import torch

from aimri.config import FeaturesConfig, ScanConfig
from aimri.features.pipeline import BasisResult, describe
from aimri.features.sources import ContextSource, ModelContexts, StoreContexts
from aimri.features.stats import ExampleSpec
from aimri.model.adapter import Model
from aimri.scanner.layout import ScanRun
from aimri.store.manifest import read_manifest
from aimri.store.reader import ActivationStore

CATALOG = Path("features") / "catalog.sqlite"
SCAN_SCORERS = ("simulation", "rule")
"""Simulation is the headline; `rule` is the cheap token check beside it. The `embedding`
scorer (`aimri features describe --scorers embedding`) is left out of the scan for time: it
embeds every example window and was the stage's largest cost."""


def features_stage(run: ScanRun) -> dict[str, Any]:
    cfg, model, layout = run.cfg, run.model, run.layout
    dict_stage = run.results["dictionary"]
    dictionary = run.dictionary()
    assert dictionary is not None, "the dictionary stage ran"
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
    sample = torch.randperm(d_sae, generator=g)[: cfg.n_features].sort().values.tolist()
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
    corpus = dataclasses.replace(cfg.corpus, max_tokens=cfg.dict_tokens)
    return ModelContexts(model, corpus, site)


def _basis_json(r: BasisResult) -> dict[str, Any]:
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
