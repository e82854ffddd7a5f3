"""Dictionaries: their shape, training (`aimri train`) and evaluation (`aimri eval`).

Same rules for every module here: small frozen dataclasses, the Python API takes them and the
CLI is generated from them (tyro), so flags and API cannot drift; nothing heavy is imported
(`aimri --help` must not import torch); `__post_init__` only validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aimri.config.base import CorpusConfig, ModelConfig, at_least_one
from aimri.errors import AimriError

Architecture = Literal["topk", "batchtopk", "jumprelu", "relu"]


@dataclass(frozen=True, kw_only=True)
class DictConfig:
    """The shape and kind of a sparse dictionary (saved beside its weights)."""

    architecture: Architecture = "topk"
    """`topk` (k latents per token), `batchtopk` (k per token on average over a batch; saved as
    JumpReLU with a learned threshold), `jumprelu`, or `relu` (L1 on activation × decoder norm)."""
    d_in: int
    d_sae: int
    d_out: int | None = None
    """Output width; None means d_in (an SAE). A transcoder maps d_in → d_out."""
    k: int = 32
    """Active latents per token (topk, batchtopk)."""
    transcoder: bool = False
    """Predict another site (the MLP's output) from this one (the MLP's input)."""
    skip: bool = False
    """Transcoders only: add a linear skip path input → output."""
    site: str = ""
    """Site the dictionary reads, e.g. `blocks.6.hook_resid_post`."""
    site_out: str = ""
    """Transcoders only: the site it predicts, e.g. `blocks.6.hook_mlp_out`."""

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "batchtopk", "jumprelu", "relu"):
            raise AimriError(
                f"unknown architecture '{self.architecture}': use one of topk, batchtopk, "
                "jumprelu, relu"
            )
        if min(self.d_in, self.d_sae, self.k) < 1:
            raise AimriError("d_in, d_sae and k must be positive")
        if self.k > self.d_sae:
            raise AimriError(
                f"k={self.k} exceeds the dictionary width d_sae={self.d_sae}: lower --k below "
                f"{self.d_sae}, or raise --expansion (d_sae = expansion × the site's width)"
            )
        if (self.skip or self.site_out) and not self.transcoder:
            raise AimriError("skip and site_out are for transcoders: also pass --transcoder")

    @property
    def out_width(self) -> int:
        return self.d_out or self.d_in


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """How a dictionary is optimised."""

    batch_size: int = 4096
    """Tokens per step (across all ranks under torchrun)."""
    tokens: int | None = None
    """Training budget in tokens; default one pass over the store."""
    lr: float | None = None
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 16384), which scales with width."""
    warmup_frac: float = 0.05
    """Share of steps with a linear learning-rate warm-up."""
    decay_frac: float = 0.2
    """Share of final steps with a linear decay to zero."""
    sparsity_coeff: float | None = None
    """ReLU: L1 coefficient (default 5); JumpReLU: L0 coefficient (default 1)."""
    aux_k_coeff: float = 1 / 32
    """Weight of the auxiliary-K loss that revives dead latents."""
    dead_after_tokens: int = 262_144
    """A latent that has not fired for this many tokens counts as dead."""

    def __post_init__(self) -> None:
        at_least_one(self, "batch_size", "tokens", "dead_after_tokens", prefix="optim.")
        if self.lr is not None and not self.lr > 0:
            raise AimriError(f"--optim.lr {self.lr}: a learning rate must be positive")
        for name in ("warmup_frac", "decay_frac"):
            if not 0 <= getattr(self, name) <= 1:
                flag = name.replace("_", "-")
                raise AimriError(f"--optim.{flag} {getattr(self, name)}: a share lies in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Train a sparse dictionary (SAE or transcoder) on stored activations."""

    store: Path | None = None
    """Activation store made by `aimri collect` (or, from Python, pass an ActivationStream to
    train from a model on the fly)."""
    site: str
    """Site the dictionary reads. With --site-out, both may be globs: a transcoder per layer
    from one pass (e.g. `blocks.*.ln2.hook_normalized` → `blocks.*.hook_mlp_out`)."""
    out: Path
    """Output folder: SAELens layout (cfg.json + sae_weights.safetensors) plus metrics; a
    transcoder set puts each layer's in `<out>/layer_<L>/`."""
    site_out: str = ""
    """Train a transcoder predicting this site (e.g. blocks.6.hook_mlp_out from
    blocks.6.ln2.hook_normalized); empty: an SAE."""
    architecture: Architecture = "topk"
    expansion: int = 8
    """d_sae = expansion × d_in."""
    k: int = 32
    """Active latents per token (topk, batchtopk)."""
    skip: bool = False
    """Transcoders: add a linear skip path."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    checkpoint_every: int = 200
    """Steps between checkpoints (the unit of exact resumption)."""
    keep_checkpoint: bool = False
    """Keep the checkpoint (parameters and Adam moments, about 3× the dictionary's size) once
    training completes, to train further from it later; by default it is removed then."""
    continue_from: Path | None = None
    """A finished dictionary of this kind (same site, architecture, width and k) to continue
    training: its weights and input scales are the start, with fresh optimiser moments and a new
    learning-rate schedule over this run's tokens (the scan's memory of past scans uses it)."""
    exclude_sinks: bool = True
    """Leave out attention sinks and massive activations (position 0, special tokens such as BOS
    and the document separator, tokens whose norm dwarfs the median), which would dominate the
    loss; --no-exclude-sinks keeps them in."""
    sparse_kernels: bool = True
    """Sparse decoder and encoder-gradient kernels for topk/batchtopk (off: dense reference)."""
    also_sites: tuple[str, ...] = ()
    """Train one more SAE for each of these sites in the same pass over the store; every
    dictionary then goes to `<out>/<site>/`. SAEs only (transcoders: use site globs)."""
    matryoshka: tuple[int, ...] = ()
    """Matryoshka training: also reconstruct from only the first m latents, for each m given
    (e.g. 576 2304), so early latents learn general features; empty: off."""
    device: str = "auto"
    overwrite: bool = False
    """Replace a finished dictionary (or anything else) already at --out instead of refusing."""
    cross_layer: bool = False
    """Train one cross-layer transcoder (CLT) instead of a transcoder per layer (site globs as
    for a set): the latents of each layer read its MLP input and write the MLP outputs of it and
    of all later layers (topk, batchtopk across layers, or jumprelu); saved in circuit-tracer's
    CLT layout."""

    def __post_init__(self) -> None:
        at_least_one(self, "expansion", "k", "checkpoint_every")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluate a dictionary: reconstruction, sparsity, and the model's loss with it spliced in,
    beside PCA and random-direction baselines of the same size."""

    dictionary: Path
    """A dictionary folder (SAELens layout)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(max_tokens=8192, seed=1))
    """Evaluation text; a seed other than training's gives other documents first."""
    batch_size: int = 8
    """Contexts per forward pass."""
    baselines: bool = True
    """Also evaluate PCA and random-direction dictionaries of the same size."""

    def __post_init__(self) -> None:
        at_least_one(self, "batch_size")

    exclude_sinks: bool = True
    """Leave attention sinks and massive activations out of the metrics (their FVU is shown
    apart); --no-exclude-sinks leaves only position 0 out."""
