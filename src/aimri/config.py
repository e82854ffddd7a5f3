"""Configuration of every stage, as small frozen dataclasses.

The Python API takes these objects and the CLI is generated from them (tyro), so flags and API
cannot drift. This module imports nothing heavy: `aimri --help` must not import torch.
`__post_init__` only validates; it never has side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aimri.errors import AimriError

DType = Literal["float32", "bfloat16", "float16"]


def at_least_one(cfg: object, *names: str, prefix: str = "") -> None:
    """Refuse any of `cfg`'s fields `names` set below 1, naming the flag that sets it."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            flag = prefix + name.replace("_", "-")
            raise AimriError(f"--{flag} {value}: it must be at least 1")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which model to open, and how."""

    spec: str = "smollm2-135m"
    """Built-in alias (`smollm2-135m`), a local Hugging Face model directory, a `.gguf` file, or a
    hub id (used only if already in the local cache, or when the network is there)."""
    dtype: DType = "float32"
    """Dtype of the weights and activations during forward passes."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available)."""


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """Where text comes from and how it becomes fixed-length token contexts."""

    source: str = "builtin"
    """`builtin` (Python's own documentation and sources; no download), a `.txt`/`.jsonl`/
    `.parquet` file or a folder of them, a `datasets` folder saved with `save_to_disk`, or
    `hf:NAME[:CONFIG]` for a Hugging Face dataset (cached, or online)."""
    text_field: str = "text"
    """Field holding the text in JSONL, Parquet and `datasets` sources."""
    split: str = "train"
    """Split of a Hugging Face dataset."""
    ctx_len: int = 128
    """Tokens per context, including the BOS token when `prepend_bos` is set."""
    max_tokens: int = 65_536
    """Stop after this many tokens (rounded down to whole contexts)."""
    seed: int = 0
    """Seed for the document order; the same seed gives the same contexts."""
    prepend_bos: bool = True
    """Start every context with the tokenizer's BOS token (or its EOS token if it has none)."""
    boundary: Literal["pack", "truncate"] = "pack"
    """`pack`: join documents with an end-of-text token and cut into contexts, so a context may
    span documents; `truncate`: one context per document, its first `ctx_len` tokens (shorter
    documents are skipped)."""

    def __post_init__(self) -> None:
        if self.ctx_len < 2:
            raise AimriError(
                f"corpus ctx_len={self.ctx_len} is too small: a context needs at least 2 "
                "tokens; raise --corpus.ctx-len"
            )
        if self.max_tokens < self.ctx_len:
            raise AimriError(
                f"corpus max_tokens={self.max_tokens} is smaller than one context (ctx_len="
                f"{self.ctx_len}): raise --corpus.max-tokens or lower --corpus.ctx-len"
            )


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """Stream a corpus through a model and store activations of some sites on disk."""

    out: Path
    """Directory for `manifest.json` and `shard-NNNNN.safetensors` files."""
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sites: tuple[str, ...] = ("blocks.*.hook_resid_post",)
    """Site names or globs, e.g. `blocks.*.hook_resid_post`, `blocks.5.ln2.hook_normalized`."""
    dtype: DType = "float16"
    """Dtype activations are stored in."""
    batch_size: int = 16
    """Contexts per forward pass."""
    shard_contexts: int | None = None
    """Contexts per shard file, the unit of resumption; default: about 256 MiB per shard."""
    overwrite: bool = False
    """Delete an existing store with a different configuration instead of refusing."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise AimriError(
                f"--batch-size {self.batch_size}: a forward pass needs at least 1 context"
            )
        if self.shard_contexts is not None and self.shard_contexts < 1:
            raise AimriError(
                f"--shard-contexts {self.shard_contexts}: a shard needs at least 1 context "
                "(leave it out for about 256 MiB per shard)"
            )
        if not self.sites:
            raise AimriError("no sites given: pass e.g. --sites 'blocks.*.hook_resid_post'")


@dataclass(frozen=True, kw_only=True)
class ScanConfig:
    """The main job: every stage that exists, on one model, written up as a report."""

    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(max_tokens=16_384))
    sites: tuple[str, ...] = ("blocks.*.hook_resid_post",)
    """Sites to collect and summarise (residual stream sites get the logit lens)."""
    runs_dir: Path = Path("runs")
    """Parent folder of run directories."""
    name: str | None = None
    """Run name (a folder under `runs_dir`); default: `<model>-<date>-<time>`."""
    store_dtype: DType = "float16"
    """Dtype activations are stored in."""
    batch_size: int = 16
    """Contexts per forward pass."""
    overwrite: bool = False
    """Replace a stored activation set made with another configuration."""
    keep_activations: bool = False
    """Keep the activation caches the stages trained on (about 1.7 GB at the defaults) in the
    run folder; by default they are removed once the report is written (the report says so)."""
    dict_site: str = ""
    """Site to train (or load) a dictionary for; default: the middle layer's resid_post."""
    dict_tokens: int = 81_920
    """Tokens collected for the dictionary (it trains on several passes over them)."""
    dictionary: Path | None = None
    """Load this dictionary (SAELens layout) instead of training one."""
    n_features: int = 256
    """Dictionary features to describe (a seeded random sample), label and score."""
    labeler: Literal["offline", "llm"] = "offline"
    """`offline`: token and logit explainers scored by simulation (and the token rule); `llm`:
    also an LLM explainer, simulated and judged (detection) through --llm.* (an
    OpenAI-compatible or Anthropic API)."""
    steer: bool = True
    """Demonstrate steering: add a concrete-concept feature's direction, beside random directions
    and neurons at the same norm, and say whether the text turns to the concept while fluent."""
    llm: LLMConfig = field(default_factory=lambda: LLMConfig())
    """The LLM used when --labeler llm."""
    circuits: bool = True
    """Trace attribution graphs through transcoders on demonstration prompts, checked by
    intervention (trains a small transcoder per layer unless --transcoders is given)."""
    transcoders: Path | None = None
    """Load this transcoder set (`layer_<L>/` folders) instead of training one."""
    tc_tokens: int = 16_384
    """Tokens the scan's transcoders train on (one pass of the model; 3 passes over the data,
    width 4 × d_model, k = 16: `aimri.dicts.transcoder_set.set_recipe`)."""
    circuit_prompts: tuple[str, ...] = ()
    """More prompts to trace, beside the built-in demonstrations."""
    concepts: bool = True
    """Probe safety concepts (deception, sycophancy, power-seeking, harmful requests, jailbreak
    framings, false facts) at every layer, with a causal check (`aimri probe` alone)."""
    concept_files: tuple[Path, ...] = ()
    """Contrast-set JSON files of your own, probed beside the built-in ones."""
    concept_random: int = 3
    """Random directions (and random features) each causal check of a concept is set against;
    each costs two passes over the behaviour prompts per concept."""
    compare: str | None = None
    """An earlier version of the model (a spec as for --model.spec): add a diff against it."""

    def __post_init__(self) -> None:
        at_least_one(self, "batch_size", "n_features", "dict_tokens", "tc_tokens")
        if self.concept_random < 2:
            raise AimriError(
                f"--concept-random {self.concept_random}: the random baseline needs at least 2 "
                "draws to have a spread"
            )


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
            raise AimriError(f"k={self.k} exceeds the dictionary width d_sae={self.d_sae}")
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


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """A chat model that explains and judges features: any OpenAI-compatible endpoint (vLLM,
    llama.cpp's server, Ollama, hosted APIs) or Anthropic's API. Keys come from the environment
    only and are never written anywhere."""

    provider: Literal["openai", "anthropic"] = "openai"
    """`openai` (any OpenAI-compatible /v1/chat/completions) or `anthropic` (/v1/messages)."""
    base_url: str = "http://127.0.0.1:8080/v1"
    """Endpoint root, e.g. http://127.0.0.1:8080/v1 (llama.cpp), https://api.anthropic.com/v1."""
    model: str = ""
    """Model name sent to the endpoint (local servers often ignore it)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (not the key); unset is fine locally."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_retries: int = 4
    """Retries with exponential backoff on timeouts, 429 and 5xx replies."""
    timeout_s: float = 60.0
    cache_dir: Path | None = None
    """On-disk cache of calls; default `$AIMRI_CACHE_DIR/llm`. A repeated call costs nothing."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0:
            raise AimriError(
                f"--llm.concurrency {self.concurrency} / --llm.max-retries {self.max_retries}: "
                "requests in flight must be at least 1 and retries at least 0"
            )


@dataclass(frozen=True, kw_only=True)
class FeaturesConfig:
    """Describe a dictionary's features: statistics, labels scored on held-out text, baselines
    (neurons and random directions at the same site), all into one SQLite catalog."""

    dictionary: Path
    """A dictionary folder (aimri, SAELens, sparsify layouts)."""
    out: Path
    """The catalog file to write, e.g. runs/x/features/catalog.sqlite."""
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(max_tokens=131_072))
    store: Path | None = None
    """Read the site's activations from this store instead of running the corpus."""
    n_features: int | None = None
    """Analyse the first N features (default all); statistics of density cover all."""
    explainers: tuple[str, ...] = ("tokens", "logits")
    """Explainers to run: `tokens`, `logits` (offline), `llm` (needs --llm.*)."""
    scorers: tuple[str, ...] = ("simulation", "rule", "embedding")
    """Scorers to run: `simulation` (offline for token labels; free-text labels need --llm.*),
    `rule`, `embedding` (offline), `detection`, `fuzzing` (need --llm.*)."""
    baselines: bool = True
    """Also label and score neurons and random directions at the same site."""
    n_baseline: int = 64
    """Units of each baseline to label and score."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    seed: int = 0
    overwrite: bool = False
    """Replace a file already at --out (even an earlier catalog) instead of refusing."""
    exclude_sinks: bool = True
    """Leave attention sinks and massive activations (position 0, special tokens, outsized
    norms) out of statistics and examples; --no-exclude-sinks leaves only position 0 out."""

    def __post_init__(self) -> None:
        if self.n_features is not None and self.n_features < 1:
            raise AimriError(
                f"--n-features {self.n_features}: give a positive number of features, or leave "
                "it out to describe all"
            )
        if self.n_baseline < 1:
            raise AimriError(
                f"--n-baseline {self.n_baseline}: it must be at least 1 (--no-baselines skips them)"
            )


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Search a catalog's labels by text (SQLite FTS5)."""

    catalog: Path
    query: str
    limit: int = 20

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise AimriError(f"--limit {self.limit}: show at least 1 match (the default is 20)")


@dataclass(frozen=True, kw_only=True)
class ExplainTextConfig:
    """Which features fire on a text, token by token, with their labels."""

    catalog: Path
    text: str
    model: ModelConfig = field(default_factory=ModelConfig)
    top: int = 5
    """Features shown per token."""

    def __post_init__(self) -> None:
        at_least_one(self, "top")


SteerMode = Literal["add", "clamp", "ablate"]


@dataclass(frozen=True, kw_only=True)
class SteerConfig:
    """Steer generation with a feature (add its direction, clamp it, ablate it) and measure what
    changed: the feature's activation, a concept score, fluency, and KL on neutral text."""

    dictionary: Path | None = None
    """Dictionary whose feature steers. An SAE is edited at its own site; a transcoder reads the
    feature at its input site and is edited at its output site."""
    feature: int | None = None
    """Index of the feature in --dictionary."""
    direction: Path | None = None
    """Instead of a feature: a direction in a safetensors file (tensor `direction` [d_model]),
    e.g. a difference of means or a probe; needs --site."""
    site: str = ""
    """Site a --direction is added at (a dictionary brings its own)."""
    mode: SteerMode = "clamp"
    """add: add the unit direction (the feature's decoder row, or --direction); clamp: set the
    feature's activation, keeping the dictionary's error term; ablate: clamp it to 0."""
    strengths: tuple[float, ...] = (0.0, 4.0, 8.0)
    """add: multiples of the site's mean activation norm; clamp: multiples of the feature's
    maximum activation; ignored for ablate."""
    prompts: tuple[str, ...] = ("I went to the store and", "My favourite thing about today is")
    concept: str = ""
    """Text describing the concept (for the concept score); default: the feature's label."""
    max_new_tokens: int = 24
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    """Seed for anything random (decoding itself is greedy)."""

    def __post_init__(self) -> None:
        at_least_one(self, "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class CircuitConfig:
    """Trace how the model reaches its next token on a prompt: an attribution graph through a
    transcoder per layer, pruned, checked by ablation in the real model, written as the graph
    JSON that circuit-tracer's frontend and Neuronpedia read."""

    prompt: str
    transcoders: Path
    """Transcoder set: one `layer_<L>/` folder per layer (from `aimri train --site
    'blocks.*.ln2.hook_normalized' --site-out 'blocks.*.hook_mlp_out' --transcoder`)."""
    out: Path = Path("graphs")
    """Folder for `<slug>.json`."""
    slug: str = ""
    """File name and graph id; default: from the prompt."""
    target: str | None = None
    """Attribute this next token (a single token, mind the leading space) instead of the most
    likely ones."""
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    batch_size: int = 256
    """Targets per sweep; memory grows with batch size × prompt length × d_model."""
    validate: bool = True
    """Check the strongest edges by ablation in the real model."""
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        at_least_one(self, "max_n_logits", "batch_size")
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold"):
            if not 0 < getattr(self, name) <= 1:
                flag = name.replace("_", "-")
                raise AimriError(f"--{flag} {getattr(self, name)}: it is a share, in (0, 1]")
