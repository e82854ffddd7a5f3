"""The scan's circuits stage: how the model reaches three answers, traced and checked.

Trains (or loads) a transcoder per layer from one pass of the model, then for each
demonstration prompt the model gets right (a factual recall, a two-hop recall, an induction
copy) builds the attribution graph, prunes it, checks its strongest edges by ablation in the
real model, names its features by what they write towards, and writes the graph in the JSON
that circuit-tracer's frontend and Neuronpedia read (`graphs/<slug>.json`). Beside the graphs:
the prompts' logit lens and the induction and previous-token heads.
Not here: attribution, validation, head scores themselves (`aimri.circuits`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypedDict

import torch

from aimri.circuits.heads import score_heads
from aimri.circuits.run import trace_prompt
from aimri.config import CollectConfig, ScanConfig
from aimri.dicts.train import train_many
from aimri.dicts.transcoder_set import load_transcoder_set, set_recipe
from aimri.model.adapter import Model
from aimri.report.circuits import circuits_scripts, circuits_view
from aimri.report.view import View
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import Method, Result, Skipped, Stage
from aimri.store.collect import collect
from aimri.store.lens import lens_table
from aimri.store.reader import ActivationStore

DEMOS = (
    ("capital-france", "Factual recall", "The capital of France is"),
    ("two-hop-madrid", "Two-hop recall", "People in the country whose capital is Madrid speak"),
    ("induction-name", "Induction (copying)", "Anna Krolikowska met Tom. Later, Anna Krol"),
)


class TranscoderTraining(TypedDict):
    tokens: int
    passes: float
    expansion: int
    k: int
    fvu: list[float]
    """Per layer, over the last 10% of training steps."""
    l0: list[float]
    dead_fraction: list[float]
    seconds: float


class TranscodersInfo(TypedDict):
    path: str
    n_layers: int
    d_sae: int
    k: int
    architecture: str
    training: TranscoderTraining | None


class PromptLens(TypedDict):
    prompt: str
    layers: list[int]
    top_tokens: list[list[str]]
    target_prob: list[float] | None


class CircuitsResult(TypedDict):
    transcoders: TranscodersInfo
    graphs: list[dict[str, Any]]
    """One record per traced prompt (`circuits.run.trace_prompt`)."""
    heads: dict[str, list[dict[str, Any]]]
    heads_method: str
    lens: list[PromptLens]


def circuits_stage(run: ScanRun) -> CircuitsResult | Skipped:
    cfg, model, layout = run.cfg, run.model, run.layout
    if not cfg.circuits:
        return {"skipped": "turned off with --no-circuits"}
    if cfg.transcoders is not None:
        path, training = cfg.transcoders, None
    else:
        path = layout.transcoders
        training = _train(cfg, model, layout.transcoder_activations, path)
    transcoders = load_transcoder_set(path, n_layers=model.info.n_layers)
    demos = [
        *DEMOS,
        *((f"prompt-{i}", "Your prompt", p) for i, p in enumerate(cfg.circuit_prompts)),
    ]
    graphs = [trace_prompt(model, transcoders, layout.graphs, *d).record for d in demos]
    for g in graphs:
        g["file"] = layout.relative(layout.graphs / g["file"])
    heads = score_heads(model, _text_ids(cfg, layout.activations))
    first = transcoders[0].cfg
    return {
        "transcoders": {
            "path": layout.relative(path),
            "n_layers": len(transcoders),
            "d_sae": first.d_sae,
            "k": first.k,
            "architecture": first.architecture,
            "training": training,
        },
        "graphs": graphs,
        "heads": {
            "induction": [h._asdict() for h in heads.top(10, "induction")],
            "previous_token": [h._asdict() for h in heads.top(10, "previous_token")],
        },
        "heads_method": "induction: mean attention to the token after the current token's "
        "earlier occurrence on 8 random 64-token sequences repeated twice; previous token: mean "
        "attention to the position before, on 8 contexts of the scan's corpus",
        "lens": [_prompt_lens(model, g["prompt"], g["target"]["token_id"]) for g in graphs],
    }


def _text_ids(cfg: ScanConfig, store: Path) -> torch.Tensor:
    """Up to 8 contexts of the scan's corpus, as token ids [n, ctx_len]."""
    tokens = ActivationStore(store).load("tokens", 0)
    ctx = cfg.corpus.ctx_len
    return torch.as_tensor(tokens[: 8 * ctx]).long().view(-1, ctx)


def _train(cfg: ScanConfig, model: Model, store: Path, out: Path) -> TranscoderTraining:
    corpus = dataclasses.replace(cfg.corpus, max_tokens=cfg.tc_tokens, seed=cfg.corpus.seed + 2)
    collect(
        CollectConfig(
            out=store,
            model=cfg.model,
            corpus=corpus,
            sites=("blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out"),
            dtype=cfg.store_dtype,
            batch_size=cfg.batch_size,
            overwrite=cfg.overwrite,
        ),
        model=model,
    )
    recipe = set_recipe(out, store=store)
    optim = recipe.train.optim
    assert optim.tokens is not None
    train_tokens = optim.tokens * cfg.tc_tokens // recipe.tokens
    scaled = dataclasses.replace(optim, tokens=train_tokens)
    train_cfg = dataclasses.replace(recipe.train, optim=scaled, device=cfg.model.device)
    results = train_many(train_cfg)
    return {
        "tokens": cfg.tc_tokens,
        "passes": round(train_tokens / cfg.tc_tokens, 2),
        "expansion": train_cfg.expansion,
        "k": train_cfg.k,
        "fvu": [r.fvu for r in results],
        "l0": [r.l0 for r in results],
        "dead_fraction": [r.dead_fraction for r in results],
        "seconds": round(max(r.seconds for r in results), 1),  # one shared run
    }


def _prompt_lens(model: Model, prompt: str, token_id: int) -> PromptLens:
    """Top token and the answer's probability after each layer, at the last position."""
    L = model.info.n_layers
    sites = [f"blocks.{layer}.hook_resid_post" for layer in range(L)]
    t = lens_table(model, prompt, sites, k=1, target=token_id)
    return {
        "prompt": prompt,
        "layers": list(range(L)),
        "top_tokens": t.top_tokens,
        "target_prob": t.target_prob,
    }


def _sure(r: Result) -> str:
    rs = [g["validation"]["pearson"] for g in r["graphs"] if g.get("validation")]
    rs = [x for x in rs if x is not None]
    if not rs:
        return "No graph was checked by intervention."
    return (
        f"Attribution graphs predict real ablations with Pearson r {min(rs):.2f}–{max(rs):.2f} "
        f"over {len(rs)} graphs."
    )


CIRCUITS = Stage(
    "circuits",
    circuits_stage,
    checked=lambda r: (
        f"{len(r['graphs'])} attribution graphs through "
        f"{r['transcoders']['n_layers']} transcoders, each checked by ablation"
    ),
    sure=_sure,
    method=lambda r, c: Method(
        "circuits",
        "attribution graphs through per-layer transcoders; edges checked by "
        "ablation in the real model. Per-layer rather than cross-layer: on SmolLM2 at equal "
        "total L0 and tokens a cross-layer transcoder fit better (held-out FVU 0.60 against "
        "0.75) but gave no better replacement or completeness and took 2.9x the training time "
        "(benchmarks/RESULTS.md, 2026-12-06; not re-measured in this run)",
        f"{r['transcoders']['n_layers']} transcoders, "
        f"d_sae {r['transcoders']['d_sae']}, k {r['transcoders']['k']}",
    ),
    data=lambda r, _: (
        "hand-written demonstration prompts: " + "; ".join(repr(g["prompt"]) for g in r["graphs"])
    ),
    view=View(
        "circuits.html.j2",
        circuits_view,
        nav="Circuits",
        styles=("circuits.css",),
        scripts=circuits_scripts,
    ),
)
