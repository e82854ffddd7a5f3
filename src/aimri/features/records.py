"""What the features stage knows about a feature, as plain JSON-able records.

The data flow of the stage: `stats.py` streams activations through a `FeatureBasis` and fills
one `FeatureStats` per analysed feature (examples, histogram, logit effects, neighbours);
`explain.py` turns examples into `Label`s; `score.py` scores each label on *held-out* examples
into `Score`s; `catalog.py` stores all three in SQLite; the report shows them. Every record
here is a frozen dataclass of plain values, so `dataclasses.asdict` gives its JSON.

Held-out discipline: `explain_split` and `score_split` divide a feature's examples so that no
example an explainer saw is used to score its label. Not here: any computation on tensors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

BasisKind = Literal["sae", "transcoder", "mlp_neurons", "random_dictionary", "residual", "random"]
"""What a basis is: a trained dictionary (`sae`, `transcoder`) or a baseline (the rest).
Catalogs written before the MLP baseline call the residual coordinates `neurons`."""
KIND_NAMES: dict[str, str] = {
    "sae": "SAE features",
    "transcoder": "transcoder features",
    "mlp_neurons": "MLP neurons",
    "random_dictionary": "a random sparse dictionary",
    "residual": "residual coordinates",
    "random": "random directions",
    "neurons": "residual coordinates",
}
"""Basis kind → what a person reads for it."""
BASELINE_KINDS = ("mlp_neurons", "random_dictionary", "residual", "random")
"""Baselines in the order the features stage runs them: the model's own neurons at the layer,
an untrained dictionary of the same shape and k, the site's coordinates, random directions."""
ExampleKind = Literal["top", "quantile", "random_negative", "hard_negative"]


@dataclass(frozen=True)
class Example:
    """A window of text from the corpus with one feature's activation on every token."""

    tokens: list[str]
    """Decoded token strings of the window (may contain any characters: escape before HTML)."""
    acts: list[float]
    """This feature's activation on each token of the window (0 where it does not fire)."""
    context: int
    """Index of the context in the source the statistics were computed on."""
    start: int
    """Position of `tokens[0]` within that context."""
    kind: ExampleKind
    """`top` (highest activations), `quantile` (sampled across activation buckets),
    `random_negative` (a random window where the feature is silent), `hard_negative` (a window
    where a neighbouring feature fires and this one is silent)."""
    bucket: int = 0
    """Quantile examples: 1 = highest bucket … n = lowest; 0 for the other kinds."""

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def active(self) -> bool:
        return self.max_act > 0


@dataclass(frozen=True)
class TokenEffect:
    token: str
    value: float


@dataclass(frozen=True)
class Neighbour:
    feature: int
    value: float
    """Cosine of decoder directions (neighbours), or Jaccard of firing sets (co-occurrence)."""


@dataclass(frozen=True)
class FeatureStats:
    """Everything measured about one feature on one corpus."""

    index: int
    density: float
    """Share of tokens (BOS excluded) on which the feature is non-zero."""
    max_act: float
    mean_act: float
    """Mean activation over the tokens where it fires."""
    quantiles: dict[str, float]
    """Activation quantiles over firing tokens: keys `p50`, `p90`, `p99`."""
    hist_edges: list[float]
    """Histogram of activations over firing tokens: len(hist_counts) + 1 bin edges."""
    hist_counts: list[int]
    examples: list[Example]
    """Top, quantile and negative examples (see `Example.kind`)."""
    promoted: list[TokenEffect] = field(default_factory=list)
    """Tokens whose logits the feature's output direction raises most (through the unembedding)."""
    suppressed: list[TokenEffect] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    """Nearest features by decoder cosine (empty for bases without decoders)."""
    cooccurring: list[Neighbour] = field(default_factory=list)
    """Features that fire on the same tokens most often (Jaccard)."""

    def of_kind(self, *kinds: ExampleKind) -> list[Example]:
        return [e for e in self.examples if e.kind in kinds]


@dataclass(frozen=True)
class BasisInfo:
    """Which set of directions the features are: a dictionary or one of the baselines."""

    kind: BasisKind
    site: str
    n_features: int
    name: str
    """Human name, e.g. `sae blocks.15.hook_resid_post (4608)`."""


@dataclass(frozen=True)
class FeatureSet:
    """The statistics of some features of one basis, computed on one corpus."""

    basis: BasisInfo
    features: list[FeatureStats]
    n_tokens: int
    """Tokens the statistics were computed on (BOS excluded)."""
    dead_fraction: float
    """Share of *all* the basis's features that never fired on those tokens."""
    density_hist_edges: list[float]
    """Histogram of log10(density) over all features that fired."""
    density_hist_counts: list[int]


@dataclass(frozen=True)
class Label:
    """A claim about what a feature means, made by one explainer."""

    feature: int
    text: str
    explainer: str
    """Registry name of the explainer, e.g. `tokens`, `logits`, `llm:<model>`."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Explainer-specific extras (tokens spent, the raw reply's finish reason …)."""


@dataclass(frozen=True)
class Score:
    """How well a label predicts where its feature fires, on held-out examples."""

    feature: int
    explainer: str
    scorer: str
    """`embedding`, `detection`, `fuzzing`."""
    value: float
    """The scorer's headline number (AUROC or balanced accuracy; 0.5 = chance)."""
    baseline: float
    """The same score for a label taken from another feature (shuffled labels)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """All measured numbers: auroc, balanced_accuracy, f1, n_pos, n_neg …"""


class Split(NamedTuple):
    positives: list[Example]
    negatives: list[Example]
    """Random windows where the feature is quietest: the same task for every basis."""
    hard: list[Example]
    """Hard negatives (a decoder neighbour fires, this feature does not). Only bases with
    neighbours have them (neurons have none), so scorers report them beside the headline,
    never inside it: a headline with them would not compare bases on the same task."""


def explain_split(f: FeatureStats, n_top: int = 10, seed: int = 0) -> list[Example]:
    """Examples an explainer may see: top examples and every other quantile example."""
    quantile = _halves(f.of_kind("quantile"), seed)[0]
    return f.of_kind("top")[:n_top] + quantile


def score_split(f: FeatureStats, seed: int = 0) -> Split:
    """Held-out examples for scoring: the other half of the quantile examples (positives),
    random negatives, and hard negatives apart. Disjoint from `explain_split` by construction."""
    positives = _halves(f.of_kind("quantile"), seed)[1]
    return Split(positives, f.of_kind("random_negative"), f.of_kind("hard_negative"))


def _halves(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """Split examples into two halves balanced across buckets (alternating within a bucket)."""
    by_bucket: dict[int, list[Example]] = {}
    for e in examples:
        by_bucket.setdefault(e.bucket, []).append(e)
    rng = random.Random(seed)
    a: list[Example] = []
    b: list[Example] = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket][:]
        rng.shuffle(items)
        a += items[0::2]
        b += items[1::2]
    return a, b
