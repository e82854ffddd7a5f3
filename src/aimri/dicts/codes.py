"""Activation functions of a dictionary: which latents are active, and their sparsity penalty.

A `Codes` value is either sparse (`idx` [N, m] with `vals` [N, m]; padding has value 0) or
dense (`vals` [N, d_sae], `idx` None). TopK and BatchTopK give sparse codes and use the sparse
kernels; JumpReLU and ReLU give dense codes. Activations are registered by name (`ACTIVATIONS`),
so a new one is a class and a line. Not here: weights and losses (see `dictionary.py`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from aimri.config import DictConfig
from aimri.dicts.sparse import dense_select_pre, select_pre


class Codes(NamedTuple):
    vals: Tensor
    """[N, m] active values (sparse) or [N, d_sae] all values (dense)."""
    idx: Tensor | None
    """[N, m] latent indices of `vals`, or None for dense codes."""

    def to_dense(self, d_sae: int) -> Tensor:
        if self.idx is None:
            return self.vals
        dense = torch.zeros(len(self.vals), d_sae, dtype=self.vals.dtype, device=self.vals.device)
        return dense.scatter_add(1, self.idx, self.vals)

    def prefix(self, m: int) -> Codes:
        """The same codes with every latent from index m on switched off (Matryoshka)."""
        if self.idx is None:
            return Codes(
                torch.cat([self.vals[:, :m], torch.zeros_like(self.vals[:, m:])], dim=1), None
            )
        return Codes(self.vals * (self.idx < m).to(self.vals.dtype), self.idx)

    def l0(self) -> Tensor:
        """Mean number of non-zero latents per token."""
        return (self.vals != 0).sum(-1).float().mean()


Encoder = Callable[[Tensor, Tensor], Tensor]
"""(x_in [N, d_in], idx [N, m]) -> pre-activations at idx with gradients; an empty 1-D idx
asks for all latents ([N, d_sae])."""
ALL = torch.empty(0, dtype=torch.long)


class Encoded(NamedTuple):
    codes: Codes
    sparsity: Tensor
    """Unscaled sparsity term for the loss: decoder-norm-weighted L1 (ReLU), an L0 surrogate
    (JumpReLU), zero for TopK-family (sparsity is structural)."""


class Activation(nn.Module, ABC):
    """Turns pre-activations into codes; owns any parameters of its own (thresholds).

    Each architecture also carries its facts, so that adding one is one class plus one line in
    `ACTIVATIONS` (and its name in `config.Architecture`, the CLI's list)."""

    saved_as: ClassVar[str]
    """The architecture its weights file is saved and reloaded as."""
    saelens_name: ClassVar[str]
    """SAELens's name for `saved_as` (cfg.json's "architecture")."""
    sparsity_coeff: ClassVar[float] = 0.0
    """Default weight of the `Encoded.sparsity` term in the loss."""
    unit_decoder: ClassVar[bool] = True
    """Decoder rows kept at unit norm while training."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @abstractmethod
    def encode(self, pre: Tensor, select: Encoder, x_in: Tensor, W_dec: Tensor) -> Encoded:
        """pre: [N, d_sae] computed without gradient; `select` recomputes chosen entries with one."""

    def state_for_save(self) -> dict[str, Tensor]:
        """Extra tensors saved with the weights, in SAELens names."""
        return {}


class TopK(Activation):
    saved_as, saelens_name = "topk", "topk"

    def encode(self, pre: Tensor, select: Encoder, x_in: Tensor, W_dec: Tensor) -> Encoded:
        idx = pre.topk(self.cfg.k, dim=-1, sorted=False).indices
        return Encoded(Codes(select(x_in, idx).relu(), idx), pre.new_zeros(()))


class BatchTopK(Activation):
    """k·N largest activations over the whole batch while training; at inference a learned
    threshold (running mean of the smallest kept activation) makes it batch-independent."""

    saved_as, saelens_name = "jumprelu", "jumprelu"  # how it runs at inference

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.threshold: Tensor
        self.seen: Tensor
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def encode(self, pre: Tensor, select: Encoder, x_in: Tensor, W_dec: Tensor) -> Encoded:
        if self.training:
            kth = pre.relu().flatten().topk(self.cfg.k * len(pre), sorted=False).values.min()
            keep = pre >= kth.clamp_min(torch.finfo(pre.dtype).tiny)
            with torch.no_grad():  # running mean of the smallest kept activation
                self.seen += 1
                self.threshold += (kth.clamp_min(0) - self.threshold) / self.seen.clamp_max(1000)
        else:
            keep = pre > self.threshold
        m = max(1, int(keep.sum(-1).max()))
        masked = torch.where(keep, pre, torch.full_like(pre, -math.inf))
        idx = masked.topk(m, dim=-1, sorted=False).indices
        on = keep.gather(1, idx).to(pre.dtype)
        return Encoded(Codes(select(x_in, idx).relu() * on, idx), pre.new_zeros(()))

    def state_for_save(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold.expand(self.cfg.d_sae).clone()}


class _StepSTE(torch.autograd.Function):
    """H(pre - θ) with a rectangle-kernel straight-through gradient for θ (Rajamanoharan+ 2024)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return None, -(grad * near / ctx.bandwidth).sum(0), None


class _JumpSTE(torch.autograd.Function):
    """pre · H(pre − θ); θ's gradient through the jump, −θ/ε · rectangle((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        on = (pre > theta).to(grad.dtype)
        near = ((pre - theta).abs() < ctx.bandwidth / 2).to(grad.dtype)
        return grad * on, -(grad * near * theta / ctx.bandwidth).sum(0), None


class JumpReLU(Activation):
    """pre · H(pre − θ) with a learned per-latent θ; sparsity is an L0 surrogate."""

    bandwidth = 0.05  # in units of the scaled input (mean norm sqrt(d_in))
    saved_as, saelens_name, sparsity_coeff = "jumprelu", "jumprelu", 1.0

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(0.1)))

    def encode(self, pre: Tensor, select: Encoder, x_in: Tensor, W_dec: Tensor) -> Encoded:
        theta = self.log_threshold.exp()
        pre_g = select(x_in, ALL)
        vals = _JumpSTE.apply(pre_g, theta, self.bandwidth)
        gate = _StepSTE.apply(pre_g.detach(), theta, self.bandwidth)
        return Encoded(Codes(vals, None), gate.sum(-1).mean())  # type: ignore[union-attr]

    def state_for_save(self) -> dict[str, Tensor]:
        return {"threshold": self.log_threshold.detach().exp()}


class ReLU(Activation):
    """relu(pre); sparsity is L1 weighted by each latent's decoder norm."""

    saved_as, saelens_name, sparsity_coeff = "relu", "standard", 5.0
    unit_decoder = False  # its L1 is weighted by the decoder norms instead

    def encode(self, pre: Tensor, select: Encoder, x_in: Tensor, W_dec: Tensor) -> Encoded:
        vals = select(x_in, ALL).relu()
        return Encoded(Codes(vals, None), (vals * W_dec.norm(dim=-1)).sum(-1).mean())


ACTIVATIONS: dict[str, type[Activation]] = {
    "topk": TopK,
    "batchtopk": BatchTopK,
    "jumprelu": JumpReLU,
    "relu": ReLU,
}


def make_encoder(W_enc: Tensor, b_enc: Tensor, pre: Tensor, sparse_kernels: bool) -> Encoder:
    """`select` for Activation.encode: sparse kernels, or the dense reference."""

    def select(x_in: Tensor, idx: Tensor) -> Tensor:
        if idx.dim() == 1:  # ALL: every latent, dense
            return x_in @ W_enc.T + b_enc
        if sparse_kernels:
            return select_pre(x_in, W_enc, b_enc, idx, pre)
        return dense_select_pre(x_in, W_enc, b_enc, idx)

    return select
