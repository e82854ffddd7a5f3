"""Cross-layer transcoders (CLTs): a latent reads one layer's MLP input and writes the MLP
outputs of that layer and every later one.

Shapes (L layers, F = d_sae latents per layer, D = d_model), circuit-tracer's layout:
  W_enc[l] [F, D]  b_enc[l] [F]   pre_l = x_l @ W_enc[l]ᵀ + b_enc[l]   (x_l: layer l's MLP input)
  W_dec[l] [F, L-l, D]            what latent f of layer l writes into layers l, l+1, ..., L-1
  b_dec [L, D]                    recon_j = Σ_{l ≤ j} codes_l @ W_dec[l][:, j-l] + b_dec[j]
Activations: `topk` (k per layer and token), `batchtopk` (k·L per token on average, chosen
over all layers of the batch at once; at inference one learned threshold), `jumprelu`
(per-latent thresholds, straight-through gradient, L0 penalty). Each latent's decoder, all
its L-l blocks together, is kept at unit norm (TopK-family), as a per-layer transcoder's row.

How it scales. Parameters: L·F·D (encoders) + L(L+1)/2·F·D (decoders): the decoder is
(L+1)/2 times a per-layer set's. Training holds each parameter 4 times (weights, gradient,
two Adam moments): 16·F·D·L(L+3)/2 bytes in float32, e.g. SmolLM2 (L = 30, D = 576) at
F = 1152: 5.7 GB; at F = 2304: 11.4 GB (a per-layer set at F = 2304: 1.3 GB). Compute per
token: the dense encoders L·F·D as for per-layer transcoders; the decoder k·D·L(L+1)/2 with
the sparse kernels (TopK-family) instead of k·D·L, and the optimiser step touches every
parameter, so with many layers the Adam step, not the forward pass, sets the pace.

`TranscoderStack` is what attribution needs of any set of MLP replacements: a CLT, or
per-layer transcoders (`transcoder_set.PerLayerTranscoders`).
Not here: training (`clt_train.py`), files (`clt_formats.py`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast, final

import torch
from torch import Tensor, nn

from aimri.config import DictConfig
from aimri.dicts.codes import Codes, JumpReLU, TopK, make_encoder
from aimri.dicts.sparse import dense_decode, sparse_decode
from aimri.errors import AimriError

CLTArchitecture = Literal["topk", "batchtopk", "jumprelu"]


class TranscoderStack(ABC):
    """MLP replacements for every layer, as attribution reads them: latents of layer `source`
    read that layer's MLP input and write the outputs of the layers in `reach(source)`."""

    n_layers: int

    @abstractmethod
    def encode(self, layer: int, x: Tensor) -> Codes:
        """Codes of layer `layer`'s latents for its MLP input x [N, D]."""

    @abstractmethod
    def encoder(self, layer: int) -> Tensor:
        """[F, D] encoder rows of layer `layer` (pre-activation = x · row + bias)."""

    @abstractmethod
    def decoder(self, source: int, target: int) -> Tensor:
        """[F, D] what each latent of `source` writes into layer `target`'s MLP output."""

    @abstractmethod
    def reach(self, source: int) -> range:
        """The layers whose MLP output the latents of `source` write."""

    @abstractmethod
    def bias(self, layer: int) -> Tensor:
        """[D] the constant part of layer `layer`'s replacement output."""

    def skip(self, layer: int) -> Tensor | None:
        """[D, D] linear skip path of layer `layer` (output = x @ skip), if any."""
        return None

    @abstractmethod
    def sites(self, layer: int) -> tuple[str, str]:
        """(input site, output site) of layer `layer`; empty strings if unrecorded."""

    def reconstruct(self, xs: Tensor, codes: list[Codes]) -> Tensor:
        """[L, N, D] every layer's replacement output for inputs xs [L, N, D] and `codes`."""
        out = torch.stack([self.bias(j).float().expand_as(xs[j]).clone() for j in range(len(xs))])
        for source, c in enumerate(codes):
            dense = c.to_dense(self.encoder(source).shape[0]).float()
            for target in self.reach(source):
                out[target] += dense @ self.decoder(source, target).float()
        for j in range(len(xs)):
            s = self.skip(j)
            if s is not None:
                out[j] += xs[j].float() @ s.float()
        return out


@dataclass(frozen=True, kw_only=True)
class CLTConfig:
    """The shape and kind of a cross-layer transcoder (saved beside its weights)."""

    architecture: CLTArchitecture = "topk"
    """`topk`, `batchtopk` or `jumprelu` (see the module docstring)."""
    n_layers: int
    d_model: int
    d_sae: int
    """Latents per layer."""
    k: int = 32
    """Active latents per layer and token (topk; batchtopk on average)."""
    site: str = "blocks.*.ln2.hook_normalized"
    """Input site pattern: layer l's encoder reads this site at layer l."""
    site_out: str = "blocks.*.hook_mlp_out"
    """Output site pattern: what the decoders write, at each layer."""

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "batchtopk", "jumprelu"):
            raise AimriError(
                f"architecture '{self.architecture}' has no cross-layer form: a CLT uses "
                "topk, batchtopk or jumprelu"
            )
        if min(self.n_layers, self.d_model, self.d_sae, self.k) < 1:
            raise AimriError("n_layers, d_model, d_sae and k of a CLT must be positive")
        if self.k > self.d_sae and self.architecture != "jumprelu":
            raise AimriError(f"k={self.k} exceeds the CLT's latents per layer d_sae={self.d_sae}")

    def layer_config(self) -> DictConfig:
        """One layer's encoder as a DictConfig (what the shared activation classes read)."""
        arch = "topk" if self.architecture == "batchtopk" else self.architecture
        k = min(self.k, self.d_sae)
        return DictConfig(architecture=arch, d_in=self.d_model, d_sae=self.d_sae, k=k)

    def site_at(self, layer: int) -> tuple[str, str]:
        return self.site.replace("*", str(layer)), self.site_out.replace("*", str(layer))

    @property
    def n_decoder_blocks(self) -> int:
        return self.n_layers * (self.n_layers + 1) // 2


class CLTOutput(NamedTuple):
    recon: Tensor
    """[L, N, D] every layer's reconstruction."""
    codes: list[Codes]
    """One Codes per layer."""
    mse: Tensor
    """[L] squared error summed over dimensions, mean over tokens, per layer."""
    fvu: Tensor
    """[L] fraction of each layer's target variance left unexplained."""
    sparsity: Tensor
    """Unscaled sparsity term (JumpReLU's L0 surrogate; zero for TopK-family)."""
    aux: Tensor
    """Auxiliary-K loss (dead latents predicting the error), summed over source layers."""


@final
class CrossLayerTranscoder(nn.Module, TranscoderStack):
    """See the module docstring."""

    def __init__(self, cfg: CLTConfig, *, sparse_kernels: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_layers = cfg.n_layers
        self.sparse_kernels = sparse_kernels
        L, F, D = cfg.n_layers, cfg.d_sae, cfg.d_model
        g = torch.Generator().manual_seed(seed)
        # One tensor per layer (not [L, F, D]): a slice of one parameter would make autograd
        # zero-fill a gradient of the whole [L, F, D] for every layer.
        self.W_enc = nn.ParameterList(
            [nn.Parameter(torch.randn(F, D, generator=g) / D**0.5) for _ in range(L)]
        )
        self.b_enc = nn.ParameterList([nn.Parameter(torch.zeros(F)) for _ in range(L)])
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.randn(F, L - s, D, generator=g)) for s in range(L)]
        )
        self.b_dec = nn.Parameter(torch.zeros(L, D))
        self.normalize_decoder()
        layer_cfg = cfg.layer_config()
        self.jump = (
            nn.ModuleList([JumpReLU(layer_cfg) for _ in range(L)])
            if cfg.architecture == "jumprelu"
            else None
        )
        self._topk = TopK(layer_cfg)
        self.threshold: Tensor  # batchtopk's inference threshold and its running count
        self.seen: Tensor
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def jump_at(self, layer: int) -> JumpReLU:
        """The JumpReLU (its thresholds) of layer `layer`; jumprelu CLTs only."""
        assert self.jump is not None, "only a jumprelu CLT has JumpReLU thresholds"
        return cast(JumpReLU, self.jump[layer])

    # ---- TranscoderStack ----
    def encoder(self, layer: int) -> Tensor:
        return self.W_enc[layer]

    def decoder(self, source: int, target: int) -> Tensor:
        return self.W_dec[source][:, target - source]

    def reach(self, source: int) -> range:
        return range(source, self.n_layers)

    def bias(self, layer: int) -> Tensor:
        return self.b_dec[layer]

    def sites(self, layer: int) -> tuple[str, str]:
        return self.cfg.site_at(layer)

    def encode(self, layer: int, x: Tensor) -> Codes:
        """Layer `layer`'s codes alone (batchtopk: its inference threshold)."""
        return self._encode_layers(x[None], [layer])[0][0]

    def encode_all(self, xs: Tensor) -> list[Codes]:
        """Codes of every layer for xs [L, N, D]."""
        return self._encode_layers(xs, list(range(self.n_layers)))[0]

    # ---- training ----
    def forward(self, xs: Tensor, targets: Tensor, dead: Tensor | None = None) -> CLTOutput:
        """xs, targets: [L, N, D] each layer's MLP input and output; dead: [L, F] bool."""
        codes, sparsity, pre = self._encode_layers(xs, list(range(self.n_layers)))
        recon = self.decode(codes)
        err = recon - targets
        mse = err.pow(2).sum(-1).mean(-1)
        total_var = (targets - targets.mean(1, keepdim=True)).pow(2).sum(-1).mean(-1)
        aux = self._aux_k(pre, xs, err.detach(), dead) if dead is not None else mse.new_zeros(())
        return CLTOutput(recon, codes, mse, mse / total_var, sparsity, aux)

    def decode(self, codes: list[Codes]) -> Tensor:
        """[L, N, D] reconstruction of every layer from every layer's codes."""
        L = self.n_layers
        parts: list[list[Tensor]] = [[] for _ in range(L)]
        for s, c in enumerate(codes):
            for j, w in zip(self.reach(s), self._write(s, c).unbind(1), strict=True):
                parts[j].append(w)
        return torch.stack([torch.stack(p).sum(0) + self.b_dec[j] for j, p in enumerate(parts)])

    def _write(self, source: int, codes: Codes) -> Tensor:
        """[N, L-source, D] what layer `source`'s codes write into each layer it reaches."""
        W = self.W_dec[source]
        flat = W.reshape(W.shape[0], -1)
        if codes.idx is None:
            out = codes.vals @ flat
        elif self.sparse_kernels:
            out = sparse_decode(codes.idx, codes.vals, flat)
        else:
            out = dense_decode(codes.idx, codes.vals, flat)
        return out.view(len(codes.vals), W.shape[1], W.shape[2])

    def _encode_layers(
        self, xs: Tensor, layers: list[int]
    ) -> tuple[list[Codes], Tensor, list[Tensor]]:
        """(codes per layer, sparsity term, dense pre-activations without gradient)."""
        with torch.no_grad():
            pre = [
                torch.addmm(self.b_enc[la], x, self.W_enc[la].T)
                for la, x in zip(layers, xs, strict=True)
            ]
        selects = [
            make_encoder(self.W_enc[la], self.b_enc[la], p, self.sparse_kernels)
            for la, p in zip(layers, pre, strict=True)
        ]
        arch = self.cfg.architecture
        if arch == "topk":
            # (TopK and JumpReLU ignore their last argument, the decoder ReLU's L1 reads.)
            enc = [
                self._topk.encode(p, s, x, self.W_enc[0])
                for p, s, x in zip(pre, selects, xs, strict=True)
            ]
            return [e.codes for e in enc], xs.new_zeros(()), pre
        if arch == "jumprelu":
            enc = [
                self.jump_at(la).encode(p, s, x, self.W_enc[0])
                for la, p, s, x in zip(layers, pre, selects, xs, strict=True)
            ]
            return [e.codes for e in enc], torch.stack([e.sparsity for e in enc]).sum(), pre
        return self._batch_topk(pre, selects, xs), xs.new_zeros(()), pre

    def _batch_topk(self, pre: list[Tensor], selects: list, xs: Tensor) -> list[Codes]:
        """k·N·L largest activations over all layers of the batch while training; at inference
        the learned threshold (running mean of the smallest kept activation)."""
        if self.training:
            flat = torch.cat([p.relu().flatten() for p in pre])
            kth = flat.topk(self.cfg.k * len(pre[0]) * len(pre), sorted=False).values.min()
            cut = kth.clamp_min(torch.finfo(flat.dtype).tiny)
            keeps = [p >= cut for p in pre]
            with torch.no_grad():
                self.seen += 1
                self.threshold += (kth.clamp_min(0) - self.threshold) / self.seen.clamp_max(1000)
        else:
            keeps = [p > self.threshold for p in pre]
        out = []
        for p, keep, select, x in zip(pre, keeps, selects, xs, strict=True):
            m = max(1, int(keep.sum(-1).max()))
            idx = torch.where(keep, p, torch.full_like(p, -math.inf)).topk(m, sorted=False).indices
            on = keep.gather(1, idx).to(p.dtype)
            out.append(Codes(select(x, idx).relu() * on, idx))
        return out

    def _aux_k(self, pre: list[Tensor], xs: Tensor, err: Tensor, dead: Tensor) -> Tensor:
        """Each layer's dead latents learn to predict the error of the layers they reach
        (auxiliary-K of Gao et al. 2024, per source layer)."""
        total = err.new_zeros(())
        for s, (p, x) in enumerate(zip(pre, xs, strict=True)):
            n_dead = int(dead[s].sum())
            if n_dead == 0:
                continue
            k_aux = min(self.cfg.d_model // 2, n_dead)
            masked = torch.where(dead[s], p, torch.full_like(p, -math.inf))
            idx = masked.topk(k_aux, dim=-1, sorted=False).indices
            vals = make_encoder(self.W_enc[s], self.b_enc[s], p, self.sparse_kernels)(x, idx)
            aux = self._write(s, Codes(vals.relu(), idx))  # [N, L-s, D]
            total = total + (aux + err[s:].transpose(0, 1)).pow(2).sum(-1).mean(0).sum()
        return total

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Each latent's decoder (all the layers it writes, together) at unit norm."""
        for W in self.W_dec:
            W /= W.flatten(1).norm(dim=-1).clamp_min(1e-8)[:, None, None]

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        for W in self.W_dec:
            if W.grad is not None:  # in place: a decoder block can be gigabytes
                g, w = W.grad.flatten(1), W.flatten(1)
                along = torch.einsum("fi,fi->f", g, w)
                g.addcmul_(along[:, None].expand_as(w), w, value=-1)

    @torch.no_grad()
    def fold_scale(self, scale_in: Tensor, scale_out: Tensor) -> None:
        """Training saw x_l·scale_in[l] and target_j·scale_out[j]; fold both into the weights."""
        for W, scale in zip(self.W_enc, scale_in.tolist(), strict=True):
            W *= scale
        for s, W in enumerate(self.W_dec):
            W /= scale_out[s:, None].to(W)
        self.b_dec /= scale_out[:, None].to(self.b_dec)

    def state_for_save(self) -> dict[str, Tensor]:
        """Per-layer inference thresholds (jumprelu, batchtopk), [L, F]; empty for topk."""
        L, F = self.n_layers, self.cfg.d_sae
        if self.jump is not None:
            thresholds = [self.jump_at(i).log_threshold.detach().exp() for i in range(L)]
            return {"threshold": torch.stack(thresholds)}
        if self.cfg.architecture == "batchtopk":
            return {"threshold": self.threshold.detach().expand(L, F).clone()}
        return {}

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
