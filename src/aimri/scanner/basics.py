"""The scan's first stages: read the model's activations, summarise them per site, and read
the residual stream through the unembedding (the logit lens).

Not here: the statistics and the lens themselves (`aimri.store.stats`, `aimri.store.lens`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

from aimri._io import to_jsonable
from aimri.report.internals import logit_lens_view, statistics_view
from aimri.report.view import View
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.read import ReadInfo, scan_read
from aimri.scanner.stage import Method, Stage
from aimri.store.lens import lens_over_store, lens_table, residual_sites
from aimri.store.reader import ActivationStore
from aimri.store.stats import site_statistics

LENS_PROMPTS = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Monday, Tuesday, Wednesday,",
)
SINK_RATIO = 5.0
MASSIVE_DIM_RATIO = 20.0


class ActivationsResult(TypedDict):
    path: str
    corpus: dict[str, Any]
    sites: dict[str, int]
    """Site → width."""
    dtype: str
    n_tokens: int
    n_shards: int
    tokens_per_second: float
    resumed_shards: int
    sample_contexts: list[str]
    read: ReadInfo
    """The one read that fed these statistics and the dictionaries."""


class StatisticsResult(TypedDict):
    sites: list[dict[str, Any]]
    """One `store.stats.SiteStats` per site."""


class LensResult(TypedDict):
    layers: list[dict[str, Any]]
    """One `store.lens.LensLayer` per residual site."""
    tables: list[dict[str, Any]]


def activations_stage(run: ScanRun) -> ActivationsResult:
    """The one read (`read.py`): stores for the statistics and feature examples, and the SAE
    and transcoders trained on the same pass."""
    cfg, model = run.cfg, run.model
    run.read = scan_read(cfg, model, run.layout.root)
    store = ActivationStore(run.layout.activations)
    tokens = store.load("tokens", 0)
    ctx_len = cfg.corpus.ctx_len
    samples = [model.tokenizer.decode(tokens[i * ctx_len : (i + 1) * ctx_len]) for i in range(3)]
    info = run.read.info
    return {
        "path": run.layout.relative(run.layout.activations),
        "corpus": to_jsonable(cfg.corpus),
        "sites": store.identity["sites"],
        "dtype": cfg.store_dtype,
        "n_tokens": store.n_tokens,
        "n_shards": store.n_shards,
        "tokens_per_second": info["tokens_per_second"],
        "resumed_shards": 0,
        "sample_contexts": samples,
        "read": info,
    }


def statistics_stage(run: ScanRun) -> StatisticsResult:
    store = ActivationStore(run.layout.activations)
    return {"sites": [dataclasses.asdict(s) for s in site_statistics(store)]}


def logit_lens_stage(run: ScanRun) -> LensResult:
    model = run.model
    store = ActivationStore(run.layout.activations)
    sites = residual_sites(store.sites)
    layers = lens_over_store(model, store)
    tables = [lens_table(model, p, sites, k=3) for p in LENS_PROMPTS] if sites else []
    return {
        "layers": [dataclasses.asdict(x) for x in layers],
        "tables": [dataclasses.asdict(t) for t in tables],
    }


def _statistics_findings(stage: StatisticsResult) -> list[Finding]:
    stats = stage["sites"]
    out: list[Finding] = []
    sinks = [(s["site"], s["bos_norm_ratio"]) for s in stats if s["bos_norm_ratio"] >= SINK_RATIO]
    if sinks:
        worst = max(sinks, key=lambda x: x[1])
        out.append(
            Finding(
                id="bos-norm-outlier",
                title="The first token's activations dwarf the rest (attention-sink signature)",
                severity="info",
                summary=f"At {len(sinks)} of {len(stats)} sites the norm at position 0 is at "
                f"least {SINK_RATIO:g}x the median norm elsewhere; largest {worst[1]:.1f}x at {worst[0]}. "
                "The scan leaves such tokens out of dictionary training and evaluation (attention sinks).",
                evidence={"sites": [{"site": s, "ratio": round(r, 2)} for s, r in sinks]},
            )
        )
    massive = [
        {"site": s["site"], "dim": d, "ratio": round(r, 1)}
        for s in stats
        for d, r in s["top_dims"]
        if r >= MASSIVE_DIM_RATIO
    ]
    if massive:
        dims = sorted({m["dim"] for m in massive})
        out.append(
            Finding(
                id="massive-dimensions",
                title="A few residual dimensions carry outsized activations",
                severity="info",
                summary=f"Dimensions {dims[:8]} have a mean |activation| at least "
                f"{MASSIVE_DIM_RATIO:g}x the median dimension's at {len({m['site'] for m in massive})} sites.",
                evidence={"dimensions": massive[:60]},
            )
        )
    return out


def _lens_findings(stage: LensResult) -> list[Finding]:
    # The last site's lens is the model's output itself, so it says nothing about formation.
    lens = stage["layers"][:-1]
    if not lens:
        return []
    formed = next((x for x in lens if x["agreement_with_model"] >= 0.5), None)
    best = max(lens, key=lambda x: x["agreement_with_model"])
    summary = (
        f"The logit lens first agrees with the model's own top prediction on most tokens "
        f"({100 * formed['agreement_with_model']:.0f}%) at {formed['site']}."
        if formed
        else f"No site before the last agrees with the model's top prediction on most "
        f"tokens; the closest is {best['site']} at {100 * best['agreement_with_model']:.0f}%: "
        "the prediction forms late, or in a basis the plain logit lens cannot read."
    )
    return [
        Finding(
            id="prediction-forms",
            title="Where the next-token prediction forms",
            severity="info",
            summary=summary,
            evidence={
                "layers": [{k: x[k] for k in ("site", "agreement_with_model")} for x in lens]
            },
        )
    ]


ACTIVATIONS = Stage[ActivationsResult](
    "activations",
    activations_stage,
    checked=lambda r: (
        f"{r['read']['n_tokens']:,} tokens of {r['corpus']['source']} text read once "
        f"(at {r['read']['dtype']}), feeding the statistics of {len(r['sites'])} sites "
        f"({r['n_tokens']:,} tokens) and the dictionaries"
    ),
    method=lambda r, c: Method(
        "activations",
        "one read: forward passes with read-only hooks, each batch handed to every consumer "
        "(statistics store, feature examples, SAE and transcoder training)",
        f"sites {c.get('sites')}, read at {r['read']['dtype']}, stored as {r['dtype']}; "
        f"depth {r['read']['depth']}",
    ),
)
STATISTICS = Stage[StatisticsResult](
    "statistics",
    statistics_stage,
    needs=(ACTIVATIONS,),
    findings=_statistics_findings,
    view=View(
        "statistics.html.j2", statistics_view, nav="Internals", anchor="internals", part="last"
    ),
)
LOGIT_LENS = Stage[LensResult](
    "logit_lens",
    logit_lens_stage,
    needs=(ACTIVATIONS,),
    findings=_lens_findings,
    checked=lambda r: (
        f"every residual layer read through the unembedding ({len(r['layers'])} layers)"
    ),
    view=View("logit_lens.html.j2", logit_lens_view, part="last"),
)
