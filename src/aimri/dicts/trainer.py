"""The one training loop for SAEs and transcoders: a `Trainer` takes one batch at a time.

`aimri train` drives it from a store (`train.py`: batches pulled in a seeded order), and the
scan's shared read drives it from batches a model pass hands over (`StreamTrainer`: pushed,
mixed through a small buffer, sinks left out). Either way each dictionary is stepped by the
same `_step` of `train.py`, checkpointed and resumed the same way, and saved the same way.
Not here: the optimisation step's maths (`train.py`), the read (`aimri.store.shared_read`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from aimri.config import DictConfig, TrainConfig
from aimri.dicts.checkpoint import (
    CHECKPOINT,
    TrainState,
    adam,
    device_of,
    identity,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from aimri.dicts.codes import ACTIVATIONS
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.dicts.formats import load_dictionary, read_record, save_dictionary
from aimri.distributed import world
from aimri.errors import AimriError
from aimri.store.reader import Mixer
from aimri.store.shared_read import ReadBatch
from aimri.store.sinks import find_sinks

log = logging.getLogger(__name__)
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Run:
    cfg: TrainConfig
    state: TrainState
    history: list[dict[str, float]]
    resumed: int


@dataclass
class Trainer:
    """Several dictionaries stepped together on the same batches (one (input, target) pair per
    dictionary per step), for `steps` steps. `start` needs the first batch (it sets the input
    scale and the decoder bias, or resumes from a checkpoint)."""

    cfgs: list[TrainConfig]
    dict_cfgs: list[DictConfig]
    steps: int
    runs: list[Run] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)

    def start(self, first: Sequence[Pair]) -> int:
        """Resume or initialise every dictionary; returns the step they resume from."""
        w = world()
        for cfg, dict_cfg, pair in zip(self.cfgs, self.dict_cfgs, first, strict=True):
            state = resume_or_init(cfg, dict_cfg, pair, self.steps)
            if state.step and w.rank == 0:
                truncate_metrics(cfg.out, state.step)
            self.runs.append(Run(cfg, state, [], state.step))
        start = min(r.state.step for r in self.runs)
        if any(r.state.step != start for r in self.runs):
            raise AimriError(
                f"the checkpoints under '{self.cfgs[0].out.parent}' are at different steps: "
                "delete the checkpoint folders of the dictionaries ahead, or train them apart"
            )
        self.t_start = time.perf_counter()
        return start

    @property
    def step(self) -> int:
        return self.runs[0].state.step if self.runs else 0

    @property
    def done(self) -> bool:
        return bool(self.runs) and self.step >= self.steps

    def advance(self, batch: Sequence[Pair]) -> None:
        """One optimisation step of every dictionary."""
        w = world()
        for run, (x, y) in zip(self.runs, batch, strict=True):
            advance(run, x, y, self.steps, w)

    def finish(self) -> float:
        """Save every dictionary (weights scale folded in); returns the training seconds."""
        seconds = time.perf_counter() - self.t_start
        for run in self.runs:
            if world().rank == 0:
                summary = {"training": training_summary(run.cfg, run.state, self.steps)}
                save_dictionary(final_dictionary(run.state), run.cfg.out, extra=summary)
            if not run.cfg.keep_checkpoint:
                remove_checkpoint(run.cfg)
        return seconds


class StreamTrainer:
    """A consumer of the shared read (`aimri.store.shared_read`): trains dictionaries on the
    activations it is handed, through a mixing buffer of `buffer_tokens` rows (token-level
    shuffle across contexts), with attention sinks and massive activations left out as
    `ActivationStream` does. It wants batches until `trainer.steps` steps are done; a resumed
    run is handed the same stream from its start and skips the steps it has done."""

    def __init__(
        self,
        name: str,
        trainer: Trainer,
        special: Sequence[int],
        *,
        buffer_tokens: int = 8192,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.trainer = trainer
        pairs = [(c.site, c.site_out or c.site) for c in trainer.cfgs]
        self.pairs = pairs
        self.sites = tuple(dict.fromkeys(s for p in pairs for s in p))
        widths = {}
        for cfg, d in zip(trainer.cfgs, trainer.dict_cfgs, strict=True):
            widths[cfg.site] = d.d_in
            if cfg.site_out:
                widths[cfg.site_out] = d.d_out or d.d_in
        self.widths = [widths[s] for s in self.sites]
        self.special = list(special)
        self.batch_size = trainer.cfgs[0].optim.batch_size
        self.mixer = Mixer(
            self.batch_size,
            torch.Generator().manual_seed(seed),
            max(buffer_tokens, 2 * self.batch_size),
        )
        self.batches_seen = 0
        self.start_step: int | None = None
        self.exclude_sinks = trainer.cfgs[0].exclude_sinks

    @property
    def wants(self) -> bool:
        return not self.trainer.done

    def consume(self, batch: ReadBatch) -> None:
        parts = [batch.acts[s] for s in self.sites]
        rows = torch.cat(parts, dim=-1)
        if self.exclude_sinks:
            rows = rows[~find_sinks(batch.tokens, batch.positions, parts, self.special).sink]
        for joint in self.mixer.push(rows):
            self._step(joint)

    def finish(self) -> float:
        """Flush the buffer into the last steps and save; returns the training seconds."""
        for joint in self.mixer.flush():
            self._step(joint)
        if self.trainer.runs and not self.trainer.done:
            log.warning(
                "the %s trained %d of %d steps: the read ended first (a short corpus); its "
                "learning rate did not finish decaying",
                self.name,
                self.trainer.step,
                self.trainer.steps,
            )
        if not self.trainer.runs:
            raise AimriError(
                f"the {self.name} got no batch: the corpus is too short for one batch of "
                f"{self.batch_size} tokens; use more tokens"
            )
        return self.trainer.finish()

    def _step(self, joint: torch.Tensor) -> None:
        if self.trainer.done:
            return
        by_site = dict(zip(self.sites, joint.split(self.widths, dim=-1), strict=True))
        pairs = [(by_site[x], by_site[y]) for x, y in self.pairs]
        if self.start_step is None:
            self.start_step = self.trainer.start(pairs)
        self.batches_seen += 1
        if self.batches_seen <= self.start_step:
            return  # done before an interruption: replayed, not retrained
        self.trainer.advance(pairs)


def advance(run: Run, x: torch.Tensor, y: torch.Tensor, steps: int, w: Any) -> None:
    """One optimisation step of one dictionary, with its logging and checkpointing."""
    x, y = _scaled_share(x, y, run.state, w)
    row = _step(run.state, x, y, run.cfg, steps)
    run.history.append(row)
    if w.rank == 0 and (run.state.step % 10 == 0 or run.state.step == steps):
        _log_metrics(run.cfg.out, row)
    if run.state.step % run.cfg.checkpoint_every == 0 or run.state.step == steps:
        save_checkpoint(run.cfg, run.state)


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


def resume_or_init(
    cfg: TrainConfig, dict_cfg: DictConfig, first: tuple[torch.Tensor, torch.Tensor], steps: int
) -> TrainState:
    ckpt = cfg.out / CHECKPOINT
    if (ckpt / "state.json").is_file():
        return load_checkpoint(cfg, dict_cfg, ckpt)
    device = device_of(cfg)
    x, y = (t.to(device, torch.float32) for t in first)
    if cfg.continue_from is not None:
        return _continued(cfg, dict_cfg, cfg.continue_from, y, device)
    d = build_dictionary(dict_cfg, sparse_kernels=cfg.sparse_kernels, seed=cfg.seed).to(device)
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
    return _fresh_state(d, y, scale_in, scale_out)


def _fresh_state(d: Dictionary, y: torch.Tensor, scale_in: float, scale_out: float) -> TrainState:
    """Step 0 of `d` (already in training scale): new Adam moments, no latent dead yet, the
    loss normalised by the variance of the first batch's targets."""
    opt = adam(d)
    since = torch.zeros(d.cfg.d_sae, dtype=torch.long, device=y.device)
    y_scaled = y * scale_out
    variance = float((y_scaled - y_scaled.mean(0)).pow(2).sum(-1).mean())
    return TrainState(d, opt, 0, since, scale_in, scale_out, variance)


def _continued(
    cfg: TrainConfig, dict_cfg: DictConfig, path: Path, y: torch.Tensor, device: torch.device
) -> TrainState:
    """A finished dictionary at `path`, back in the training scale it was trained at, as the
    start of this run (refused unless it is the same kind of dictionary)."""
    d = load_dictionary(path)
    if d.cfg != dict_cfg:
        raise AimriError(
            f"cannot continue training from '{path}': it is a {d.cfg.architecture} dictionary of "
            f"{d.cfg.d_sae} latents (k {d.cfg.k}) at '{d.cfg.site}', this run trains "
            f"{dict_cfg.architecture}, {dict_cfg.d_sae} latents (k {dict_cfg.k}) at "
            f"'{dict_cfg.site}'; drop --continue-from or train the same kind"
        )
    scales = read_record(path).get("training", {})
    scale_in, scale_out = scales.get("input_scale_folded"), scales.get("output_scale_folded")
    if not isinstance(scale_in, float) or not isinstance(scale_out, float):
        raise AimriError(
            f"cannot continue training from '{path}': its aimri.json does not record the scales "
            "it was trained at (it was not trained by this version of aimri); train anew"
        )
    d.fold_scale(1 / scale_in, 1 / scale_out)
    d.sparse_kernels = cfg.sparse_kernels
    return _fresh_state(d.to(device).train(), y, scale_in, scale_out)


def final_dictionary(state: TrainState) -> Dictionary:
    """A copy with the input scaling folded into the weights (users never see the scale)."""
    d = state.dictionary
    final = build_dictionary(d.cfg, sparse_kernels=d.sparse_kernels)
    final.load_state_dict(d.state_dict())
    final.fold_scale(state.scale_in, state.scale_out)
    return final.eval()


def training_summary(cfg: TrainConfig, state: TrainState, steps: int) -> dict[str, Any]:
    return {
        "steps": state.step,
        "tokens": state.step * cfg.optim.batch_size,
        "store": str(cfg.store),
        "input_scale_folded": state.scale_in,
        "output_scale_folded": state.scale_out,
        "config": identity(cfg, state.dictionary.cfg)["train"],
    }


def _log_metrics(out: Path, row: dict[str, float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
