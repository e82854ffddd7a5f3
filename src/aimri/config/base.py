"""The model, the text it reads, and collecting its activations; the helper every config's
validation uses.

Same rules for every module here: small frozen dataclasses, the Python API takes them and the
CLI is generated from them (tyro), so flags and API cannot drift; nothing heavy is imported
(`aimri --help` must not import torch); `__post_init__` only validates.
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
    """`builtin` (what a chat model is used on: conversation turns in its chat template and
    general-knowledge prose, written by SmolLM2 from a seeded list of topics and shipped with
    aimri), `builtin-held-out` (the same kinds of text on other topics, asked in other words: for
    evaluation), `pydoc` (Python's own documentation and sources), a `.txt`/`.jsonl`/
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
