"""The scan's steering stage: a Golden Gate demonstration, judged against random directions.

1. One cheap pass over every feature of the dictionary on `N_TOKENS` ordinary tokens (the
   dictionary's own training activations when the scan collected them, else the corpus
   through the model), attention sinks and massive activations left out (`aimri.store.sinks`);
   the steering unit is the median norm of those ordinary tokens.
2. Concrete-concept candidates by the rule in `aimri.steer.candidates`; the best `N_PROBE`
   are probed causally, a few generate, one is chosen (`aimri.steer.golden_gate`).
3. The chosen feature's direction, random directions and neurons, all at the same norm, at
   several strengths; the verdict says whether the concept rose beyond random while the text
   stayed fluent. Not here: the measurements themselves (`aimri.steer`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict, cast

import torch
from torch import Tensor

from aimri.config import ScanConfig
from aimri.features.embed import load_embedder
from aimri.model.adapter import Model
from aimri.report.features import steering_view
from aimri.report.view import View
from aimri.scanner.dictionary import DICTIONARY, scan_dictionary
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import Method, Skipped, Stage
from aimri.steer.candidates import concept_candidates, top_tokens
from aimri.steer.golden_gate import (
    FLUENT_DISTINCT,
    FLUENT_PPL,
    N_NEURONS,
    N_RANDOM,
    Demonstration,
    Measures,
    choose,
    demonstrate,
    probe,
)
from aimri.store.manifest import read_manifest
from aimri.store.reader import ActivationStore, forward_batches
from aimri.store.sinks import find_sinks, model_special_ids

log = logging.getLogger(__name__)
N_TOKENS = 32_768
"""Tokens of the cheap pass over every feature."""
N_PROBE = 48
"""Candidates probed causally (teacher-forced on two short texts)."""


class SteeringScanned(TypedDict):
    """The pass over every feature: how many tokens, which unit, how many candidates."""

    site: str
    n_tokens: int
    n_sinks: int
    unit: float
    """The steering unit: the median norm of ordinary tokens at the site."""
    n_features: int
    n_candidates: int
    n_probed: int


class SteeringNone(SteeringScanned):
    """No concrete-concept feature to demonstrate with, and why."""

    skipped: str


class Generation(TypedDict):
    prompt: str
    text: str


class SteeringRow(TypedDict):
    """One strength: the feature, neurons and random directions measured alike (each measure
    as `steer.golden_gate.Measures`' fields)."""

    strength: float
    norm: float
    feature: dict[str, float]
    perplexity: float
    fluent: bool
    neurons_best: dict[str, float]
    """Each measure's best over the neurons."""
    random_p95: dict[str, float]
    beyond_random: bool
    demonstrates: bool
    generations: list[Generation]
    random_example: list[Generation]
    """A random direction's generations at the same norm."""


class SteeringCandidate(TypedDict):
    feature: int
    words: list[str]
    rise: float


class Demonstrated(TypedDict):
    feature: int
    concept: str
    words: list[str]
    mode: str
    baseline: dict[str, Any]
    """The unedited model: its `Measures`' fields, perplexity and generations."""
    rows: list[SteeringRow]
    demonstrated_at: float | None
    verdict: str


class SteeringResult(SteeringScanned, Demonstrated):
    candidates: list[SteeringCandidate]
    n_random: int
    n_neurons: int
    fluency_rule: dict[str, float]


def steering_stage(run: ScanRun) -> SteeringResult | SteeringNone | Skipped:
    cfg, model = run.cfg, run.model
    if not cfg.steer:
        return {"skipped": "turned off with --no-steer"}
    dictionary = scan_dictionary(run)
    if dictionary.cfg.transcoder:
        return {"skipped": "the scan's dictionary is a transcoder; steering needs an SAE"}
    site = dictionary.cfg.site
    t = time.perf_counter()
    xs, ids, n_sinks = _ordinary_tokens(cfg, model, run.layout.dict_activations, site)
    norms = cast(Tensor, xs.norm(dim=-1))  # pyright: ignore[reportUnknownMemberType]
    unit = float(norms.median())
    tops = top_tokens(dictionary, _chunks(ids, xs))
    embedder = load_embedder()
    candidates = concept_candidates(tops, model.tokenizer.decode, embedder)
    t = _lap(t, f"{len(candidates)} concept candidates among {dictionary.cfg.d_sae} features")
    probed = probe(model, site, dictionary, candidates[:N_PROBE], unit, seed=cfg.corpus.seed)
    t = _lap(t, f"{len(probed)} of {min(len(candidates), N_PROBE)} probed candidates kept")
    scanned: SteeringScanned = {
        "site": site,
        "n_tokens": len(ids),
        "n_sinks": n_sinks,
        "unit": unit,
        "n_features": dictionary.cfg.d_sae,
        "n_candidates": len(candidates),
        "n_probed": min(len(candidates), N_PROBE),
    }
    if not probed:
        return SteeringNone(
            **scanned,
            skipped=f"no concrete-concept feature among all {dictionary.cfg.d_sae:,} features "
            "(the rule wants rare features whose top tokens are two or more related words, and a "
            "direction that raises them no more harmfully than a random one): train the "
            "dictionary on more tokens",
        )
    chosen = choose(model, site, dictionary, probed, unit)
    demo = demonstrate(
        model, site, dictionary, chosen, unit, embedder=embedder, seed=cfg.corpus.seed
    )
    return SteeringResult(
        **scanned,
        **_demonstration_json(demo),
        candidates=[
            {"feature": p.candidate.index, "words": p.candidate.words[:5], "rise": p.rise}
            for p in probed[:6]
        ],
        n_random=N_RANDOM,
        n_neurons=N_NEURONS,
        fluency_rule={"distinct": FLUENT_DISTINCT, "perplexity": FLUENT_PPL},
    )


def verdict(demo: Demonstration) -> str:
    """One plain sentence: demonstrated or not, and why not."""
    at = demo.demonstrated_at
    if at is not None:
        return (
            f"Demonstrated: at {at:g} × the unit, feature #{demo.feature}'s generations turn to "
            f"“{demo.concept}” beyond 95% of random directions of the same norm, and stay fluent."
        )
    head = f"No demonstration with feature #{demo.feature} (“{demo.concept}”)"
    visible = [r for r in demo.rows if r.beyond_random and r.feature.mentions >= 0.5]
    if visible:
        r = visible[0]
        return (
            f"{head}: its generations turn to the concept beyond random directions only at "
            f"{r.strength:g} × the unit, where the text is no longer fluent (distinct tokens "
            f"{r.feature.distinct:.2f} against {demo.baseline.distinct:.2f} unsteered, "
            f"perplexity {r.perplexity:.1f} against {demo.baseline_perplexity:.1f})."
        )
    fluent = [r for r in demo.rows if r.fluent]
    if not fluent:
        why = "at every strength tried the text stopped being fluent"
    elif not any(r.beyond_random for r in fluent):
        why = "where the text stays fluent, the concept does not rise beyond random directions"
    else:
        why = "fewer than half the generations say the concept wherever it rises beyond random"
    return f"{head}: {why}."


def _demonstration_json(demo: Demonstration) -> Demonstrated:
    def gens(gs: Any) -> list[Generation]:
        return [{"prompt": g.prompt, "text": g.text} for g in gs]

    return {
        "feature": demo.feature,
        "concept": demo.concept,
        "words": demo.words[:6],
        "mode": "add",
        "baseline": {
            **dataclasses.asdict(demo.baseline),
            "perplexity": demo.baseline_perplexity,
            "generations": gens(demo.baseline_generations),
        },
        "rows": [
            {
                "strength": r.strength,
                "norm": r.strength * demo.unit,
                "feature": dataclasses.asdict(r.feature),
                "perplexity": r.perplexity,
                "fluent": r.fluent,
                "neurons_best": dataclasses.asdict(_best(r.neurons)),
                "random_p95": dataclasses.asdict(r.random_p95),
                "beyond_random": r.beyond_random,
                "demonstrates": r.demonstrates,
                "generations": gens(r.generations),
                "random_example": gens(r.random_example),
            }
            for r in demo.rows
        ],
        "demonstrated_at": demo.demonstrated_at,
        "verdict": verdict(demo),
    }


def _best(ms: list[Measures]) -> Measures:
    """Each measure's best over the neurons."""
    return Measures(
        max(m.logprob_rise for m in ms),
        max(m.similarity_rise for m in ms),
        max(m.mentions for m in ms),
        max(m.distinct for m in ms),
    )


def _ordinary_tokens(
    cfg: ScanConfig, model: Model, dict_store: Path, site: str
) -> tuple[Tensor, Tensor, int]:
    """([n, d] activations, [n] token ids, sinks left out) of the ordinary tokens of about
    N_TOKENS tokens' worth of whole contexts: a seeded sample of the dictionary's training store
    when the scan made one, else the corpus on the fly."""
    store = _dict_store(dict_store, site)
    if store is not None:
        special = store.special_ids
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        n = 0
        for i in range(store.n_shards):  # shards in order, until 4 × N_TOKENS to sample from
            parts.append(
                (store.load("tokens", i).long(), store.load("positions", i), store.load(site, i))
            )
            n += len(parts[-1][0])
            if n >= 4 * N_TOKENS:
                break
    else:
        special = model_special_ids(model.tokenizer, cfg.corpus.prepend_bos)
        corpus = dataclasses.replace(cfg.corpus, max_tokens=N_TOKENS)
        parts = [
            (b.tokens.long(), torch.arange(len(b.tokens)) % corpus.ctx_len, b.acts[site].cpu())
            for b in forward_batches(model, corpus, [site], batch_size=cfg.batch_size)
        ]
    tokens, positions, x = (torch.cat(p) for p in zip(*parts, strict=True))
    context = torch.cumsum(positions == 0, 0) - 1  # [N] which context each token is in
    n_ctx = int(context.max()) + 1
    g = torch.Generator().manual_seed(cfg.corpus.seed)
    take = torch.randperm(n_ctx, generator=g)[: max(1, N_TOKENS * n_ctx // len(tokens))]
    keep = torch.isin(context, take)
    tokens, positions, x = tokens[keep], positions[keep], x[keep].float()
    sink = find_sinks(tokens, positions, [x], special).sink
    return x[~sink], tokens[~sink], int(sink.sum())


def _lap(t: float, what: str) -> float:
    now = time.perf_counter()
    log.info("steering: %s (%.1fs)", what, now - t)
    return now


def _dict_store(path: Path, site: str) -> ActivationStore | None:
    """The dictionary's training activations, when the scan collected them for this site."""
    if not (path / "manifest.json").is_file() or not read_manifest(path).get("complete"):
        return None
    store = ActivationStore(path)
    return store if site in store.sites else None


def _chunks(ids: Tensor, xs: Tensor, size: int = 4096) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size], xs[i : i + size]


def _findings(stage: SteeringResult) -> list[Finding]:
    """The Golden Gate verdict, worded by the steering stage's own rule."""
    shown = stage["demonstrated_at"] is not None
    keys = ("strength", "fluent", "beyond_random", "demonstrates", "perplexity")
    return [
        Finding(
            id="steering-demonstration",
            title="A feature steers the text to its concept beyond random directions"
            if shown
            else "No feature was shown to steer the text to its concept beyond random directions",
            severity="info" if shown else "notice",
            summary=stage["verdict"],
            evidence={
                "feature": stage["feature"],
                "concept": stage["concept"],
                "rows": [
                    {
                        **{k: r[k] for k in keys},
                        "feature": r["feature"],
                        "random_p95": r["random_p95"],
                    }
                    for r in stage["rows"]
                ],
            },
        )
    ]


STEERING = Stage[SteeringResult](
    "steering",
    steering_stage,
    needs=(DICTIONARY,),
    findings=_findings,
    checked=lambda r: (
        f"steering with feature #{r['feature']} (of all {r['n_features']:,}) against "
        f"{r['n_random']} random directions and {r['n_neurons']} neurons at the same norm"
    ),
    method=lambda r, c: Method(
        "steering",
        "add a concept feature's direction at several norms beside random directions and "
        "neurons; concept log-probability and similarity, distinct tokens, perplexity",
        f"feature #{r['feature']} at {r['site']}, unit {r['unit']:.0f} (median ordinary norm)",
    ),
    view=View("steering.html.j2", steering_view, nav="Steering", styles=("features.css",)),
)
