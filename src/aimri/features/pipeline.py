"""`aimri features describe`: statistics → labels → held-out scores → catalog, with baselines.

One function, `describe`, runs the stage for a dictionary: the dictionary's features, and (the
honest comparison) its baselines, each through the same statistics, explainers and scorers:
the MLP neurons of the same layer, an untrained dictionary of the same width and k, the site's
residual coordinates and random directions (see `basis.py`). Everything lands in one SQLite
catalog. Not here: the parts themselves (`stats.py`, `explain.py`, `score.py`, `catalog.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from aimri.config import FeaturesConfig
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.features.basis import (
    DictionaryBasis,
    FeatureBasis,
    MLPNeuronBasis,
    RandomBasis,
    ResidualBasis,
    random_dictionary,
)
from aimri.features.catalog import Catalog, run_identity
from aimri.features.chat import ChatClient
from aimri.features.explain import make_explainer
from aimri.features.llm import make_client
from aimri.features.records import FeatureSet, Label, Score
from aimri.features.scorers import make_scorer
from aimri.features.sources import ContextSource, ModelContexts, StoreContexts, at_site
from aimri.features.stats import ExampleSpec, feature_statistics
from aimri.features.summary import SummaryRow, interpretability_summary
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.model.sites import parse_site
from aimri.store.reader import ActivationStore

log = logging.getLogger(__name__)
LLM_PARTS = {"llm", "detection", "fuzzing"}


@dataclass(frozen=True)
class BasisResult:
    """One basis through the whole stage."""

    features: FeatureSet
    labels: list[Label]
    scores: list[Score]


@dataclass(frozen=True)
class DescribeResult:
    catalog: Path
    dictionary: BasisResult
    baselines: list[BasisResult]
    summary: list[SummaryRow]


def describe(
    cfg: FeaturesConfig,
    *,
    model: Model | None = None,
    source: ContextSource | None = None,
    features: list[int] | None = None,
    spec: ExampleSpec | None = None,
    loaded: Dictionary | None = None,
) -> DescribeResult:
    """Describe `cfg.dictionary`'s features (or `features`, a chosen subset) into `cfg.out`;
    `loaded` is that dictionary already in memory (else it is read from `cfg.dictionary`)."""
    model = model or load_model(cfg.model)
    basis = DictionaryBasis(loaded if loaded is not None else load_dictionary(cfg.dictionary))
    basis.check_fits(model)
    source = source or _source(cfg, model, basis.site)
    chosen = features if features is not None else _first(basis.n_features, cfg.n_features)
    bases = [BasisRun(basis, chosen, source)]
    if cfg.baselines:
        bases += baselines(cfg, model, basis, source)
    spec = spec or ExampleSpec(seed=cfg.seed)
    # One client for the whole run: explainer and judges share its cache and its accounts.
    client = make_client(cfg.llm) if LLM_PARTS & {*cfg.explainers, *cfg.scorers} else None
    results = [_one_basis(cfg, r.basis, r.features, model, r.source, spec, client) for r in bases]
    summary = interpretability_summary(
        {r.features.basis.name: r.scores for r in results}, threshold=None
    )
    _write_catalog(cfg, model, basis, results, summary)
    return DescribeResult(cfg.out, results[0], results[1:], summary)


class BasisRun(NamedTuple):
    basis: FeatureBasis
    features: list[int]
    """The units to analyse."""
    source: ContextSource
    """The contexts of the basis's site."""


def baselines(
    cfg: FeaturesConfig, model: Model, basis: DictionaryBasis, source: ContextSource
) -> list[BasisRun]:
    """The baselines of `basis`, each with `cfg.n_baseline` units, all on the same contexts: a
    seeded sample of the same layer's MLP neurons (left out, with a warning, where the MLP has
    no single down projection), an untrained dictionary of the same width and k, a seeded
    sample of the site's residual coordinates, and random directions."""
    mean = site_mean(source)
    n = cfg.n_baseline
    runs: list[BasisRun] = []
    mlp = _mlp_neurons(model, basis.site)
    if mlp is not None:
        picked = _sample(mlp.n_features, n, cfg.seed + 1)
        runs.append(BasisRun(mlp, picked, at_site(source, model, mlp.site)))
    untrained = DictionaryBasis(
        random_dictionary(basis.dictionary, mean, seed=cfg.seed + 1), untrained=True
    )
    # Untrained latents are exchangeable: the first n are as good a sample as any.
    runs.append(BasisRun(untrained, _first(untrained.n_features, n), source))
    residual = ResidualBasis(basis.site, mean)
    runs.append(BasisRun(residual, _sample(residual.n_features, n, cfg.seed), source))
    runs.append(BasisRun(RandomBasis(basis.site, mean, n, seed=cfg.seed), list(range(n)), source))
    return runs


def _mlp_neurons(model: Model, site: str) -> MLPNeuronBasis | None:
    try:
        return MLPNeuronBasis(model, parse_site(site).layer)
    except AimriError as e:
        log.warning("no MLP-neuron baseline: %s", e)
        return None


def _one_basis(
    cfg: FeaturesConfig,
    basis: FeatureBasis,
    features: list[int],
    model: Model,
    source: ContextSource,
    spec: ExampleSpec,
    client: ChatClient | None,
) -> BasisResult:
    t0 = time.perf_counter()
    fs = feature_statistics(basis, model, source, features=features, spec=spec)
    t_stats = time.perf_counter() - t0
    alive = [f for f in fs.features if f.density > 0]
    labels: list[Label] = []
    scores: list[Score] = []
    # One scorer per kind for the basis: scorers may cache work on its examples (embeddings).
    scorers = {
        s: make_scorer(s, client if s in LLM_PARTS else None, concurrency=cfg.llm.concurrency)
        for s in cfg.scorers
    }
    for name in cfg.explainers:
        made = make_explainer(name, cfg.llm, client=client).explain(alive)
        labels += made
        for scorer_name, scorer in scorers.items():
            if scorer_name == "rule" and name == "logits":
                continue  # a logits label names output tokens: "fires where they occur" is no claim of it
            scores += scorer.score(made, alive)
    log.info(
        "%s: %d features, %d labels, %d scores (statistics %.0fs, labels and scores %.0fs)",
        basis.info.name,
        len(fs.features),
        len(labels),
        len(scores),
        t_stats,
        time.perf_counter() - t0 - t_stats,
    )
    return BasisResult(fs, labels, scores)


def _write_catalog(
    cfg: FeaturesConfig,
    model: Model,
    basis: DictionaryBasis,
    results: list[BasisResult],
    summary: list[SummaryRow],
) -> None:
    identity = run_identity(cfg.dictionary, basis, model, catalog=cfg.out)
    with Catalog.create(cfg.out, identity) as catalog:
        for r in results:
            name = r.features.basis.name
            catalog.add_feature_set(r.features)
            catalog.add_labels(name, r.labels)
            catalog.add_scores(name, r.scores)
            rows = [dataclasses.asdict(row) for row in summary if row.basis == name]
            catalog.add_summary(name, "interpretability", rows)


def _source(cfg: FeaturesConfig, model: Model, site: str) -> ContextSource:
    if cfg.store is not None:
        return StoreContexts(ActivationStore(cfg.store), site, exclude_sinks=cfg.exclude_sinks)
    return ModelContexts(model, cfg.corpus, site, exclude_sinks=cfg.exclude_sinks)


def site_mean(source: ContextSource, max_tokens: int = 65_536) -> torch.Tensor:
    """Mean activation of the site over the first `max_tokens` tokens (sinks excluded)."""
    total, n = None, 0
    for batch in source:
        x = batch.acts[~batch.sink].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        n += len(x)
        if n >= max_tokens:
            break
    if total is None or n == 0:
        raise AimriError(f"no activations of '{source.site}' to describe: the source is empty")
    return (total / n).float()


def _first(n_total: int, n: int | None) -> list[int]:
    return list(range(n_total if n is None else min(n, n_total)))


def _sample(n_total: int, n: int, seed: int) -> list[int]:
    """A seeded sample of n of n_total units, in index order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values.tolist()
