"""Configuration of the check-up's commands: probe, diff, plant, audit, monitor.

Same rules as the rest of `aimri.config` (frozen dataclasses the CLI is generated from; nothing
heavy imported; `__post_init__` only validates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aimri.config.base import CorpusConfig, ModelConfig
from aimri.errors import AimriError


def _neutral_corpus() -> CorpusConfig:
    return CorpusConfig(max_tokens=4096, ctx_len=64, seed=1)


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Probe a model for safety-relevant concepts (deception, sycophancy, power-seeking,
    harmful requests, jailbreak framings, false facts): per-layer directions with held-out
    AUROC and recall at 1% false positives on neutral text, checked by steering."""

    model: ModelConfig = field(default_factory=ModelConfig)
    concepts: tuple[Path, ...] = ()
    """Contrast-set JSON files of your own; default: the six built-in sets."""
    dictionary: Path | None = None
    """An SAE (SAELens layout) at a resid_post site: rank its features by how they separate the sets."""
    neutral: CorpusConfig = field(default_factory=_neutral_corpus)
    """Neutral text that sets each direction's 1%-false-positive threshold."""
    causal: bool = True
    """Steer and ablate each flagged direction on held-out prompts, against random directions."""
    out: Path = Path("probes")
    """Folder for `probes.json` (results), the directions (safetensors) and `ledger.jsonl`."""
    overwrite: bool = False
    """Replace earlier results at --out instead of refusing (checked before any work)."""


@dataclass(frozen=True, kw_only=True)
class DiffConfig:
    """Compare two versions of one model (base vs fine-tune, two checkpoints): activations by
    layer read through the logit lens and by steering with the difference, per-token KL on
    neutral text, the base dictionary's features ranked by change. A model against itself
    comes out empty."""

    base: ModelConfig = field(default_factory=ModelConfig)
    """The reference (earlier) model; `aimri diff A B` sets --base.spec A."""
    other: ModelConfig = field(default_factory=ModelConfig)
    """The changed model; `aimri diff A B` sets --other.spec B."""
    dictionary: Path | None = None
    """An SAE trained on the base model at a resid_post site (SAELens layout)."""
    crosscoder: bool = False
    """Also train a small BatchTopK crosscoder on both models at the most-changed layer."""
    what: bool = True
    """Also say what changed: the activation-difference lens (and A steered with it) and both
    models' sampled replies to a dozen generated prompts, compared by what they say."""
    corpus: CorpusConfig = field(default_factory=_neutral_corpus)
    """Neutral text both models read."""
    runs_dir: Path = Path("runs")
    name: str | None = None
    """Run name (a folder under `runs_dir`); default: `diff-<date>-<time>`."""
    overwrite: bool = False
    """Replace an earlier diff of the same --name instead of refusing (checked before any work)."""


@dataclass(frozen=True, kw_only=True)
class PlantConfig:
    """Red team: plant a behaviour in a model with a short fine-tune of its last layers, for the
    audit game (can the check-up find it from the two models alone?)."""

    plant: str
    """A built-in plant (`aimri.audit.plant.PLANTS`: trigger, product, sycophancy,
    preference), or one drawn from the pools: 'dev-<i>', 'held-out-<i>' or 'sealed-<i>'
    (`aimri.audit.plant_pools.draw_plant`; its description goes to plant.json)."""
    out: Path
    """Folder for the modified model (save_pretrained, safetensors) and `plant.json`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    overwrite: bool = False
    """Replace whatever is already at --out (checked before the fine-tune starts)."""


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Blue team: given a base and a modified model (not how it was modified), write ranked
    hypotheses about what changed, each a sentence with its evidence (A's and B's replies side
    by side) and a test to rerun, beside a black-box baseline that only compares replies."""

    base: ModelConfig = field(default_factory=ModelConfig)
    other: ModelConfig = field(default_factory=ModelConfig)
    prompts: Path | None = None
    """Your own user messages: a text file, one per line ("type<TAB>message" to group them),
    or a JSON list; default: generated from topics × request types (advice, opinions,
    instructions, role-play, code, facts)."""
    dictionary: Path | None = None
    """An SAE trained on the base model (SAELens layout): its features nearest the lens
    direction join the evidence. Optional."""
    k: int = 5
    """Hypotheses to write."""
    samples: int = 2
    """Sampled replies per prompt and model."""
    black_box: bool = True
    """Also run the black-box baseline (same prompts and replies, no internals)."""
    out: Path | None = None
    """Folder for `audit.json`, the report and `ledger.jsonl`; default `audit-<date>-<time>`.
    A folder that already holds an audit is never overwritten: `-2`, `-3`, ... is added."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise AimriError(f"k={self.k}: ask for at least one hypothesis")
        if self.samples < 1:
            raise AimriError(f"samples={self.samples}: sample at least one reply per prompt")


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """Generate with probe directions watched: each crossing of a direction's threshold is an
    alert, appended to a JSONL log."""

    prompts: tuple[str, ...]
    probes: Path
    """A folder written by `aimri probe` (its directions and 1%-false-positive thresholds)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    log: Path = Path("alerts.jsonl")
    max_new_tokens: int = 48
    token_fpr: float = 0.001
    """Each direction alerts on at most this share of neutral tokens (its threshold is set on
    the shipped neutral dialogues, per token)."""
