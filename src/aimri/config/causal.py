"""Interventions: steering (`aimri steer`) and circuit tracing (`aimri circuit`).

Same rules for every module here: small frozen dataclasses, the Python API takes them and the
CLI is generated from them (tyro), so flags and API cannot drift; nothing heavy is imported
(`aimri --help` must not import torch); `__post_init__` only validates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aimri.config.base import ModelConfig, at_least_one
from aimri.errors import AimriError

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
        if not all(math.isfinite(s) for s in self.strengths):
            raise AimriError(
                f"--strengths {' '.join(f'{s:g}' for s in self.strengths)}: every strength must "
                "be a finite number, e.g. --strengths 0 4 8"
            )


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
    overwrite: bool = False
    """Replace a graph already at `<out>/<slug>.json` instead of refusing."""

    def __post_init__(self) -> None:
        at_least_one(self, "max_n_logits", "batch_size")
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold"):
            if not 0 < getattr(self, name) <= 1:
                flag = name.replace("_", "-")
                raise AimriError(f"--{flag} {getattr(self, name)}: it is a share, in (0, 1]")
