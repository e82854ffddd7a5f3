"""Sparse kernels for TopK-family dictionaries (CPU: embedding_bag; any device: same ops).

With k active latents per token, three of a dictionary's products touch only N*k rows:
- decoder forward      recon[n]  = Σ_i v[n,i] · W_dec[idx[n,i]]            (embedding_bag)
- decoder backward     dW_dec[j] = Σ_{(n,i): idx=j} v[n,i] · g[n]          (sorted embedding_bag)
                       dv[n,i]   = g[n] · W_dec[idx[n,i]]                   (CSR sampled_addmm)
- encoder weight grad  dW_enc[j] = Σ_{(n,i): idx=j} g_pre[n,i] · x[n]     (sorted embedding_bag)
Only the encoder's forward stays dense. The trick for the weight gradients: sort the (latent,
token) pairs by latent, then a gradient row is a weighted bag of token rows — embedding_bag's
forward with the roles of "weight" and "output" swapped. Dense reference paths live beside
each function and tests check they agree. Not here: which latents are active (see `codes.py`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 256  # tokens per gather chunk (fallback path): keeps the [chunk, k, d] gather in cache


def scatter_rows(idx: Tensor, weights: Tensor, rows: Tensor, n_out: int) -> Tensor:
    """out[j] = Σ_{(n,i): idx[n,i]=j} weights[n,i] · rows[n]  → [n_out, d].

    idx, weights: [N, k]; rows: [N, d]. Sorting by latent turns this into one embedding_bag.
    """
    k = idx.shape[1]
    flat = idx.reshape(-1)
    order = torch.argsort(flat)
    token = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=n_out)
    offsets = torch.zeros(n_out, dtype=torch.long, device=idx.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return F.embedding_bag(
        token,
        rows,
        offsets,
        mode="sum",
        per_sample_weights=weights.reshape(-1)[order].to(rows.dtype),
    )


def gather_dot(idx: Tensor, table: Tensor, vecs: Tensor) -> Tensor:
    """out[n,i] = vecs[n] · table[idx[n,i]]  → [N, k]: a sampled dense-dense product (SDDMM).

    torch's CSR `sampled_addmm` computes only the N*k sampled entries (about 25x faster than
    gathering the rows on CPU); dtypes or builds without it take the chunked gather path.
    """
    n, k = idx.shape
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta")
            # Valid by construction (k columns per row, all in range): no invariant check.
            pattern = torch.sparse_csr_tensor(
                crow,
                idx.reshape(-1),
                torch.zeros(n * k, dtype=vecs.dtype, device=vecs.device),
                (n, table.shape[0]),
                check_invariants=False,
            )
            return (
                torch.sparse.sampled_addmm(pattern, vecs, table.T.to(vecs.dtype), beta=0.0)
                .values()
                .view(n, k)
            )
    except (RuntimeError, NotImplementedError):
        return _gather_dot_chunked(idx, table, vecs)


def _gather_dot_chunked(idx: Tensor, table: Tensor, vecs: Tensor) -> Tensor:
    out = torch.empty(idx.shape, dtype=vecs.dtype, device=vecs.device)
    for s in range(0, len(idx), _CHUNK):
        chunk = idx[s : s + _CHUNK]
        rows = table.index_select(0, chunk.reshape(-1)).view(*chunk.shape, -1)  # [c, k, d]
        out[s : s + _CHUNK] = torch.bmm(rows, vecs[s : s + _CHUNK, :, None]).squeeze(-1)
    return out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(idx, vals, W_dec)
        return F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals.to(W_dec.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        idx, vals, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        d_vals = gather_dot(idx, W_dec, grad) if ctx.needs_input_grad[1] else None
        d_W = scatter_rows(idx, vals, grad, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return None, d_vals, d_W


def sparse_decode(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """Σ_i vals[n,i] · W_dec[idx[n,i]]: [N, k] codes → [N, d_out], with sparse gradients."""
    return _SparseDecode.apply(idx, vals, W_dec)  # type: ignore[return-value]


def dense_decode(idx: Tensor, vals: Tensor, W_dec: Tensor) -> Tensor:
    """Reference for `sparse_decode`: scatter into a dense [N, d_sae] code, then matmul."""
    dense = torch.zeros(len(idx), W_dec.shape[0], dtype=vals.dtype, device=vals.device)
    return dense.scatter_add(1, idx, vals) @ W_dec


class _SelectPre(torch.autograd.Function):
    """Pre-activations at chosen latents, given the dense forward already computed them.

    forward returns pre[n, idx[n,i]] = x[n]·W_enc[idx] + b_enc[idx]; backward sends the
    gradient to W_enc, b_enc (and x) through the N*k chosen entries only.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, pre: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, W_enc, idx)
        ctx.n_latents = W_enc.shape[0]
        return pre.gather(1, idx)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        x, W_enc, idx = ctx.saved_tensors
        d_x = d_W = d_b = None
        if ctx.needs_input_grad[0]:
            d_x = F.embedding_bag(idx, W_enc, mode="sum", per_sample_weights=grad.to(W_enc.dtype))
        if ctx.needs_input_grad[1]:
            d_W = scatter_rows(idx, grad, x, ctx.n_latents)
        if ctx.needs_input_grad[2]:
            d_b = torch.zeros(ctx.n_latents, dtype=grad.dtype, device=grad.device)
            d_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return d_x, d_W, d_b, None, None


def select_pre(x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
    """[N, k] pre-activations at `idx`, differentiable w.r.t. x, W_enc [d_sae, d_in], b_enc."""
    return _SelectPre.apply(x, W_enc, b_enc, idx, pre)  # type: ignore[return-value]


def dense_select_pre(x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor) -> Tensor:
    """Reference for `select_pre`: the dense encoder with autograd, then a gather."""
    return (x @ W_enc.T + b_enc).gather(1, idx)
