"""The scan's dictionary stage: train (or load) an SAE for one site and evaluate it.

Collects the site alone (the forward pass stops there), trains a TopK SAE on several passes
over those tokens, and evaluates it on other text against PCA and random baselines of the same
size. Small by design (a few minutes on a laptop CPU): it shows the pipeline and honest
numbers, not a production dictionary. Not here: the training and evaluation themselves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypedDict

from aimri.config import (
    CollectConfig,
    EvalConfig,
    OptimConfig,
    ScanConfig,
    TrainConfig,
)
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import train
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.report.internals import dictionary_view
from aimri.report.view import View
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import Method, Result, Stage
from aimri.store.collect import collect
from aimri.store.manifest import read_manifest

PASSES = 3
"""Passes over the collected tokens: 3 keeps the default scan within 600 s on 2 cores (4 passes
cost ~35 s more for a slightly lower FVU)."""
BATCH = 1024
EVAL_TOKENS = 4096


class DictTraining(TypedDict):
    architecture: str
    d_sae: int
    k: int
    steps: int
    tokens: int
    passes: int
    tokens_per_second: float
    fvu: float
    l0: float
    dead_fraction: float
    curve: dict[str, list[float]]


class SinksLeftOut(TypedDict):
    """What the sink rule left out of the training tokens (`store.sinks`), decoded."""

    rule: str
    n_tokens: int
    n_identity: int
    special_tokens: list[str]
    n_massive: int
    median_norm: float
    threshold: float
    massive_tokens: list[list[Any]]
    """[token, count] pairs."""


class DictionaryResult(TypedDict):
    site: str
    path: str
    trained_here: bool
    training: DictTraining | None
    eval: dict[str, Any]
    """`dicts.evaluate` metrics, SAEBench's groups, FVU on ordinary tokens."""
    baselines: dict[str, Any]
    eval_tokens: int
    sinks: SinksLeftOut | None


def dictionary_stage(run: ScanRun) -> DictionaryResult:
    cfg, model, layout = run.cfg, run.model, run.layout
    site = cfg.dict_site or f"blocks.{model.info.n_layers // 2}.hook_resid_post"
    model.expand_sites([site])  # a clear error for a site this model lacks
    training: DictTraining | None = None
    if cfg.dictionary is not None:
        path = cfg.dictionary
        loaded = load_dictionary(path)
        if loaded.cfg.site and loaded.cfg.site != site and cfg.dict_site:
            raise AimriError(
                f"--dictionary reads '{loaded.cfg.site}' but --dict-site is '{site}': drop one"
            )
        site = loaded.cfg.site or site
    else:
        path = layout.dictionary(site)
        training = _train(cfg, model, layout.dict_activations, site, path)
    corpus = dataclasses.replace(cfg.corpus, max_tokens=EVAL_TOKENS, seed=cfg.corpus.seed + 1)
    result = evaluate(EvalConfig(dictionary=path, model=cfg.model, corpus=corpus), model=model)
    return {
        "site": site,
        "path": layout.relative(path),
        "trained_here": training is not None,
        "training": training,
        "eval": result.metrics,
        "baselines": result.baselines,
        "eval_tokens": EVAL_TOKENS,
        "sinks": _sinks(layout.dict_activations, site, model) if training else None,
    }


def _sinks(store: Path, site: str, model: Model) -> SinksLeftOut | None:
    """What the sink rule left out of the training tokens at `site`, with tokens decoded."""
    summary = read_manifest(store).get("sinks")
    if not summary or site not in summary["sites"]:
        return None
    s = summary["sites"][site]
    decode = lambda t: model.tokenizer.decode([int(t)])  # noqa: E731
    return {
        "rule": summary["rule"],
        "n_tokens": summary["n_tokens"],
        "n_identity": summary["n_identity"],
        "special_tokens": [decode(t) for t in summary["special_ids"]],
        "n_massive": s["n_massive"],
        "median_norm": s["median_norm"],
        "threshold": s["threshold"],
        "massive_tokens": [[decode(t), c] for t, c in s["massive_tokens"]],
    }


def _train(cfg: ScanConfig, model: Model, store: Path, site: str, out: Path) -> DictTraining:
    corpus = dataclasses.replace(cfg.corpus, max_tokens=cfg.dict_tokens)
    collect(
        CollectConfig(
            out=store,
            model=cfg.model,
            corpus=corpus,
            sites=(site,),
            dtype=cfg.store_dtype,
            batch_size=cfg.batch_size,
            overwrite=cfg.overwrite,
        ),
        model=model,
    )
    optim = OptimConfig(
        batch_size=BATCH,
        tokens=PASSES * cfg.dict_tokens * (cfg.corpus.ctx_len - 1) // cfg.corpus.ctx_len,
    )
    r = train(
        TrainConfig(
            store=store,
            site=site,
            out=out,
            architecture="topk",
            expansion=8,
            k=32,
            optim=optim,
            device=cfg.model.device,
        )
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "architecture": "topk",
        "d_sae": 8 * model.info.d_model,
        "k": 32,
        "steps": r.steps,
        "tokens": r.tokens,
        "passes": PASSES,
        "tokens_per_second": round(r.tokens_per_second, 1),
        "fvu": r.fvu,
        "l0": r.l0,
        "dead_fraction": r.dead_fraction,
        "curve": {key: [row[key] for row in rows] for key in ("step", "fvu", "l0", "dead_frac")},
    }


def _findings(stage: Result) -> list[Finding]:
    m = stage["eval"]
    score = lambda x: x["model_performance_preservation"]["ce_loss_score"]  # noqa: E731
    fvu = lambda x: x["reconstruction_quality"]["fvu"]  # noqa: E731
    pca = stage["baselines"].get("pca")
    versus = (
        f"; PCA of the same size: FVU {fvu(pca):.3f}, {100 * score(pca):.0f}% recovered"
        if pca
        else ""
    )
    return [
        Finding(
            id="dictionary-quality",
            title=f"A sparse dictionary for {stage['site']}",
            severity="info",
            summary=f"Spliced into the model it recovers {100 * score(m):.0f}% of the loss that "
            f"zero-ablating the site costs, with FVU {fvu(m):.3f} at L0 {m['sparsity']['l0']:.0f}{versus}.",
            evidence={
                "dictionary": m["model_performance_preservation"],
                "baselines": {
                    k: v["model_performance_preservation"] for k, v in stage["baselines"].items()
                },
            },
        )
    ]


DICTIONARY = Stage(
    "dictionary",
    dictionary_stage,
    findings=_findings,
    checked=lambda r: (
        f"a sparse dictionary at {r['site']}, against PCA and random baselines of the same size"
    ),
    sure=lambda r: (
        f"Spliced into the model in place of {r['site']}, the dictionary recovers "
        f"{100 * r['eval']['model_performance_preservation']['ce_loss_score']:.0f}% of the loss "
        "that zeroing the site costs."
    ),
    method=lambda r, c: Method(
        "sparse dictionary",
        "TopK SAE; FVU, L0, CE loss spliced in, against PCA and random; attention sinks and "
        "massive activations left out (their FVU shown apart)",
        f"site {r['site']}, {c.get('dict_tokens')} tokens",
    ),
    view=View("dictionary.html.j2", dictionary_view, nav="Dictionary"),
)
