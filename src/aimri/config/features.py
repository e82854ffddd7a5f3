"""Features: describing them (`aimri features describe`), searching and explaining text, and
the LLM that explains and judges.

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
