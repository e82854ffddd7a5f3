"""The main job's settings: `aimri scan`.

Same rules for every module here: small frozen dataclasses, the Python API takes them and the
CLI is generated from them (tyro), so flags and API cannot drift; nothing heavy is imported
(`aimri --help` must not import torch); `__post_init__` only validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aimri.config.base import CorpusConfig, DType, ModelConfig, at_least_one
from aimri.config.features import LLMConfig
from aimri.errors import AimriError


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
    depth: Literal["quick", "standard", "deep"] = "standard"
    """How many tokens the dictionaries train on: quick (81,920 for the SAE, 16,384 for the
    transcoders), standard (245,760 and 65,536; ≤ 600 s on 2 CPU cores), deep (1,048,576 and
    327,680; about an hour on 2 CPU cores, minutes on a GPU)."""
    memory: bool = True
    """Continue the dictionaries an earlier scan of this model trained (same model weights,
    sites, corpus and dictionary shapes), on text they have not read yet, and remember the
    result in `$AIMRI_CACHE_DIR/memory`: each scan of a model sharpens the last one's image.
    --no-memory trains from scratch and leaves the memory as it is."""
    read_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Precision of the reads: the one that feeds the statistics and the dictionaries, and the
    concept probes' (with their causal checks). `auto` is bf16 where the CPU (AVX-512 BF16,
    AMX) or GPU computes it natively, else float32. The dictionary's evaluation, steering and
    circuits run at --model.dtype."""
    store_dtype: DType = "float16"
    """Dtype activations are stored in."""
    batch_size: int = 16
    """Contexts per forward pass."""
    overwrite: bool = False
    """Replace a stored activation set made with another configuration."""
    keep_activations: bool = False
    """Keep the two activation stores the read wrote (statistics and feature examples, about
    660 MB at the defaults) in the run folder; by default they are removed once the report is
    written (the report says so). The dictionaries train on the stream and need no store."""
    dict_site: str = ""
    """Site to train (or load) a dictionary for; default: the middle layer's resid_post."""
    dict_tokens: int | None = None
    """Distinct tokens the SAE trains on, in one pass; default: the --depth's (standard:
    245,760)."""
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
    tc_tokens: int | None = None
    """Distinct tokens the scan's transcoders train on, in one pass (width 4 × d_model, k = 16);
    default: the --depth's (standard: 65,536)."""
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
        at_least_one(self, "batch_size", "n_features")
        for name in ("dict_tokens", "tc_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1024:
                raise AimriError(
                    f"--{name.replace('_', '-')} {value}: a dictionary needs at least 1,024 "
                    "tokens to train; raise it or leave it to --depth"
                )
        if self.concept_random < 2:
            raise AimriError(
                f"--concept-random {self.concept_random}: the random baseline needs at least 2 "
                "draws to have a spread"
            )
