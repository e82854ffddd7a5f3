"""Sparse dictionaries: one abstract `Dictionary`, two final kinds (SAE and transcoder).

Shapes (F = d_sae latents, D = d_in, O = d_out):
  W_enc [F, D]  one row per latent: its encoder direction (saved transposed, SAELens layout)
  b_enc [F]     W_dec [F, O] one row per latent: its decoder direction     b_dec [O]
  W_skip [D, O] transcoders with a linear skip only
pre = x_in @ W_enc.T + b_enc (the one dense product); the activation (TopK, BatchTopK, JumpReLU,
ReLU; see `codes.py`) picks the active latents; recon = codes @ W_dec + b_dec (+ x @ W_skip).
An SAE centres its input by b_dec (x_in = x − b_dec) and predicts x; a transcoder reads one
site and predicts another. Not here: optimisation, data, files (`train.py`, `formats.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, final

import torch
from torch import Tensor, nn

from aimri.config import DictConfig
from aimri.dicts.codes import ACTIVATIONS, Codes, Encoded, make_encoder
from aimri.dicts.sparse import dense_decode, sparse_decode


class ForwardOutput(NamedTuple):
    recon: Tensor
    """[N, d_out] reconstruction (SAE) or prediction (transcoder)."""
    codes: Codes
    mse: Tensor
    """Squared error summed over dimensions, mean over tokens."""
    fvu: Tensor
    """Fraction of the target's variance left unexplained."""
    sparsity: Tensor
    """Unscaled sparsity term (zero for TopK-family)."""
    aux: Tensor
    """Auxiliary-K loss: squared error (summed over dimensions, mean over tokens) of dead
    latents reconstructing the residual error; 0 if none are dead."""


class _Encoding(NamedTuple):
    pre: Tensor
    x_in: Tensor
    encoded: Encoded


class Dictionary(nn.Module, ABC):
    """A sparse dictionary; build `SparseAutoencoder` or `Transcoder` (via `build_dictionary`)."""

    def __init__(self, cfg: DictConfig, *, sparse_kernels: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.sparse_kernels = sparse_kernels
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(cfg.d_sae, cfg.out_width, generator=g)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        # Encoder starts as the decoder's transpose (same rows), a strong init for SAEs.
        W_enc = (
            W_dec.clone()
            if cfg.out_width == cfg.d_in
            else torch.randn(cfg.d_sae, cfg.d_in, generator=g) / cfg.d_in**0.5
        )
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_width))
        self.activation = ACTIVATIONS[cfg.architecture](cfg)

    @abstractmethod
    def encoder_input(self, x: Tensor) -> Tensor:
        """What the encoder reads, given the dictionary's input site activations."""

    def skip_out(self, x: Tensor) -> Tensor | None:
        return None

    def pre_activations(self, x: Tensor) -> Tensor:
        """[N, F] dense pre-activations, without gradient."""
        with torch.no_grad():
            return torch.addmm(self.b_enc, self.encoder_input(x), self.W_enc.T)

    def encode(self, x: Tensor) -> Codes:
        return self._encoding(x).encoded.codes

    def decode(self, codes: Codes, x: Tensor | None = None) -> Tensor:
        if codes.idx is None:
            out = codes.vals @ self.W_dec
        elif self.sparse_kernels:
            out = sparse_decode(codes.idx, codes.vals, self.W_dec)
        else:
            out = dense_decode(codes.idx, codes.vals, self.W_dec)
        skip = self.skip_out(x) if x is not None else None
        return out + self.b_dec + (skip if skip is not None else 0)

    def forward(
        self, x: Tensor, target: Tensor | None = None, dead: Tensor | None = None
    ) -> ForwardOutput:
        """x: [N, d_in]; target: [N, d_out] (default x); dead: [F] bool mask for auxiliary-K."""
        target = x if target is None else target
        pre, x_in, enc = self._encoding(x)
        recon = self.decode(enc.codes, x)
        err = recon - target
        total_var = (target - target.mean(0)).pow(2).sum(-1).mean()
        mse = err.pow(2).sum(-1).mean()
        aux = (
            self._aux_k(pre, x_in, err.detach(), dead, total_var)
            if dead is not None
            else mse.new_zeros(())
        )
        return ForwardOutput(recon, enc.codes, mse, mse / total_var, enc.sparsity, aux)

    def _encoding(self, x: Tensor) -> _Encoding:
        pre = self.pre_activations(x)
        x_in = self.encoder_input(x)
        select = make_encoder(self.W_enc, self.b_enc, pre, self.sparse_kernels)
        return _Encoding(pre, x_in, self.activation.encode(pre, select, x_in, self.W_dec))

    def _aux_k(
        self, pre: Tensor, x_in: Tensor, err: Tensor, dead: Tensor, total_var: Tensor
    ) -> Tensor:
        """Dead latents learn to predict the residual error (Gao et al. 2024, auxiliary-K)."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(self.cfg.d_in // 2, n_dead)
        masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
        idx = masked.topk(k_aux, dim=-1, sorted=False).indices
        vals = make_encoder(self.W_enc, self.b_enc, pre, self.sparse_kernels)(x_in, idx).relu()
        decode = sparse_decode if self.sparse_kernels else dense_decode
        aux_recon = decode(idx, vals, self.W_dec)
        return (aux_recon + err).pow(2).sum(-1).mean()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Decoder rows at unit norm (where the architecture keeps them so)."""
        if self.activation.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each decoder row, so the unit-norm constraint
        and the optimiser step do not fight."""
        if self.W_dec.grad is not None and self.activation.unit_decoder:
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(-1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def fold_scale(self, scale_in: float, scale_out: float) -> None:
        """Training saw x·scale_in and target·scale_out; fold both into the weights so that the
        dictionary reads and writes unscaled activations."""
        self.W_enc *= scale_in
        self.W_dec /= scale_out
        self.b_dec /= scale_out
        if isinstance(self, SparseAutoencoder):  # x_in = x − b_dec: b_dec lives in input space too
            assert abs(scale_in - scale_out) < 1e-12 * max(scale_in, 1.0)
        skip = getattr(self, "W_skip", None)
        if skip is not None:
            skip *= scale_in / scale_out


@final
class SparseAutoencoder(Dictionary):
    """Reconstructs its input site."""

    def encoder_input(self, x: Tensor) -> Tensor:
        return x - self.b_dec


@final
class Transcoder(Dictionary):
    """Predicts another site (the MLP's output) from its input site (the MLP's input)."""

    def __init__(self, cfg: DictConfig, *, sparse_kernels: bool = True, seed: int = 0) -> None:
        super().__init__(cfg, sparse_kernels=sparse_kernels, seed=seed)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.out_width)) if cfg.skip else None

    def encoder_input(self, x: Tensor) -> Tensor:
        return x

    def skip_out(self, x: Tensor) -> Tensor | None:
        return None if self.W_skip is None else x @ self.W_skip


def build_dictionary(cfg: DictConfig, *, sparse_kernels: bool = True, seed: int = 0) -> Dictionary:
    cls = Transcoder if cfg.transcoder else SparseAutoencoder
    return cls(cfg, sparse_kernels=sparse_kernels, seed=seed)
