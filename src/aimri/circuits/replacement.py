"""The replacement model of one prompt: the model made linear around that prompt.

On a fixed prompt, attention patterns and normalisation scales are frozen at the values the
model computed, each MLP is replaced by its transcoder plus an error term (what the transcoder
misses, a constant), and each active feature is a node whose activation is held. The
transcoders are a `TranscoderStack`: one per layer, or a cross-layer transcoder whose features
write every later layer's MLP output too (then layer j's replacement output sums the writes of
the features of all layers ≤ j, and its error is what they all miss together). What is left
is linear in the residual stream, so the direct effect of any node on any other is a product
of the weights between them. This module builds that model and its two linear maps:

- `forward`: the frozen forward pass; with the error terms it reproduces the model's logits.
- `vjp_*`: vector-Jacobian products through one frozen attention block or norm, written as
  plain matrix products (no autograd), so attribution batches many targets at once and sweeps
  only each target's causal cone (positions after a target cannot feed it).

Families: any block of the form norm → attention → add → norm → MLP → add whose attention
value/output projections are found (`_VALUE_OUTPUT`). Both frozen parts are checked against
the model's own activations, so a family this code does not understand fails loudly.
Not here: which targets to sweep and what to keep (`attribute.py`), graphs (`graph.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from aimri.dicts.clt import TranscoderStack
from aimri.dicts.dictionary import Transcoder
from aimri.dicts.transcoder_set import as_stack
from aimri.errors import AimriError
from aimri.model.adapter import Model

# Families whose attention or normalisation this module cannot freeze, and why.
_UNSUPPORTED = {
    "gemma2": "its blocks normalise each branch's output (sandwich norms) and soft-cap logits",
    "gemma3": "its blocks normalise each branch's output (sandwich norms)",
    "gemma3_text": "its blocks normalise each branch's output (sandwich norms)",
    "gpt_neox": "attention and MLP read the same residual stream (parallel residual)",
    "gptj": "attention and MLP read the same residual stream (parallel residual)",
    "phi": "attention and MLP read the same residual stream (parallel residual)",
}


@dataclass(frozen=True)
class FrozenNorm:
    """A LayerNorm/RMSNorm with its per-position scale frozen: linear in its input."""

    scale: Tensor
    """[P] 1/rms (RMSNorm) or 1/std (LayerNorm) of the prompt's input at each position."""
    weight: Tensor
    """[D] effective gain (1 + w for Gemma's norm; read off the module, not assumed)."""
    bias: Tensor | None
    center: bool
    """LayerNorm subtracts the mean; RMSNorm does not."""

    def linear(self, x: Tensor) -> Tensor:
        """The linear part at positions 0..x.shape[-2]-1 (x: [..., P', D])."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        return x * self.scale[: x.shape[-2], None] * self.weight

    def linear_at(self, x: Tensor, pos: int) -> Tensor:
        """The linear part at one position, for a stack of vectors x [n, D]."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        return x * self.scale[pos] * self.weight

    def __call__(self, x: Tensor) -> Tensor:
        out = self.linear(x)
        return out if self.bias is None else out + self.bias

    def vjp(self, g: Tensor) -> Tensor:
        """Gradient w.r.t. the input given the gradient w.r.t. the output (transpose of
        `linear`; centring is symmetric)."""
        c = g * self.scale[: g.shape[-2], None] * self.weight
        return c - c.mean(-1, keepdim=True) if self.center else c


@dataclass(frozen=True)
class FrozenAttention:
    """Attention with its pattern frozen: out = W_O · (pattern @ (W_V · x + b_V)) + b_O."""

    pattern: Tensor
    """[H, P, P] attention probabilities (query, key) on the prompt."""
    W_V: Tensor
    """[H_kv · d_head, D] value projection (rows: output units)."""
    b_V: Tensor | None
    W_O: Tensor
    """[D, H · d_head] output projection."""
    b_O: Tensor | None
    n_kv: int
    sweep_dtype: torch.dtype = torch.float32
    """Dtype of the products in `vjp` (bfloat16: several times faster on CPUs with AVX-512
    BF16 or AMX, at about 3 significant digits; sums stay float32)."""

    @cached_property
    def _sweep_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        dt = self.sweep_dtype
        return self.W_O.to(dt), self.W_V.to(dt), self.pattern.to(dt)

    @property
    def n_heads(self) -> int:
        return self.pattern.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[1] // self.n_heads

    def head_outputs(self, x: Tensor) -> Tensor:
        """[P, H, D]: what each head adds to the residual stream (x: normalised input [P, D])."""
        P = x.shape[0]
        v = x @ self.W_V.T + (0 if self.b_V is None else self.b_V)
        v = v.view(P, self.n_kv, self.d_head).repeat_interleave(self.n_heads // self.n_kv, 1)
        z = torch.einsum("hqk,khd->qhd", self.pattern[:, :P, :P], v)
        W_O = self.W_O.view(-1, self.n_heads, self.d_head)
        return torch.einsum("qhd,ohd->qho", z, W_O)

    def __call__(self, x: Tensor) -> Tensor:
        return self.head_outputs(x).sum(1) + (0 if self.b_O is None else self.b_O)

    def vjp(self, g: Tensor) -> Tensor:
        """g [B, P', D] w.r.t. the output → [B, P', D] w.r.t. the (normalised) input."""
        B, P, _ = g.shape
        H, G = self.n_heads, self.n_heads // self.n_kv
        W_O, W_V, pattern = self._sweep_weights
        g_z = (g.to(W_O.dtype) @ W_O).view(B, P, H, self.d_head)
        g_v = torch.einsum("hqk,bqhd->bkhd", pattern[:, :P, :P], g_z)
        g_v = g_v.view(B, P, self.n_kv, G, self.d_head).sum(3)
        return (g_v.reshape(B, P, -1) @ W_V).float()


@dataclass(frozen=True)
class Replacement:
    """The linearised model of one prompt (see the module docstring). L layers, P positions,
    D = d_model, K = most active features at any (layer, position)."""

    input_ids: Tensor
    """[P]"""
    embed: Tensor
    """[P, D] the residual stream entering layer 0 (token embeddings, scaled as the model does)."""
    resid_pre: Tensor
    """[L, P, D] the residual stream entering each layer (what attention's queries and keys
    read; for QK attribution)."""
    ln1: list[FrozenNorm]
    attn: list[FrozenAttention]
    ln2: list[FrozenNorm]
    final_norm: FrozenNorm
    W_U: Tensor
    """[V, D] unembedding."""
    b_U: Tensor | None
    transcoders: TranscoderStack
    feat_idx: Tensor
    """[L, P, K] latent index of each active feature (0 in padding slots)."""
    feat_val: Tensor
    """[L, P, K] its activation (0 in padding slots, so padding adds nothing)."""
    mlp_in: Tensor
    """[L, P, D] what each transcoder reads."""
    error: Tensor
    """[L, P, D] the MLP's true output minus the transcoders' reconstruction of it."""
    frozen_out: Tensor
    """[L, P, D] MLP output held constant and not a node: everything the MLP writes at frozen
    positions (the BOS token's, whose features and error circuit-tracer also leaves out)."""
    logits: Tensor
    """[P, V] the model's own logits on the prompt."""

    @property
    def n_layers(self) -> int:
        return len(self.attn)

    def with_sweep_dtype(self, dtype: torch.dtype) -> Replacement:
        """The same model whose attribution sweeps multiply in `dtype`."""
        return replace(self, attn=[replace(a, sweep_dtype=dtype) for a in self.attn])

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    def writers(self, target: int) -> list[int]:
        """The layers whose features write into `target`'s MLP output, `target` itself last."""
        st = self.transcoders
        return [s for s in range(target) if target in st.reach(s)] + [target]

    def rows(self, source: int, target: int) -> Tensor:
        """[P, K, D] decoder rows (not scaled by activation) of each active slot of `source`
        into `target`'s MLP output."""
        return self.transcoders.decoder(source, target).detach()[self.feat_idx[source]].float()

    def own_rows(self, layer: int) -> Tensor:
        """[P, K+1, D]: `rows(layer, layer)` and, last, the error node's write."""
        return self._own_rows[layer]

    @cached_property
    def _own_rows(self) -> list[Tensor]:
        return [
            torch.cat([self.rows(j, j), self.error[j, :, None]], dim=1)
            for j in range(self.n_layers)
        ]

    def stream_writes(self, source: int, before: int) -> Tensor:
        """[P, K+1, D]: what each active feature of `source` (activation × decoder rows) and,
        last, its error node write into the residual stream below layer `before`."""
        out = (
            self.own_rows(source)
            * torch.cat(
                [self.feat_val[source], torch.ones_like(self.feat_val[source, :, :1])], dim=1
            )[..., None]
        )
        for target in self.transcoders.reach(source):
            if source < target < before:
                out[:, :-1] += self.rows(source, target) * self.feat_val[source, ..., None]
        return out

    def mlp_out(self, layer: int, x: Tensor, features: dict[int, Tensor] | None = None) -> Tensor:
        """The replacement MLP at `layer`: the writes of the active features of every layer
        that reaches it, + b_dec (+ skip) + error. `features` {layer: [P, K]} overrides the
        frozen activations (for interventions)."""
        features = features or {}
        out = self.transcoders.bias(layer).detach().float().expand_as(x).clone()
        for s in self.writers(layer):
            vals = features.get(s, self.feat_val[s])
            out = out + torch.einsum("pk,pkd->pd", vals, self.rows(s, layer))
        skip = self.transcoders.skip(layer)
        if skip is not None:
            out = out + x @ skip.detach().float()
        return out + self.error[layer] + self.frozen_out[layer]

    def forward(
        self,
        features: dict[int, Tensor] | None = None,
        edit_resid: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Logits [P, V] of the frozen replacement model. `features` {layer: [P, K]} replaces
        frozen activations; `edit_resid(layer, resid_mid)` may edit the stream before the MLP."""
        features = features or {}
        resid = self.embed
        for layer in range(self.n_layers):
            resid = resid + self.attn[layer](self.ln1[layer](resid))
            if edit_resid is not None:
                resid = edit_resid(layer, resid)
            x = self.ln2[layer](resid)
            resid = resid + self.mlp_out(layer, x, features)
        out = self.final_norm(resid) @ self.W_U.T
        return out if self.b_U is None else out + self.b_U


@torch.no_grad()
def build_replacement(
    model: Model,
    transcoders: Sequence[Transcoder] | TranscoderStack,
    input_ids: Tensor,
    *,
    freeze_bos: bool = False,
) -> Replacement:
    """Run the model once on `input_ids` [P] and freeze it around that prompt. With
    `freeze_bos` and a special token first (BOS), position 0's features and error are held as
    a constant instead of being nodes (as circuit-tracer does: the BOS position's huge residual
    stream is an attention sink, not part of the prompt's meaning)."""
    transcoders = as_stack(transcoders)
    check_transcoders(model, transcoders)
    family = model.info.family
    if family in _UNSUPPORTED:
        raise AimriError(
            f"cannot freeze a '{family}' model for attribution: {_UNSUPPORTED[family]}; "
            "attribution supports llama-style blocks (llama, mistral, qwen2, gemma, gpt2, ...)"
        )
    L = model.info.n_layers
    read = ["blocks.*.hook_resid_pre", "blocks.*.attn.hook_pattern", "blocks.*.hook_attn_out"]
    read += ["blocks.*.hook_resid_mid", "blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out"]
    read += [f"blocks.{L - 1}.hook_resid_post"]
    ids = input_ids.reshape(1, -1)
    run = model.run(ids, read=read)
    assert run.logits is not None
    act = {k: v[0].float() for k, v in run.acts.items()}

    def a(layer: int, kind: str) -> Tensor:
        return act[f"blocks.{layer}.{kind}"]

    ln1, attn, ln2 = [], [], []
    for layer, block in enumerate(model.layout.layers):
        children = dict(block.named_children())
        ln1_module = _first_norm(children, exclude=model.layout.block.ln2, family=family)
        ln1.append(_freeze_norm(ln1_module, a(layer, "hook_resid_pre"), family, "input norm"))
        x1 = ln1[-1](a(layer, "hook_resid_pre"))
        attn_module = children[model.layout.block.attn]
        attn.append(_freeze_attention(attn_module, model, a(layer, "attn.hook_pattern")))
        _check_close(attn[-1](x1), a(layer, "hook_attn_out"), family, f"layer {layer} attention")
        ln2_module = children[model.layout.block.ln2]
        ln2.append(_freeze_norm(ln2_module, a(layer, "hook_resid_mid"), family, "MLP norm"))
        _check_close(
            ln2[-1](a(layer, "hook_resid_mid")),
            a(layer, "ln2.hook_normalized"),
            family,
            f"layer {layer} MLP norm",
        )
    final = model.layout.final_norm
    if final is None:
        raise AimriError(f"this '{family}' model has no final norm that attribution can freeze")
    final_norm = _freeze_norm(final, a(L - 1, "hook_resid_post"), family, "final norm")
    mlp_in = torch.stack([a(layer, "ln2.hook_normalized") for layer in range(L)])
    feat_idx, feat_val, error = _features_and_errors(transcoders, mlp_in, act)
    frozen_out = torch.zeros_like(error)
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    if freeze_bos and int(input_ids.reshape(-1)[0]) in special:
        # Everything position 0's MLPs write but their bias and skip: features and error.
        for j in range(L):
            skip = transcoders.skip(j)
            frozen_out[j, 0] = a(j, "hook_mlp_out")[0] - transcoders.bias(j).detach().float()
            if skip is not None:
                frozen_out[j, 0] -= mlp_in[j, 0] @ skip.detach().float()
        feat_val[:, 0] = 0
        error[:, 0] = 0
    unembed = model.layout.unembed
    W_U = unembed.weight.detach().float()  # type: ignore[union-attr]
    b_U = getattr(unembed, "bias", None)
    return Replacement(
        input_ids=input_ids.reshape(-1).cpu(),
        embed=a(0, "hook_resid_pre"),
        resid_pre=torch.stack([a(layer, "hook_resid_pre") for layer in range(L)]),
        ln1=ln1,
        attn=attn,
        ln2=ln2,
        final_norm=final_norm,
        W_U=W_U,
        b_U=None if b_U is None else b_U.detach().float(),
        transcoders=transcoders,
        feat_idx=feat_idx,
        feat_val=feat_val,
        mlp_in=mlp_in,
        error=error,
        frozen_out=frozen_out,
        logits=run.logits[0].float(),
    )


def check_transcoders(model: Model, transcoders: TranscoderStack) -> None:
    """One transcoder (or CLT layer) per layer, reading the MLP input and writing the output."""
    L, D = model.info.n_layers, model.info.d_model
    if transcoders.n_layers != L:
        raise AimriError(
            f"attribution needs one transcoder per layer: this model has {L} layers and "
            f"{transcoders.n_layers} transcoders were given; train the missing layers "
            "(aimri train --transcoder for each layer)"
        )
    for layer in range(L):
        enc = transcoders.encoder(layer)
        out = transcoders.decoder(layer, layer)
        if enc.shape[1] != D or out.shape[1] != D:
            raise AimriError(
                f"transcoder {layer} maps {enc.shape[1]} → {out.shape[1]}; attribution needs "
                f"transcoders {D} → {D} (this model's d_model), reading the MLP input and "
                "predicting the MLP output"
            )
        want = (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        site, site_out = transcoders.sites(layer)
        if (site, site_out) != want and site:
            raise AimriError(
                f"transcoder {layer} reads '{site}' → '{site_out}', but attribution "
                f"needs '{want[0]}' → '{want[1]}': pass the transcoders in layer order "
                "(a cross-layer transcoder must read blocks.*.ln2.hook_normalized)"
            )


def _features_and_errors(
    transcoders: TranscoderStack, mlp_in: Tensor, act: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    codes = []
    for layer in range(transcoders.n_layers):
        x = mlp_in[layer].to(transcoders.encoder(layer).dtype)
        codes.append(transcoders.encode(layer, x))
    recon = transcoders.reconstruct(mlp_in, codes)
    error = torch.stack([act[f"blocks.{j}.hook_mlp_out"] for j in range(len(codes))]) - recon
    dense_all = [
        c.to_dense(transcoders.encoder(i).shape[0]).float().relu() for i, c in enumerate(codes)
    ]
    K = max(1, max(int((d > 0).sum(-1).max()) for d in dense_all))
    feat_val, feat_idx = zip(*(d.topk(K, dim=-1) for d in dense_all), strict=True)
    return torch.stack(feat_idx), torch.stack(feat_val), error


def _first_norm(children: dict[str, nn.Module], *, exclude: str, family: str) -> nn.Module:
    for name, m in children.items():
        if "norm" in type(m).__name__.lower() and name != exclude:
            return m
    raise AimriError(f"no attention input norm found in a '{family}' block")


def _freeze_norm(module: nn.Module, x: Tensor, family: str, what: str) -> FrozenNorm:
    """Freeze `module` at input x [P, D]; checked against the module's own output."""
    D = x.shape[-1]
    if isinstance(module, nn.LayerNorm):
        var = x.var(-1, unbiased=False)
        b = module.bias.detach().float() if module.bias is not None else None
        frozen = FrozenNorm((var + module.eps).rsqrt(), norm_gain(module, D), b, center=True)
    else:
        eps = _rms_eps(module)
        frozen = FrozenNorm((x.pow(2).mean(-1) + eps).rsqrt(), norm_gain(module, D), None, False)
    module_dtype = next(module.parameters()).dtype
    _check_close(frozen(x), module(x.to(module_dtype)).float(), family, what)
    return frozen


def norm_gain(module: nn.Module, d_model: int) -> Tensor:
    """[D] the effective per-dimension gain of a LayerNorm or RMS-style norm, read off the
    module itself (Gemma's norm multiplies by 1 + w, others by w): RMSNorm(ones) = gain/√(1+ε)."""
    if isinstance(module, nn.LayerNorm):
        return module.weight.detach().float() if module.weight is not None else torch.ones(d_model)
    probe = torch.ones(1, d_model, dtype=next(module.parameters()).dtype)
    return module(probe)[0].detach().float() * (1 + _rms_eps(module)) ** 0.5


def _rms_eps(module: nn.Module) -> float:
    return float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))


def _freeze_attention(module: nn.Module, model: Model, pattern: Tensor) -> FrozenAttention:
    family = model.info.family
    get = _VALUE_OUTPUT.get(family, _llama_value_output)
    W_V, b_V, W_O, b_O, n_kv = get(module, model)
    return FrozenAttention(pattern, W_V, b_V, W_O, b_O, n_kv)


ValueOutput = tuple[Tensor, Tensor | None, Tensor, Tensor | None, int]


def _llama_value_output(module: nn.Module, model: Model) -> ValueOutput:
    children = dict(module.named_children())
    if "v_proj" not in children or "o_proj" not in children:
        raise AimriError(
            f"cannot freeze attention in a '{model.info.family}' model: its attention module "
            f"({type(module).__name__}) has no v_proj/o_proj; add the family to "
            "aimri.circuits.replacement._VALUE_OUTPUT"
        )
    v: Any = children["v_proj"]
    o: Any = children["o_proj"]
    n_heads = model.info.n_heads
    head_dim = int(getattr(module, "head_dim", o.weight.shape[1] // n_heads))
    n_kv = int(v.weight.shape[0]) // head_dim
    return (_w(v.weight), _b(v), _w(o.weight), _b(o), n_kv)


def _gpt2_value_output(module: nn.Module, model: Model) -> ValueOutput:
    D = model.info.d_model
    c_attn: Any = module.c_attn  # Conv1D: y = x @ weight + bias
    c_proj: Any = module.c_proj
    W_V = _w(c_attn.weight)[:, 2 * D :].T
    b_V = _w(c_attn.bias)[2 * D :]
    return (W_V, b_V, _w(c_proj.weight).T, _w(c_proj.bias), int(model.info.n_heads))


_VALUE_OUTPUT: dict[str, Callable[[nn.Module, Model], ValueOutput]] = {
    "gpt2": _gpt2_value_output,
}


def _w(t: Tensor) -> Tensor:
    return t.detach().float()


def _b(m: nn.Module) -> Tensor | None:
    b = getattr(m, "bias", None)
    return None if b is None else _w(b)


def _check_close(ours: Tensor, theirs: Tensor, family: str, what: str) -> None:
    scale = theirs.abs().max().clamp_min(1e-6)
    err = float((ours - theirs).abs().max() / scale)
    if not err < 1e-3:
        raise AimriError(
            f"cannot freeze the {what} of this '{family}' model: the frozen version differs "
            f"from the model's own output by {err:.2g} (relative); this family's attention or "
            "normalisation is not the norm → attention → add → norm → MLP → add form that "
            "attribution supports"
        )
