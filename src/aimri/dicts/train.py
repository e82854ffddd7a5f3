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
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from aimri.config import DictConfig, TrainConfig
from aimri.dicts.checkpoint import (
    CHECKPOINT,
    TrainState,
    device_of,
    finished_steps,
    identity,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from aimri.dicts.codes import ACTIVATIONS
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.dicts.formats import save_dictionary
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


@dataclass
class _Run:
    cfg: TrainConfig
    state: TrainState
    history: list[dict[str, float]]
    resumed: int


def _train(cfgs: list[TrainConfig], source: BatchSource | None) -> list[TrainResult]:
    t0 = time.perf_counter()
    store = source or _open_store(cfgs[0])
    w = world()
    dict_cfgs = [dictionary_config(c, store) for c in cfgs]
    steps = max(_checked_steps(c, d, store) for c, d in zip(cfgs, dict_cfgs, strict=True))
    if all(finished_steps(c, d) == steps for c, d in zip(cfgs, dict_cfgs, strict=True)):
        return [_already_trained(c, steps, time.perf_counter() - t0) for c in cfgs]
    batches = _batches(cfgs, store)
    first = next(batches)
    runs = [_start(c, d, pair, steps) for c, d, pair in zip(cfgs, dict_cfgs, first, strict=True)]
    start = min(r.state.step for r in runs)
    if any(r.state.step != start for r in runs):
        raise AimriError(
            f"the checkpoints under '{cfgs[0].out.parent}' are at different steps: delete the "
            "checkpoint folders of the dictionaries ahead, or train them apart"
        )
    # The data position is the step: a resumed run skips the batches it has already seen.
    batches = itertools.islice(itertools.chain([first], batches), start, steps)
    bar = tqdm(total=steps, initial=start, unit="step", desc="train", disable=w.rank != 0 or None)
    t_train = time.perf_counter()
    for batch in batches:
        for run, (x, y) in zip(runs, batch, strict=True):
            _advance(run, x, y, steps, w)
        bar.set_postfix(
            fvu=f"{runs[0].history[-1]['fvu']:.3f}", l0=f"{runs[0].history[-1]['l0']:.1f}"
        )
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t_train
    for run in runs:
        if w.rank == 0:
            summary = {"training": _training_summary(run.cfg, run.state, steps)}
            save_dictionary(_final_dictionary(run.state), run.cfg.out, extra=summary)
        if not run.cfg.keep_checkpoint:
            remove_checkpoint(run.cfg)
    return [
        train_result(r.cfg, r.state.step, r.history, r.resumed, seconds, time.perf_counter() - t0)
        for r in runs
    ]


def _open_store(cfg: TrainConfig) -> ActivationStore:
    if cfg.store is None:
        raise AimriError("no training data: pass --store DIR (a store made by `aimri collect`)")
    return ActivationStore(cfg.store)


def _start(
    cfg: TrainConfig, dict_cfg: DictConfig, first: tuple[torch.Tensor, torch.Tensor], steps: int
) -> _Run:
    state = _resume_or_init(cfg, dict_cfg, first, steps)
    if state.step and world().rank == 0:
        truncate_metrics(cfg.out, state.step)
    return _Run(cfg, state, [], state.step)


def _advance(run: _Run, x: torch.Tensor, y: torch.Tensor, steps: int, w: Any) -> None:
    """One optimisation step of one dictionary, with its logging and checkpointing."""
    x, y = _scaled_share(x, y, run.state, w)
    row = _step(run.state, x, y, run.cfg, steps)
    run.history.append(row)
    if w.rank == 0 and (run.state.step % 10 == 0 or run.state.step == steps):
        _log_metrics(run.cfg.out, row)
    if run.state.step % run.cfg.checkpoint_every == 0 or run.state.step == steps:
        save_checkpoint(run.cfg, run.state)


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
    d_in = store.width(cfg.site)
    return DictConfig(
        architecture=cfg.architecture,
        d_in=d_in,
        d_sae=cfg.expansion * d_in,
        d_out=store.width(cfg.site_out) if cfg.site_out else None,
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


def _scaled_share(
    x: torch.Tensor, y: torch.Tensor, state: TrainState, w: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of the global batch, as float32 on the device, scaled."""
    device = state.dictionary.W_dec.device
    x, y = x[w.rank :: w.size], y[w.rank :: w.size]
    return x.to(device, torch.float32) * state.scale_in, y.to(
        device, torch.float32
    ) * state.scale_out


def learning_rate(cfg: TrainConfig, d_sae: int, step: int, steps: int) -> float:
    """The schedule every dictionary trains with: warm-up, constant, linear decay to zero; the
    base rate scales as 1/sqrt(d_sae) unless --optim.lr is given."""
    base = cfg.optim.lr or 2e-4 / math.sqrt(d_sae / 2**14)
    warm = max(1, int(cfg.optim.warmup_frac * steps))
    decay_start = int((1 - cfg.optim.decay_frac) * steps)
    if step < warm:
        return base * (step + 1) / warm
    if step >= decay_start:
        return base * max(0.0, (steps - step) / max(1, steps - decay_start))
    return base


def _step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, steps: int
) -> dict[str, float]:
    d = state.dictionary
    dead = state.since_fired >= cfg.optim.dead_after_tokens
    out = d(x, y, dead=dead if cfg.optim.aux_k_coeff > 0 else None)
    coeff = cfg.optim.sparsity_coeff
    if coeff is None:
        coeff = ACTIVATIONS[cfg.architecture].sparsity_coeff
    # Normalised by a fixed variance (of the first batch), not each batch's own, so that the
    # mean over data-parallel ranks equals the loss of the whole batch.
    mse = out.mse
    if cfg.matryoshka:  # mean reconstruction error over the nested prefixes and the whole
        prefix = [
            (d.decode(out.codes.prefix(m), x) - y).pow(2).sum(-1).mean() for m in cfg.matryoshka
        ]
        mse = (mse + sum(prefix)) / (1 + len(prefix))
    loss = (mse + coeff * out.sparsity + cfg.optim.aux_k_coeff * out.aux) / state.variance
    if not torch.isfinite(loss):
        raise AimriError(
            f"training diverged at step {state.step} (loss {loss.item()}): the last good "
            f"checkpoint in '{cfg.out / CHECKPOINT}' is kept; lower --optim.lr, or check the "
            "activation store for NaN/inf values"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients(d)
    d.remove_parallel_grad()
    lr = learning_rate(cfg, d.cfg.d_sae, state.step, steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    d.normalize_decoder()
    _count_firing(state, out.codes, cfg.optim.batch_size)
    state.step += 1
    return {
        "step": state.step,
        "tokens": state.step * cfg.optim.batch_size,
        "loss": float(loss.detach()),
        "fvu": float(out.fvu.detach()),
        "l0": float(out.codes.l0()),
        "aux": float(out.aux.detach()),
        "dead_frac": float((state.since_fired >= cfg.optim.dead_after_tokens).float().mean()),
        "lr": lr,
    }


def _average_gradients(d: Dictionary) -> None:
    if not dist.is_initialized():
        return
    for p in d.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)


def _count_firing(state: TrainState, codes: Any, global_batch: int) -> None:
    fired = torch.zeros_like(state.since_fired, dtype=torch.bool)
    if codes.idx is None:
        fired |= (codes.vals > 0).any(0)
    else:
        fired[codes.idx[codes.vals > 0]] = True
    if dist.is_initialized():
        f = fired.to(torch.int32)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        fired = f.bool()
    state.since_fired += global_batch
    state.since_fired[fired] = 0


def _geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=-1).clamp_min(1e-6)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m


def _resume_or_init(
    cfg: TrainConfig, dict_cfg: DictConfig, first: tuple[torch.Tensor, torch.Tensor], steps: int
) -> TrainState:
    ckpt = cfg.out / CHECKPOINT
    if (ckpt / "state.json").is_file():
        return load_checkpoint(cfg, dict_cfg, ckpt)
    device = device_of(cfg)
    d = build_dictionary(dict_cfg, sparse_kernels=cfg.sparse_kernels, seed=cfg.seed).to(device)
    x, y = (t.to(device, torch.float32) for t in first)
    # Inputs (and targets) scaled to mean norm sqrt(width); folded back into the weights on save.
    scale_in = math.sqrt(x.shape[1]) / float(x.norm(dim=-1).mean())
    scale_out = (
        scale_in
        if not dict_cfg.transcoder
        else math.sqrt(y.shape[1]) / float(y.norm(dim=-1).mean())
    )
    with torch.no_grad():
        d.b_dec.copy_(
            _geometric_median(y * scale_out) if not dict_cfg.transcoder else (y * scale_out).mean(0)
        )
    opt = torch.optim.Adam(d.parameters(), lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    since = torch.zeros(dict_cfg.d_sae, dtype=torch.long, device=device)
    y_scaled = y * scale_out
    variance = float((y_scaled - y_scaled.mean(0)).pow(2).sum(-1).mean())
    return TrainState(d, opt, 0, since, scale_in, scale_out, variance)


def _final_dictionary(state: TrainState) -> Dictionary:
    """A copy with the input scaling folded into the weights (users never see the scale)."""
    d = state.dictionary
    final = build_dictionary(d.cfg, sparse_kernels=d.sparse_kernels)
    final.load_state_dict(d.state_dict())
    final.fold_scale(state.scale_in, state.scale_out)
    return final.eval()


def _training_summary(cfg: TrainConfig, state: TrainState, steps: int) -> dict[str, Any]:
    return {
        "steps": state.step,
        "tokens": state.step * cfg.optim.batch_size,
        "store": str(cfg.store),
        "input_scale_folded": state.scale_in,
        "config": identity(cfg, state.dictionary.cfg)["train"],
    }


def _log_metrics(out: Path, row: dict[str, float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
