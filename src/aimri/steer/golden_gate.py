"""The Golden Gate demonstration: find a concrete-concept feature, clamp it high, watch the text.

`find_concept_feature` picks a feature automatically from its statistics (`FeatureStats`):
1. density between `min_density` and `max_density` (rare, but not a one-off), and at least
   `min_examples` top examples;
2. its *peak words*: the token at the maximum of each top example, stripped and lower-cased,
   kept when alphabetic, at least 3 letters and not a function word (`STOP_WORDS`) or Python
   keyword. At least half the top examples must peak on such a word (not punctuation or
   syntax), and on at least two different words (one repeated word is a token detector; a
   concept has several forms);
3. coherence: mean pairwise cosine (MiniLM) of the distinct peak words. The `n_probe` most
   coherent candidates go on to a causal check;
4. agreement: clamp the feature to `probe_multiple` × its maximum on the neutral texts and take
   the words whose next-token probability rises most (mean over positions); agreement is the
   mean, over distinct peak words, of the best cosine with those words: clamped, does the model
   say what the feature reads?
5. score = word share × (coherence + agreement) / 2; the best score wins.
The logit lens (`FeatureStats.promoted`) is not used: at middle layers it mostly lists the same
sub-word pieces for every feature. The concept description is the feature's label when one is
given, else its distinct peak words. `demonstrate` clamps the feature at multiples of its
maximum on prompts unrelated to it and returns the sweep. Not here: measurement (`sweep.py`).
"""

from __future__ import annotations

import itertools
import keyword
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.features.records import FeatureStats
from aimri.model.adapter import Model
from aimri.steer.edits import ClampFeature, Positions, steering
from aimri.steer.generate import prompt_ids, right_pad
from aimri.steer.sweep import NEUTRAL_TEXTS, SweepResult, TextEmbedder, sweep

UNRELATED_PROMPTS = (
    "I went to the store and",
    "My favourite thing about today is",
    "The best way to spend a weekend is",
    "Dear diary, this morning I",
)
MULTIPLES = (0.0, 4.0, 8.0, 16.0)
_ENGLISH_STOP = """
the and for that this with from are was were been being have has had having not but you your
yours they their them its his her hers she him our ours out all any can will would could should
may might must shall one two which who whom whose what when where why how than then there these
those into onto about above below over under also just only such each every other some more
most very use used both either neither nor often generally usually always never sometimes
within inside without upon after before during while until since though although because
however therefore thus hence rather quite still already again yet here now even much many few
several same another any anything something nothing everything does did doing done get got
make made like well way
"""
STOP_WORDS = frozenset(_ENGLISH_STOP.split()) | frozenset(
    [*(k.lower() for k in keyword.kwlist), "self", "cls", "elif"]
)


@dataclass(frozen=True)
class ConceptFeature:
    index: int
    concept: str
    """Description used for the concept score: the label, else the distinct peak words."""
    score: float
    words: list[str]
    """Distinct peak words of the top examples, most common first."""
    steered_words: list[str]
    """Words whose probability rises most when the feature is clamped high."""
    coherence: float
    agreement: float
    max_act: float


@dataclass(frozen=True)
class _Candidate:
    stats: FeatureStats
    words: list[str]
    share: float
    coherence: float


def rank_concept_features(
    model: Model,
    dictionary: Dictionary,
    stats: Sequence[FeatureStats],
    *,
    labels: Mapping[int, str] | None = None,
    embedder: TextEmbedder | None = None,
    min_density: float = 1e-4,
    max_density: float = 1e-2,
    min_examples: int = 5,
    n_probe: int = 64,
    probe_multiple: float = 8.0,
) -> list[ConceptFeature]:
    """The probed features (see the module docstring), best score first."""
    if embedder is None:
        from aimri.features.embed import load_embedder

        embedder = load_embedder()
    vecs = _WordVectors(embedder)
    candidates = [
        c for s in stats if (c := _candidate(s, vecs, min_density, max_density, min_examples))
    ]
    candidates.sort(key=lambda c: (-c.share * c.coherence, c.stats.index))
    probe = _Probe(model, NEUTRAL_TEXTS)
    ranked = []
    for c in candidates[:n_probe]:
        value = probe_multiple * c.stats.max_act
        steered = probe.promoted_words(ClampFeature(dictionary, c.stats.index, value))
        agreement = (
            sum(max(vecs.cos(w, s) for s in steered) for w in c.words) / len(c.words)
            if steered
            else 0.0
        )
        ranked.append(
            ConceptFeature(
                index=c.stats.index,
                concept=(labels or {}).get(c.stats.index) or ", ".join(c.words[:3]),
                score=c.share * (c.coherence + agreement) / 2,
                words=c.words,
                steered_words=steered,
                coherence=c.coherence,
                agreement=agreement,
                max_act=c.stats.max_act,
            )
        )
    return sorted(ranked, key=lambda r: (-r.score, r.index))


def find_concept_feature(
    model: Model,
    dictionary: Dictionary,
    stats: Sequence[FeatureStats],
    *,
    labels: Mapping[int, str] | None = None,
    embedder: TextEmbedder | None = None,
    n_probe: int = 64,
) -> ConceptFeature:
    """The best concrete-concept feature among `stats` (see the module docstring)."""
    ranked = rank_concept_features(
        model, dictionary, stats, labels=labels, embedder=embedder, n_probe=n_probe
    )
    if not ranked:
        raise AimriError(
            f"none of the {len(stats)} features is a concrete concept by the rule (rare, top "
            "examples peaking on two or more words): analyse more features, or pick one by hand"
        )
    return ranked[0]


def demonstrate(
    model: Model,
    dictionary: Dictionary,
    feature: ConceptFeature,
    *,
    multiples: Sequence[float] = MULTIPLES,
    prompts: Sequence[str] = UNRELATED_PROMPTS,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    max_new_tokens: int = 24,
    positions: Positions = "all",
    embedder: TextEmbedder | None = None,
) -> SweepResult:
    """Clamp `feature` to multiples of its maximum activation on unrelated prompts."""

    def clamp(multiple: float) -> ClampFeature:
        return ClampFeature(dictionary, feature.index, multiple * feature.max_act, positions)

    return sweep(
        model,
        clamp,
        multiples,
        prompts,
        concept=feature.concept,
        neutral_texts=neutral_texts,
        feature=(dictionary, feature.index),
        max_new_tokens=max_new_tokens,
        embedder=embedder,
    )


def _candidate(
    s: FeatureStats, vecs: _WordVectors, lo: float, hi: float, min_examples: int
) -> _Candidate | None:
    tops = s.of_kind("top")
    if not (lo <= s.density <= hi) or len(tops) < min_examples:
        return None
    peaks = [w for e in tops if (w := _word(e.tokens[e.acts.index(e.max_act)]))]
    words = [w for w, _ in Counter(peaks).most_common()]
    if 2 * len(peaks) < len(tops) or len(words) < 2:
        return None
    pairs = list(itertools.combinations(words, 2))
    coherence = sum(vecs.cos(a, b) for a, b in pairs) / len(pairs)
    return _Candidate(s, words, len(peaks) / len(tops), coherence)


class _WordVectors:
    """MiniLM embeddings of single words, computed once each."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self.embedder = embedder
        self.cache: dict[str, Tensor] = {}

    def cos(self, a: str, b: str) -> float:
        missing = [w for w in dict.fromkeys((a, b)) if w not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.embed(missing), strict=True))
        return float(self.cache[a] @ self.cache[b])


class _Probe:
    """Next-token probabilities on fixed texts, clean and under an edit."""

    def __init__(self, model: Model, texts: Sequence[str], k: int = 10) -> None:
        self.model = model
        self.k = k
        padded = right_pad([prompt_ids(model, t) for t in texts])
        self.ids = padded.ids
        self.real = padded.mask.bool()
        self.real[:, 0] = False  # BOS
        self.clean = self._mean_probs([])

    @torch.no_grad()
    def _mean_probs(self, edits: list[ClampFeature]) -> Tensor:
        with steering(self.model, edits):
            logits = self.model.run(self.ids).logits
        assert logits is not None
        probs = logits.float().softmax(-1).cpu()
        return probs[self.real].mean(0)

    def promoted_words(self, edit: ClampFeature) -> list[str]:
        rise = self._mean_probs([edit]) - self.clean
        ids = rise.topk(4 * self.k).indices.tolist()
        words = [w for i in ids if (w := _word(self.model.tokenizer.decode([i])))]
        return list(dict.fromkeys(words))[: self.k]


def _word(token: str) -> str | None:
    w = token.strip().lower()
    return w if len(w) >= 3 and w.isalpha() and w not in STOP_WORDS else None
