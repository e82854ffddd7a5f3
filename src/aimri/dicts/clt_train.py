"""`aimri train --cross-layer`: fit one cross-layer transcoder to every layer at once.

The data are those of a per-layer transcoder set (`--site 'blocks.*.ln2.hook_normalized'
--site-out 'blocks.*.hook_mlp_out'`), read from one pass of the store: each batch holds every
layer's MLP input and output at the same tokens. The loss is the sum over layers of each
layer's squared error divided by its target's variance (of the first batch, as for every
dictionary), plus the activation's sparsity term and auxiliary-K. The practices of `train.py`
carry over: inputs and targets scaled per layer to mean norm sqrt(D) (folded into the weights
on save), decoders at unit norm with the parallel gradient removed, Adam with warm-up and a
final decay, checkpoints that resume bit for bit, data parallel under torchrun.
Not here: the CLT's maths (`clt.py`), its files (`clt_formats.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tqdm.auto import tqdm

from aimri._io import atomic_path, read_json, write_json_atomic
from aimri.config import TrainConfig
from aimri.dicts.checkpoint import (
    CHECKPOINT,
    adam_tensors,
    device_of,
    read_checkpoint,
    remove_checkpoint,
    restore_adam,
    train_identity,
    truncate_metrics,
)
from aimri.dicts.clt import CLTConfig, CrossLayerTranscoder
from aimri.dicts.clt_formats import save_clt
from aimri.dicts.codes import ACTIVATIONS
from aimri.dicts.train import TrainResult, learning_rate, total_steps, train_result
from aimri.dicts.transcoder_set import LayerPair, pair_by_layer
from aimri.distributed import world
from aimri.errors import AimriError
from aimri.store.reader import ActivationStore, BatchSource


@dataclass
class CLTState:
    clt: CrossLayerTranscoder
    optimizer: torch.optim.Adam
    step: int
    since_fired: torch.Tensor
    """[L, F] tokens since each latent last fired."""
    scale_in: torch.Tensor
    """[L] input scale of each layer."""
    scale_out: torch.Tensor
    variance: torch.Tensor
    """[L] variance of each layer's (scaled) targets in the first batch: the loss's normalisers."""


def train_clt(cfg: TrainConfig, source: BatchSource | None = None) -> list[TrainResult]:
    """Train the CLT `cfg` describes (site globs, `cross_layer=True`) into `cfg.out`."""
    t0 = time.perf_counter()
    store = source or _open_store(cfg)
    pairs = _pairs(cfg, store)
    clt_cfg = clt_config(cfg, store, pairs)
    steps = total_steps(cfg, store)
    if steps < 1:
        raise AimriError(
            f"the store holds too few tokens for one batch of {cfg.optim.batch_size}: lower "
            "--optim.batch-size or collect more tokens"
        )
    if _finished_steps(cfg, clt_cfg) == steps:  # a rerun of a finished training
        nan = math.nan
        return [TrainResult(cfg.out, steps, steps * cfg.optim.batch_size,
                            time.perf_counter() - t0, 0.0, nan, nan, nan, steps)]  # fmt: skip
    batches = _batches(cfg, store, pairs)
    first = next(batches)
    state = _resume_or_init(cfg, clt_cfg, first)
    w = world()
    if state.step and w.rank == 0:
        truncate_metrics(cfg.out, state.step)
    resumed = state.step
    history: list[dict[str, Any]] = []
    batches = itertools.islice(itertools.chain([first], batches), state.step, steps)
    bar = tqdm(total=steps, initial=state.step, unit="step", desc="train clt",
               disable=w.rank != 0 or None)  # fmt: skip
    t_train = time.perf_counter()
    for xs, ys in batches:
        row = _step(state, *_scaled_share(xs, ys, state, w), cfg, steps)
        history.append(row)
        if w.rank == 0 and (state.step % 10 == 0 or state.step == steps):
            _log_metrics(cfg.out, row)
        if state.step % cfg.checkpoint_every == 0 or state.step == steps:
            save_checkpoint(cfg, state)
        bar.set_postfix(fvu=f"{row['fvu']:.3f}", l0=f"{row['l0']:.1f}")
        bar.update(1)
    bar.close()
    train_s = time.perf_counter() - t_train
    if w.rank == 0:
        summary = {"training": {"steps": state.step, "tokens": state.step * cfg.optim.batch_size,
                                "store": str(cfg.store), "config": _identity(cfg, clt_cfg)["train"]}}  # fmt: skip
        save_clt(final_clt(state), cfg.out, extra=summary)
    if not cfg.keep_checkpoint:  # weights and Adam moments: about 3× the CLT on disk
        remove_checkpoint(cfg)
    return [train_result(cfg, state.step, history, resumed, train_s, time.perf_counter() - t0)]


def clt_config(cfg: TrainConfig, store: BatchSource, pairs: list[LayerPair]) -> CLTConfig:
    d = store.width(pairs[0].site_in)
    return CLTConfig(
        architecture=cfg.architecture,  # type: ignore[arg-type]
        n_layers=len(pairs),
        d_model=d,
        d_sae=cfg.expansion * d,
        k=cfg.k,
        site=cfg.site,
        site_out=cfg.site_out,
    )


def _pairs(cfg: TrainConfig, store: BatchSource) -> list[LayerPair]:
    if cfg.architecture == "relu":
        raise AimriError(
            "--architecture relu has no cross-layer form here: train the CLT with topk, "
            "batchtopk or jumprelu"
        )
    if cfg.skip or cfg.matryoshka or cfg.also_sites:
        raise AimriError(
            "--cross-layer trains without --skip, --matryoshka or --also-sites: leave them out"
        )
    if not cfg.site_out or "*" not in cfg.site or "*" not in cfg.site_out:
        raise AimriError(
            "--cross-layer needs the input and output site of every layer as globs: "
            "--site 'blocks.*.ln2.hook_normalized' --site-out 'blocks.*.hook_mlp_out'"
        )
    pairs = pair_by_layer(cfg.site, cfg.site_out, list(store.identity["sites"]))
    if [p.layer for p in pairs] != list(range(len(pairs))):
        raise AimriError(
            f"a CLT covers layers 0 to L-1 without gaps; the store has layers "
            f"{[p.layer for p in pairs]}: collect the sites of every layer"
        )
    return pairs


def _open_store(cfg: TrainConfig) -> ActivationStore:
    if cfg.store is None:
        raise AimriError("no training data: pass --store DIR (a store made by `aimri collect`)")
    return ActivationStore(cfg.store)


def _batches(
    cfg: TrainConfig, store: BatchSource, pairs: list[LayerPair]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per step ([L, N, D] inputs, [L, N, D] targets), in the same seeded order each time (the
    row order of a per-layer set's batches with the same seed)."""
    sites = [p.site_in for p in pairs] + [p.site_out for p in pairs]
    L = len(pairs)
    for p in itertools.count():
        joint = store.joint_batches(
            sites, cfg.optim.batch_size, seed=cfg.seed + p, exclude_sinks=cfg.exclude_sinks
        )
        for xs in joint:
            yield torch.stack(xs[:L]), torch.stack(xs[L:])


def _scaled_share(
    xs: torch.Tensor, ys: torch.Tensor, state: CLTState, w: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    device = state.clt.b_dec.device
    xs, ys = xs[:, w.rank :: w.size], ys[:, w.rank :: w.size]
    return (
        xs.to(device, torch.float32) * state.scale_in[:, None, None],
        ys.to(device, torch.float32) * state.scale_out[:, None, None],
    )


def _step(
    state: CLTState, xs: torch.Tensor, ys: torch.Tensor, cfg: TrainConfig, steps: int
) -> dict[str, Any]:
    clt = state.clt
    dead = state.since_fired >= cfg.optim.dead_after_tokens
    out = clt(xs, ys, dead=dead if cfg.optim.aux_k_coeff > 0 else None)
    coeff = cfg.optim.sparsity_coeff
    if coeff is None:
        coeff = ACTIVATIONS[cfg.architecture].sparsity_coeff
    mean_var = state.variance.mean()
    loss = (out.mse / state.variance).sum() + (
        coeff * out.sparsity + cfg.optim.aux_k_coeff * out.aux
    ) / mean_var
    if not torch.isfinite(loss):
        raise AimriError(
            f"CLT training diverged at step {state.step} (loss {loss.item()}): the last good "
            f"checkpoint in '{cfg.out / CHECKPOINT}' is kept; lower --optim.lr, or check the "
            "activation store for NaN/inf values"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if dist.is_initialized():
        for p in clt.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
    clt.remove_parallel_grad()
    lr = learning_rate(cfg, clt.cfg.d_sae, state.step, steps)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    clt.normalize_decoder()
    _count_firing(state, out.codes, cfg.optim.batch_size)
    state.step += 1
    return {
        "step": state.step,
        "tokens": state.step * cfg.optim.batch_size,
        "loss": float(loss.detach()),
        "fvu": float(out.fvu.detach().mean()),
        "fvu_per_layer": [round(float(f), 5) for f in out.fvu.detach()],
        "l0": float(sum(c.l0() for c in out.codes)),
        "aux": float(out.aux.detach()),
        "dead_frac": float((state.since_fired >= cfg.optim.dead_after_tokens).float().mean()),
        "lr": lr,
    }


def _count_firing(state: CLTState, codes: list, global_batch: int) -> None:
    fired = torch.zeros_like(state.since_fired, dtype=torch.bool)
    for layer, c in enumerate(codes):
        if c.idx is None:
            fired[layer] |= (c.vals > 0).any(0)
        else:
            fired[layer, c.idx[c.vals > 0]] = True
    if dist.is_initialized():
        f = fired.to(torch.int32)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        fired = f.bool()
    state.since_fired += global_batch
    state.since_fired[fired] = 0


def _new_optimizer(clt: CrossLayerTranscoder) -> torch.optim.Adam:
    """Adam, fused (one pass over each tensor: about 9× faster than the default on a CPU for
    a CLT's hundreds of millions of decoder weights, where the step would dominate)."""
    return torch.optim.Adam(clt.parameters(), lr=0.0, betas=(0.9, 0.999), eps=1e-8, fused=True)


def _resume_or_init(
    cfg: TrainConfig, clt_cfg: CLTConfig, first: tuple[torch.Tensor, torch.Tensor]
) -> CLTState:
    if (cfg.out / CHECKPOINT / "state.json").is_file():
        return load_checkpoint(cfg, clt_cfg)
    device = device_of(cfg)
    clt = CrossLayerTranscoder(clt_cfg, sparse_kernels=cfg.sparse_kernels, seed=cfg.seed)
    clt = clt.to(device)
    xs, ys = (t.to(device, torch.float32) for t in first)
    D = xs.shape[-1]
    scale_in = math.sqrt(D) / xs.norm(dim=-1).mean(-1)
    scale_out = math.sqrt(D) / ys.norm(dim=-1).mean(-1)
    y = ys * scale_out[:, None, None]
    with torch.no_grad():
        clt.b_dec.copy_(y.mean(1))
    since = torch.zeros(clt_cfg.n_layers, clt_cfg.d_sae, dtype=torch.long, device=device)
    variance = (y - y.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1)
    return CLTState(clt, _new_optimizer(clt), 0, since, scale_in, scale_out, variance)


def final_clt(state: CLTState) -> CrossLayerTranscoder:
    """A copy with the scaling folded into the weights."""
    clt = state.clt
    out = CrossLayerTranscoder(clt.cfg, sparse_kernels=clt.sparse_kernels)
    out.load_state_dict(clt.state_dict())
    out.fold_scale(state.scale_in.cpu(), state.scale_out.cpu())
    return out.eval()


def _finished_steps(cfg: TrainConfig, clt_cfg: CLTConfig) -> int | None:
    """The steps of a finished CLT at `cfg.out` trained with this very configuration, or None
    (none there, a checkpoint to resume instead, or --overwrite); another one is refused."""
    record = cfg.out / "aimri.json"
    if not record.is_file() or (cfg.out / CHECKPOINT).exists() or cfg.overwrite:
        return None
    training = read_json(record, "CLT record").get("training") or {}
    if training.get("config") != _identity(cfg, clt_cfg)["train"]:
        raise AimriError(
            f"'{cfg.out}' holds a finished CLT trained with another configuration: use "
            "another --out, or pass --overwrite to replace it"
        )
    return int(training.get("steps", 0)) or None


def _identity(cfg: TrainConfig, clt_cfg: CLTConfig) -> dict[str, Any]:
    return {"train": train_identity(cfg), "clt": dataclasses.asdict(clt_cfg)}


def save_checkpoint(cfg: TrainConfig, state: CLTState) -> None:
    if world().rank != 0:
        return
    ckpt = cfg.out / CHECKPOINT
    tensors = {
        f"param.{k}": v.detach().cpu().contiguous() for k, v in state.clt.state_dict().items()
    }
    tensors.update(adam_tensors(state.clt, state.optimizer))
    tensors["since_fired"] = state.since_fired.cpu()
    for name in ("scale_in", "scale_out", "variance"):
        tensors[name] = getattr(state, name).detach().cpu()
    with atomic_path(ckpt / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        ckpt / "state.json", {"step": state.step, "identity": _identity(cfg, state.clt.cfg)}
    )


def load_checkpoint(cfg: TrainConfig, clt_cfg: CLTConfig) -> CLTState:
    ckpt = cfg.out / CHECKPOINT
    meta, t = read_checkpoint(cfg, ckpt, _identity(cfg, clt_cfg))
    device = device_of(cfg)
    clt = CrossLayerTranscoder(clt_cfg, sparse_kernels=cfg.sparse_kernels, seed=cfg.seed)
    clt.load_state_dict(
        {k.removeprefix("param."): v for k, v in t.items() if k.startswith("param.")}
    )
    clt = clt.to(device)
    opt = _new_optimizer(clt)
    restore_adam(opt, clt, t)
    scales = [t[n].to(device) for n in ("scale_in", "scale_out", "variance")]
    return CLTState(clt, opt, int(meta["step"]), t["since_fired"].to(device), *scales)


def _log_metrics(out: Path, row: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
