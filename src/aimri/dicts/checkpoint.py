"""Training checkpoints: everything needed to continue a run bit for bit.

```
<out>/checkpoint/state.safetensors  parameters, Adam moments and steps, dead-latent counters
<out>/checkpoint/state.json         step, input scales, loss normaliser, the run's identity
```
A checkpoint of a run with another configuration is refused. Metric rows logged after the
checkpoint a run resumes from are dropped (they will be logged again).
Not here: the training loop (`train.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aimri._io import atomic_path, read_json, read_safetensors, write_json_atomic
from aimri.config import DictConfig, TrainConfig
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.distributed import world
from aimri.errors import AimriError

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"


@dataclass
class TrainState:
    dictionary: Dictionary
    optimizer: torch.optim.Adam
    step: int
    since_fired: torch.Tensor
    """[d_sae] tokens since each latent last fired."""
    scale_in: float
    scale_out: float
    variance: float
    """Total variance of the (scaled) targets of the first batch: the loss's normaliser."""


def train_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings that decide the result (not where, how often it saves, or
    whether it may replace): what a checkpoint and a finished dictionary are matched on."""
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    for setting in ("checkpoint_every", "keep_checkpoint", "device", "overwrite"):
        cfg_json.pop(setting, None)
    return cfg_json


def identity(cfg: TrainConfig, dict_cfg: DictConfig) -> dict[str, Any]:
    return {"train": train_identity(cfg), "dict": dataclasses.asdict(dict_cfg)}


def adam(module: torch.nn.Module) -> torch.optim.Adam:
    """The optimiser every dictionary trains with: Adam in torch's fused kernel (one pass
    over all parameters; on 2 CPU cores about 7× faster per step than the default loop, which
    at the scan's sizes cost more than the dictionaries' own maths). lr is set every step."""
    return torch.optim.Adam(module.parameters(), lr=0.0, betas=(0.9, 0.999), eps=1e-8, fused=True)


def adam_tensors(module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The Adam moments and steps of `module`'s parameters as `adam.<param>.*` tensors (what
    `restore_adam` puts back)."""
    out = {}
    for name, p in module.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            v = torch.as_tensor(value).detach().cpu()
            out[f"adam.{name}.{key}"] = v.reshape(-1) if key == "step" else v.contiguous()
    return out


def save_checkpoint(cfg: TrainConfig, state: TrainState) -> None:
    if world().rank != 0:
        return
    ckpt = cfg.out / CHECKPOINT
    tensors = {
        f"param.{k}": v.detach().cpu().contiguous()
        for k, v in state.dictionary.state_dict().items()
    }
    tensors.update(adam_tensors(state.dictionary, state.optimizer))
    tensors["since_fired"] = state.since_fired.cpu()
    with atomic_path(ckpt / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        ckpt / "state.json",
        {
            "step": state.step,
            "scale_in": state.scale_in,
            "scale_out": state.scale_out,
            "variance": state.variance,
            "identity": identity(cfg, state.dictionary.cfg),
        },
    )


def read_checkpoint(
    cfg: TrainConfig, ckpt: Path, expected_identity: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state.json, the tensors) of the checkpoint at `ckpt`, refused with the fix when it is
    damaged or belongs to a run of another configuration."""
    fix = "delete the checkpoint folder to start over"
    meta = read_json(ckpt / "state.json", "training checkpoint", fix=fix)
    if not isinstance(meta, dict) or "identity" not in meta:
        raise AimriError(f"training checkpoint '{ckpt / 'state.json'}' is damaged: {fix}")
    if meta["identity"] != expected_identity:
        raise AimriError(
            f"'{cfg.out}' holds a checkpoint of a training run with another configuration: use "
            f"another --out, or pass --overwrite to start over there (from Python: delete '{ckpt}')"
        )
    return meta, read_safetensors(ckpt / "state.safetensors", fix)


def restore_adam(
    opt: torch.optim.Optimizer, module: torch.nn.Module, tensors: dict[str, torch.Tensor]
) -> None:
    """Put the saved Adam moments and steps (`adam.<param>.*`) back into `opt`."""
    for name, p in module.named_parameters():
        if f"adam.{name}.exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"adam.{name}.step"].reshape(()).clone(),
                "exp_avg": tensors[f"adam.{name}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(p.device),
            }


def load_checkpoint(cfg: TrainConfig, dict_cfg: DictConfig, ckpt: Path) -> TrainState:
    meta, tensors = read_checkpoint(cfg, ckpt, identity(cfg, dict_cfg))
    device = device_of(cfg)
    d = build_dictionary(dict_cfg, sparse_kernels=cfg.sparse_kernels, seed=cfg.seed)
    d.load_state_dict(
        {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    )
    d = d.to(device)
    opt = adam(d)
    restore_adam(opt, d, tensors)
    log.info("resuming training at step %d from %s", meta["step"], ckpt)
    since = tensors["since_fired"].to(device)
    return TrainState(
        d, opt, int(meta["step"]), since, meta["scale_in"], meta["scale_out"], meta["variance"]
    )


def truncate_metrics(out: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint a run resumes from (they will be redone)."""
    path = out / "metrics.jsonl"
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(r + "\n" for r in rows))


def device_of(cfg: TrainConfig) -> torch.device:
    w = world()
    if cfg.device == "auto":
        return torch.device(f"cuda:{w.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def remove_checkpoint(cfg: TrainConfig) -> None:
    """Delete a completed run's checkpoint (the dictionary itself stays); rank 0 only."""
    if world().rank == 0:
        shutil.rmtree(cfg.out / CHECKPOINT, ignore_errors=True)


def finished_steps(cfg: TrainConfig, dict_cfg: DictConfig) -> int | None:
    """The steps of the finished dictionary at `cfg.out` trained with this very configuration
    (its aimri.json says so), or None (none there, or --overwrite): what lets a rerun find the
    work done once the checkpoint is gone. A finished one of another configuration is refused."""
    record = cfg.out / "aimri.json"
    if not record.is_file() or (cfg.out / CHECKPOINT).exists():
        return None
    training = read_json(record, what="dictionary record").get("training") or {}
    if not training or cfg.overwrite:
        return None
    if training.get("config") != identity(cfg, dict_cfg)["train"]:
        raise AimriError(
            f"'{cfg.out}' holds a finished dictionary trained with another configuration: use "
            "another --out, or pass --overwrite to replace it"
        )
    return int(training.get("steps", 0)) or None
