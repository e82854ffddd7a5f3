"""The scan's one read: the corpus goes through the model once, and every stage that needs
activations is fed from that pass (`aimri.store.shared_read`).

Consumers, each with its own token budget (`Depth`):
- the statistics store (`activations/`: every residual site, for statistics, the logit lens
  and the attention heads);
- the feature-examples store (`activations-dict/`: the SAE's site and the MLP input of its
  layer, for the features stage and its MLP-neuron baseline);
- the SAE, trained on the stream in one pass over fresh tokens;
- the transcoders (one per layer, MLP input → MLP output), the same way.
The read runs at the precision the hardware computes fastest (`aimri.model.precision`); the
forward pass stops at the deepest site still wanted, so once the transcoders have their tokens
the rest of the SAE's tokens cost half a model. Nothing is cached on disk but the two small
stores. Not here: evaluation (the dictionary and circuits stages), the training maths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from aimri.config import CollectConfig, DictConfig, OptimConfig, ScanConfig, TrainConfig
from aimri.corpus.contexts import special_tokens
from aimri.dicts.checkpoint import finished_steps
from aimri.dicts.memory import Recall, memory_identity, recall, remember
from aimri.dicts.train import dictionary_config_for, train_result
from aimri.dicts.trainer import StreamTrainer, Trainer
from aimri.dicts.transcoder_set import member_configs, set_recipe
from aimri.model.adapter import Model
from aimri.model.precision import read_dtype
from aimri.model.sites import parse_site
from aimri.outputs import writer_lock
from aimri.store.collect import store_identity
from aimri.store.shared_read import Consumer, ReadResult, StoreWriter, shared_read
from aimri.store.sinks import special_ids

log = logging.getLogger(__name__)
SAE_BATCH = 512
SAE_LR = 2.2e-3
"""Batches of 512 at 2.2e-3: at 51,200 tokens (100 steps) training FVU 0.284 against 0.360
for the earlier batches of 1,024 at 1.5e-3 (50 steps), and 0.308 for batches of 512 at 1.5e-3
(benchmarks/bench_recipe.py, RESULTS.md 2026-12-08): at these budgets the SAE is short of
steps, not of tokens per step. (1.5e-3 itself was 4 × the trainer's width-scaled default:
held-out FVU 0.31 → 0.22 at 262,144 tokens, bench_tokens.py 2026-12-07.)"""
SAE_EXPANSION = 8
SAE_K = 32
TC_BATCH = 512
TC_LR = 2e-3
TC_SKIP = True
"""Transcoders with a linear skip (MLP input → output, as Gemma Scope 2's and circuit-tracer's
skip transcoders): at 51,200 tokens training FVU 0.42-0.49 against 0.57-0.65 without, at
layers 2, 15 and 28 (bench_recipe.py). The skip is part of the replacement model, so circuits
attribute through it exactly (`aimri.circuits.attribute`)."""
FEATURE_TOKENS = 81_920
"""Tokens of the SAE's site kept on disk for the features stage's examples."""


@dataclass(frozen=True)
class Depth:
    dict_tokens: int
    """Distinct tokens the SAE trains on (one pass)."""
    tc_tokens: int
    """Distinct tokens the transcoders train on (one pass)."""


DEPTHS: dict[str, Depth] = {
    "quick": Depth(dict_tokens=81_920, tc_tokens=16_384),
    "standard": Depth(dict_tokens=245_760, tc_tokens=65_536),
    "deep": Depth(dict_tokens=1_048_576, tc_tokens=327_680),
}
"""`--depth`: quick (the budgets of earlier scans), standard (the default: 3 × and 4 × quick's;
with skip transcoders, 5 × took the scan to 679 s on 2 CPU cores: the 30 transcoders' steps
cost 1.5 ms per token, more than the forward pass), deep (about an hour on 2 CPU cores; the built-in corpus holds about 300k tokens, so
deep repeats it: tokens beyond that are passes, not new text)."""


class DictTraining(TypedDict):
    architecture: str
    d_sae: int
    k: int
    steps: int
    tokens: int
    """Tokens trained on (steps × batch)."""
    distinct_tokens: int
    """Tokens of text the read handed over (each seen once)."""
    passes: int
    tokens_per_second: float
    fvu: float
    l0: float
    dead_fraction: float
    curve: dict[str, list[float]]
    earlier_scans: int
    """Earlier scans of this model whose SAE this one continued (the memory; 0: from scratch)."""
    all_tokens: int
    """Tokens the SAE has trained on over all those scans, this one included."""


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


class MemoryInfo(TypedDict):
    path: str
    """The memory entry (empty when nothing was trained or remembered)."""
    scans_before: int
    """Earlier scans whose dictionaries this one continued (0: trained from scratch)."""
    start_context: int
    """Context of the corpus's stream this read began at (fresh text for those dictionaries)."""
    tokens_before: dict[str, int]
    """Dictionary → tokens it had trained on before this scan."""
    tokens_now: dict[str, int]
    """Dictionary → tokens it has trained on, this scan included."""


class ReadInfo(TypedDict):
    dtype: str
    n_tokens: int
    seconds: float
    forward_seconds: float
    tokens_per_second: float
    """Tokens read per second of forward passes."""
    consumers: dict[str, int]
    """Consumer → tokens it was handed."""
    depth: str
    memory: NotRequired[MemoryInfo | None]
    """The memory of past scans (`aimri.dicts.memory`); None when --no-memory."""


@dataclass
class ReadProducts:
    """What the read leaves for later stages, typed: the SAE's and the transcoders' training
    (None where loaded, not trained, or already trained by an earlier run of this scan)."""

    info: ReadInfo
    sae: DictTraining | None
    transcoders: TranscoderTraining | None


def dict_site(cfg: ScanConfig, model: Model) -> str:
    return cfg.dict_site or f"blocks.{model.info.n_layers // 2}.hook_resid_post"


def depth_of(cfg: ScanConfig) -> Depth:
    d = DEPTHS[cfg.depth]
    return Depth(cfg.dict_tokens or d.dict_tokens, cfg.tc_tokens or d.tc_tokens)


def scan_read(cfg: ScanConfig, model: Model, root: Path) -> ReadProducts:
    """Run the read into the run folder `root` and train what needs training."""
    depth = depth_of(cfg)
    reader = model.at_dtype(read_dtype(cfg.read_dtype, model.device))
    special = special_ids(
        model.tokenizer, [special_tokens(model.tokenizer, cfg.corpus.prepend_bos).separator]
    )
    site = dict_site(cfg, model)
    named = _training_configs(cfg, model, site, root, depth)
    memory = _recall(cfg, model, named)
    start = 0
    if memory.recall is not None:  # continue the remembered dictionaries, on fresh text
        start = memory.recall.start
        named = {
            n: dataclasses.replace(c, continue_from=memory.recall.dictionary(n))
            for n, c in named.items()
        }
    n_examples = min(FEATURE_TOKENS, depth.dict_tokens)
    # The MLP's input at the SAE's layer rides along: the MLP-neuron baseline reads it.
    example_sites = (site, f"blocks.{parse_site(site).layer}.ln2.hook_normalized")
    stores = [
        _store(cfg, reader, root / "activations", "statistics", cfg.sites, cfg.corpus.max_tokens),
        _store(
            cfg, reader, root / "activations-dict", "feature examples", example_sites, n_examples
        ),
    ]
    for store in stores:
        if start:  # the stores say which text they hold
            store.identity["corpus"]["start_context"] = start
    sae_cfgs = [c for n, c in named.items() if n == "sae"]
    tc_cfgs = [c for n, c in named.items() if n != "sae"]
    sae = _stream_trainer("SAE", sae_cfgs, model, special, cfg.corpus.seed) if sae_cfgs else None
    tcs = (
        _stream_trainer("transcoders", tc_cfgs, model, special, cfg.corpus.seed + 2)
        if tc_cfgs
        else None
    )
    consumers: list[Consumer] = [*stores, *(c for c in (sae, tcs) if c is not None)]
    budget = max(cfg.corpus.max_tokens, n_examples, depth.dict_tokens, depth.tc_tokens)
    # A margin: sinks and special tokens are left out of training, so the trainers need a
    # little more text than their budget; each stops wanting batches once it has its steps.
    corpus = dataclasses.replace(cfg.corpus, max_tokens=int(budget * 1.1))
    with ExitStack() as stack:
        for store in stores:
            stack.enter_context(writer_lock(store.out, what="activation store"))
        r = shared_read(
            reader, corpus, consumers, batch_size=cfg.batch_size, desc="scan read", start=start
        )
        for store in stores:
            store.finish()
    sae_seconds = sae.finish() if sae is not None else 0.0
    tc_seconds = tcs.finish() if tcs is not None else 0.0
    info = _read_info(r, cfg.depth)
    info["memory"] = _remember(memory, named, r, start, (sae, tcs))
    return ReadProducts(
        info=info,
        sae=_sae_training(sae, r, sae_seconds, root, site, model, info["memory"])
        if sae is not None
        else None,
        transcoders=_tc_training(tcs, r, tc_seconds) if tcs is not None else None,
    )


def _training_configs(
    cfg: ScanConfig, model: Model, site: str, root: Path, depth: Depth
) -> dict[str, TrainConfig]:
    """What this scan trains, by name: `sae`, `transcoders/layer_<L>`."""
    named = {"sae": _sae_config(cfg, site, root, depth)} if cfg.dictionary is None else {}
    if cfg.circuits and cfg.transcoders is None:
        for c in _transcoder_configs(cfg, model, root / "transcoders", depth):
            named[f"transcoders/{c.out.name}"] = c
    return named


@dataclass(frozen=True)
class _Memory:
    identity: dict[str, Any] | None
    """None: the memory is off, or nothing here is trained."""
    recall: Recall | None


def _recall(cfg: ScanConfig, model: Model, named: dict[str, TrainConfig]) -> _Memory:
    if not cfg.memory or not named:
        return _Memory(None, None)
    widths = {s: model.site_width(s) for c in named.values() for s in (c.site, c.site_out) if s}
    dict_cfgs = {n: dictionary_config_for(c, widths) for n, c in named.items()}
    identity = memory_identity(model.weights_sha256, cfg.corpus, dict_cfgs)
    return _Memory(identity, recall(identity))


def _remember(
    memory: _Memory,
    named: dict[str, TrainConfig],
    r: ReadResult,
    start: int,
    trainers: tuple[StreamTrainer | None, ...],
) -> MemoryInfo | None:
    """Keep what this scan trained for the next scan; None when the memory is off."""
    if memory.identity is None:
        return None
    now = memory.recall
    trained = {t.name for t in trainers if t is not None and t.trainer.runs}
    steps = {
        cfg.out: run.state.step
        for t in trainers
        if t is not None
        for cfg, run in zip(t.trainer.cfgs, t.trainer.runs, strict=True)
    }
    if trained:  # an earlier run of this very scan may have trained (and remembered) them all
        tokens = {n: steps.get(c.out, 0) * c.optim.batch_size for n, c in named.items()}
        try:
            now = remember(
                memory.identity,
                {n: c.out for n, c in named.items()},
                start=start + r.contexts,
                tokens=tokens,
                before=memory.recall,
            )
        except OSError as e:  # the scan's own results stand; only the next scan loses out
            log.warning("could not remember this scan's dictionaries (%s): the next starts anew", e)
    return {
        "path": str(now.entry) if now else "",
        "scans_before": memory.recall.scans if memory.recall else 0,
        "start_context": start,
        "tokens_before": dict(memory.recall.tokens) if memory.recall else {},
        "tokens_now": dict(now.tokens) if now else {},
    }


def _store(
    cfg: ScanConfig, reader: Model, out: Path, name: str, sites: tuple[str, ...], n_tokens: int
) -> StoreWriter:
    names = reader.expand_sites(sites)
    collect_cfg = CollectConfig(
        out=out, model=cfg.model, corpus=cfg.corpus, sites=tuple(names), dtype=cfg.store_dtype
    )
    identity = store_identity(collect_cfg, reader, {s: reader.site_width(s) for s in names})
    identity["corpus"]["max_tokens"] = n_tokens
    special = special_ids(reader.tokenizer, [identity["special_tokens"]["separator"]])
    return StoreWriter(name, out, identity, names, n_tokens, special, overwrite=cfg.overwrite)


def _sae_config(cfg: ScanConfig, site: str, root: Path, depth: Depth) -> TrainConfig:
    return TrainConfig(
        site=site,
        out=root / "dicts" / site,
        architecture="topk",
        expansion=SAE_EXPANSION,
        k=SAE_K,
        optim=OptimConfig(batch_size=SAE_BATCH, tokens=_usable(cfg, depth.dict_tokens), lr=SAE_LR),
        device=cfg.model.device,
        overwrite=cfg.overwrite,
    )


def _transcoder_configs(
    cfg: ScanConfig, model: Model, out: Path, depth: Depth
) -> list[TrainConfig]:
    recipe = set_recipe(out).train
    optim = OptimConfig(batch_size=TC_BATCH, tokens=_usable(cfg, depth.tc_tokens), lr=TC_LR)
    glob_cfg = dataclasses.replace(
        recipe, optim=optim, skip=TC_SKIP, device=cfg.model.device, overwrite=cfg.overwrite
    )
    return member_configs(glob_cfg, model.sites)


def _stream_trainer(
    name: str, cfgs: list[TrainConfig], model: Model, special: tuple[int, ...], seed: int
) -> StreamTrainer | None:
    """A trainer for `cfgs`, or None when an earlier run of this scan finished them all."""
    widths = {s: model.site_width(s) for c in cfgs for s in (c.site, c.site_out) if s}
    dict_cfgs: list[DictConfig] = [dictionary_config_for(c, widths) for c in cfgs]
    steps = cfgs[0].optim.tokens // cfgs[0].optim.batch_size if cfgs[0].optim.tokens else 0
    if all(finished_steps(c, d) == steps for c, d in zip(cfgs, dict_cfgs, strict=True)):
        return None
    return StreamTrainer(name, Trainer(cfgs, dict_cfgs, steps), special, seed=seed)


def _usable(cfg: ScanConfig, tokens: int) -> int:
    """Training tokens in `tokens` of text: the BOS of each context is left out."""
    return tokens * (cfg.corpus.ctx_len - 1) // cfg.corpus.ctx_len


def _read_info(r: ReadResult, depth: str) -> ReadInfo:
    return {
        "dtype": r.dtype,
        "n_tokens": r.n_tokens,
        "seconds": round(r.seconds, 1),
        "forward_seconds": round(r.forward_seconds, 1),
        "tokens_per_second": round(r.n_tokens / r.forward_seconds, 1) if r.forward_seconds else 0,
        "consumers": r.tokens,
        "depth": depth,
    }


def _sae_training(
    sae: StreamTrainer,
    r: ReadResult,
    seconds: float,
    root: Path,
    site: str,
    model: Model,
    memory: MemoryInfo | None,
) -> DictTraining:
    run = sae.trainer.runs[0]
    result = train_result(run.cfg, run.state.step, run.history, run.resumed, seconds, seconds)
    out = root / "dicts" / site
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "architecture": "topk",
        "d_sae": SAE_EXPANSION * model.info.d_model,
        "k": SAE_K,
        "steps": result.steps,
        "tokens": result.tokens,
        "distinct_tokens": r.tokens.get(sae.name, 0),
        "passes": 1,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "fvu": result.fvu,
        "l0": result.l0,
        "dead_fraction": result.dead_fraction,
        "curve": {key: [row[key] for row in rows] for key in ("step", "fvu", "l0", "dead_frac")},
        "earlier_scans": memory["scans_before"] if memory else 0,
        "all_tokens": (memory["tokens_before"].get("sae", 0) if memory else 0) + result.tokens,
    }


def _tc_training(tcs: StreamTrainer, r: ReadResult, seconds: float) -> TranscoderTraining:
    results = [
        train_result(run.cfg, run.state.step, run.history, run.resumed, seconds, seconds)
        for run in tcs.trainer.runs
    ]
    first = tcs.trainer.cfgs[0]
    return {
        "tokens": r.tokens.get(tcs.name, 0),
        "passes": 1.0,
        "expansion": first.expansion,
        "k": first.k,
        "fvu": [x.fvu if math.isfinite(x.fvu) else float("nan") for x in results],
        "l0": [x.l0 for x in results],
        "dead_fraction": [x.dead_fraction for x in results],
        "seconds": round(seconds, 1),
    }
