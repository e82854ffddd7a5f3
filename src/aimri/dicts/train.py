"""`aimri train`: fit a sparse dictionary to stored activations.

The practices that matter for quality: decoder rows at unit norm (with the parallel gradient
removed), encoder initialised from the decoder, decoder bias at the geometric median of the
data, inputs scaled to mean norm sqrt(d_in) (folded back into the weights on save), Adam with
warm-up and a final linear decay, auxiliary-K revival of dead latents. Checkpoints hold
everything needed to continue bit for bit (weights, Adam state, dead-latent counters, the data
position); a resumed run equals an uninterrupted one. Under torchrun each rank trains on its
share of every batch and gradients are averaged (data parallel).
Not here: the dictionary's maths (`dictionary.py`), file layouts (`formats.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aimri.config import DictConfig, TrainConfig
from aimri.dicts.checkpoint import (
    finished_steps,
)
from aimri.dicts.trainer import Trainer, learning_rate
from aimri.dicts.transcoder_set import is_glob, member_configs
from aimri.distributed import world
from aimri.errors import AimriError
from aimri.store.reader import ActivationStore, BatchSource


@dataclass(frozen=True)
class TrainResult:
    path: Path
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    fvu: float
    """Mean FVU over the last 10% of steps (training data)."""
    l0: float
    dead_fraction: float
    resumed_from_step: int


__all__ = [
    "TrainResult",
    "dictionary_config",
    "dictionary_config_for",
    "learning_rate",
    "total_steps",
    "train",
    "train_many",
    "train_result",
]


def train(cfg: TrainConfig, source: BatchSource | None = None) -> TrainResult:
    """Train the dictionary `cfg` describes on `cfg.store`, or on `source` (e.g. an
    ActivationStream: a model on the fly). See `train_many` for `also_sites` and globs."""
    if cfg.also_sites or is_glob(cfg.site) or is_glob(cfg.site_out):
        raise AimriError(
            "also_sites and site globs train several dictionaries: call train_many (the CLI does)"
        )
    return _train([cfg], source)[0]


def train_many(cfg: TrainConfig, source: BatchSource | None = None) -> list[TrainResult]:
    """Several dictionaries from one pass over the data, each trained exactly as it would be
    alone (same batches, same order):
    - SAEs: one per site in [site, *also_sites], saved to `<out>/<site>/`;
    - transcoders: `site` and `site_out` globs (`blocks.*.ln2.hook_normalized`,
      `blocks.*.hook_mlp_out`) give one transcoder per layer, saved to `<out>/layer_<L>/`
      (read the set back with `load_transcoder_set`).
    """
    if cfg.site_out and cfg.also_sites:
        raise AimriError(
            "also_sites is for SAEs; for a transcoder per layer pass globs instead: "
            "--site 'blocks.*.ln2.hook_normalized' --site-out 'blocks.*.hook_mlp_out'"
        )
    if is_glob(cfg.site) or is_glob(cfg.site_out):
        store = source or _open_store(cfg)
        return _train(member_configs(cfg, list(store.identity["sites"])), store)
    if not cfg.also_sites:
        return [train(cfg, source)]
    sites = list(dict.fromkeys([cfg.site, *cfg.also_sites]))
    return _train(
        [dataclasses.replace(cfg, site=s, also_sites=(), out=cfg.out / s) for s in sites], source
    )


def _train(cfgs: list[TrainConfig], source: BatchSource | None) -> list[TrainResult]:
    t0 = time.perf_counter()
    store = source or _open_store(cfgs[0])
    dict_cfgs = [dictionary_config(c, store) for c in cfgs]
    steps = max(_checked_steps(c, d, store) for c, d in zip(cfgs, dict_cfgs, strict=True))
    if all(finished_steps(c, d) == steps for c, d in zip(cfgs, dict_cfgs, strict=True)):
        return [_already_trained(c, steps, time.perf_counter() - t0) for c in cfgs]
    trainer = Trainer(cfgs, dict_cfgs, steps)
    batches = _batches(cfgs, store)
    first = next(batches)
    start = trainer.start(first)
    # The data position is the step: a resumed run skips the batches it has already seen.
    batches = itertools.islice(itertools.chain([first], batches), start, steps)
    w = world()
    bar = tqdm(total=steps, initial=start, unit="step", desc="train", disable=w.rank != 0 or None)
    for batch in batches:
        trainer.advance(batch)
        last = trainer.runs[0].history[-1]
        bar.set_postfix(fvu=f"{last['fvu']:.3f}", l0=f"{last['l0']:.1f}")
        bar.update(1)
    bar.close()
    seconds = trainer.finish()
    return [
        train_result(r.cfg, r.state.step, r.history, r.resumed, seconds, time.perf_counter() - t0)
        for r in trainer.runs
    ]


def _open_store(cfg: TrainConfig) -> ActivationStore:
    if cfg.store is None:
        raise AimriError("no training data: pass --store DIR (a store made by `aimri collect`)")
    return ActivationStore(cfg.store)


def _checked_steps(cfg: TrainConfig, dict_cfg: DictConfig, store: BatchSource) -> int:
    """The number of steps, after refusing configurations that cannot train."""
    prefixes = list(cfg.matryoshka)
    if any(not 0 < m < dict_cfg.d_sae for m in prefixes) or prefixes != sorted(prefixes):
        raise AimriError(
            f"--matryoshka {' '.join(map(str, prefixes))}: prefix sizes must increase and "
            f"lie between 1 and d_sae-1 = {dict_cfg.d_sae - 1}"
        )
    steps = total_steps(cfg, store)
    if steps < 1 or _usable_tokens(cfg, store) < cfg.optim.batch_size:
        raise AimriError(
            f"the store holds too few tokens for one batch of {cfg.optim.batch_size}: lower "
            "--optim.batch-size or collect more tokens (raise --corpus.max-tokens; in a scan, "
            "raise --dict-tokens)"
        )
    return steps


def train_result(
    cfg: TrainConfig,
    step: int,
    history: Sequence[Mapping[str, Any]],
    resumed: int,
    train_s: float,
    total_s: float,
) -> TrainResult:
    """Summary over the last 10% of this run's steps."""
    tail = history[-max(1, len(history) // 10) :] or [
        {"fvu": math.nan, "l0": math.nan, "dead_frac": math.nan}
    ]
    trained = (step - resumed) * cfg.optim.batch_size
    return TrainResult(
        path=cfg.out,
        steps=step,
        tokens=step * cfg.optim.batch_size,
        seconds=total_s,
        tokens_per_second=trained / train_s if train_s > 0 else 0.0,
        fvu=sum(r["fvu"] for r in tail) / len(tail),
        l0=sum(r["l0"] for r in tail) / len(tail),
        dead_fraction=tail[-1]["dead_frac"],
        resumed_from_step=resumed,
    )


def _already_trained(cfg: TrainConfig, steps: int, seconds: float) -> TrainResult:
    """The result of a rerun that found this dictionary finished: nothing trained."""
    nan = math.nan
    return TrainResult(
        cfg.out, steps, steps * cfg.optim.batch_size, seconds, 0.0, nan, nan, nan, steps
    )


def dictionary_config(cfg: TrainConfig, store: BatchSource) -> DictConfig:
    sites = [s for s in (cfg.site, cfg.site_out) if s]
    return dictionary_config_for(cfg, {s: store.width(s) for s in sites})


def dictionary_config_for(cfg: TrainConfig, widths: Mapping[str, int]) -> DictConfig:
    """The dictionary `cfg` trains, given the widths of its sites."""
    d_in = widths[cfg.site]
    return DictConfig(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=cfg.expansion * d_in,
        d_out=widths[cfg.site_out] if cfg.site_out else None,
        k=cfg.k,
        transcoder=bool(cfg.site_out),
        skip=cfg.skip,
        site=cfg.site,
        site_out=cfg.site_out,
    )


def total_steps(cfg: TrainConfig, store: BatchSource) -> int:
    """Steps for the token budget (default: one pass; a larger budget makes more passes)."""
    return (cfg.optim.tokens or _usable_tokens(cfg, store)) // cfg.optim.batch_size


def _usable_tokens(cfg: TrainConfig, store: BatchSource) -> int:
    ctx_len = int(store.identity["ctx_len"])
    return store.n_tokens * (ctx_len - 1) // ctx_len if cfg.exclude_sinks else store.n_tokens


def _batches(
    cfgs: list[TrainConfig], store: BatchSource
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, one (input, target) pair per dictionary, in the same seeded order every time
    (resumption relies on it); pass p over the store is shuffled with seed + p. The row order
    does not depend on which sites ride along, so each dictionary sees what it would alone."""
    cfg = cfgs[0]
    pairs = [(c.site, c.site_out or c.site) for c in cfgs]
    sites = list(dict.fromkeys(s for pair in pairs for s in pair))
    for p in itertools.count():
        joint = store.joint_batches(
            sites, cfg.optim.batch_size, seed=cfg.seed + p, exclude_sinks=cfg.exclude_sinks
        )
        for xs in joint:
            by_site = dict(zip(sites, xs, strict=True))
            yield [(by_site[x], by_site[y]) for x, y in pairs]
