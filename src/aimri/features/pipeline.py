"""`aimri features describe`: statistics → labels → held-out scores → catalog, with baselines.

One function, `describe`, runs the stage for a dictionary: the dictionary's features, and (the
honest comparison) neurons and random directions at the same site, each through the same
statistics, explainers and scorers. Everything lands in one SQLite catalog. Not here: the
parts themselves (`stats.py`, `explain.py`, `score.py`, `catalog.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aimri.config import FeaturesConfig
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.features.basis import DictionaryBasis, FeatureBasis, NeuronBasis, RandomBasis
from aimri.features.catalog import Catalog, run_identity
from aimri.features.chat import ChatClient
from aimri.features.explain import make_explainer
from aimri.features.llm import make_client
from aimri.features.records import FeatureSet, Label, Score
from aimri.features.scorers import make_scorer
from aimri.features.sources import ContextSource, ModelContexts, StoreContexts
from aimri.features.stats import ExampleSpec, feature_statistics
from aimri.features.summary import SummaryRow, interpretability_summary
from aimri.model.adapter import Model
from aimri.model.load import load_model
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
    bases: list[tuple[FeatureBasis, list[int]]] = [(basis, chosen)]
    if cfg.baselines:
        mean = site_mean(source)
        n = cfg.n_baseline
        neurons = NeuronBasis(basis.site, mean)
        picked = torch.randperm(neurons.n_features, generator=_gen(cfg.seed))[:n].sort().values
        bases += [
            (neurons, picked.tolist()),
            (RandomBasis(basis.site, mean, n, seed=cfg.seed), list(range(n))),
        ]
    spec = spec or ExampleSpec(seed=cfg.seed)
    # One client for the whole run: explainer and judges share its cache and its accounts.
    client = make_client(cfg.llm) if LLM_PARTS & {*cfg.explainers, *cfg.scorers} else None
    results = [_one_basis(cfg, b, f, model, source, spec, client) for b, f in bases]
    summary = interpretability_summary(
        {r.features.basis.name: r.scores for r in results}, threshold=None
    )
    _write_catalog(cfg, model, basis, results, summary)
    return DescribeResult(cfg.out, results[0], results[1:], summary)


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


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
