"""The Golden Gate demonstration: does a concept feature steer the text beyond random directions?

Steps (each a function, the scan's steering stage runs them in order):
1. `candidates.concept_candidates`: concrete-concept features from a cheap pass over *every*
   feature (their top tokens on ordinary text, the concept rule).
2. `probe`: each candidate's decoder direction is added at `PROBE_STRENGTH` × the unit (the
   median norm of ordinary tokens at the site, sinks left out) on fixed neutral texts; the rise
   of the model's log-probability of the candidate's own concept tokens ranks them, and
   candidates that damage the text (NLL) more than the median random direction at the same norm
   are dropped. `choose` then generates from `SELECT_PROMPTS` with the best 8 and keeps the
   one whose generations mention its concept most where they stay varied (prompts that are not
   the ones the demonstration is judged on, so the choice does not flatter the verdict).
3. `demonstrate`: the chosen direction, `N_RANDOM` random unit directions and the `N_NEURONS`
   residual-stream neurons most aligned with it, every one added at the same norm (strength ×
   unit), at every strength, on `UNRELATED_PROMPTS`. Measured per direction: the rise of the
   concept tokens' log-probability (teacher-forced on the prompts), the rise of the MiniLM
   similarity between the generations and the concept words, the share of generations that
   say a concept word; for fluency, the share of distinct tokens and (for the feature) the
   perplexity of its generations under the unsteered model.
4. The verdict (`StrengthRow.demonstrates`): a demonstration at a strength where fluency holds
   (distinct share ≥ `FLUENT_DISTINCT` × the unsteered one, perplexity ≤ `FLUENT_PPL` × the
   unsteered one), the concept's log-probability and similarity both rise beyond the random
   directions' 95th percentile, and at least half the generations say a concept word.
   With 19 random directions the 95th percentile is close to their maximum.
Not here: the cheap pass (`candidates.py`), batched measurement (`compare.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.model.adapter import Model
from aimri.steer.candidates import Candidate, concept_token_ids
from aimri.steer.compare import aligned_neurons, generate_rows, random_directions, text_effect
from aimri.steer.generate import Generation
from aimri.steer.sweep import NEUTRAL_TEXTS, TextEmbedder, continuation_perplexity, distinct_share

UNRELATED_PROMPTS = (
    "I went to the store and",
    "My favourite thing about today is",
    "The best way to spend a weekend is",
    "Dear diary, this morning I",
)
"""Where the demonstration is judged: everyday openings unrelated to any feature."""
SELECT_PROMPTS = ("The weather was mild, and", "She opened the window and")
"""Where the candidate is chosen (not the prompts it is judged on)."""
STRENGTHS = (0.25, 0.5, 0.75)
"""Norm of the added vector in units of the site's median ordinary-token norm (on SmolLM2 at
layer 15, random directions at 1 × already turn greedy text into repetition)."""
PROBE_STRENGTH = 0.5
CHOOSE_STRENGTHS = (0.5, 0.75)
N_RANDOM = 19
N_NEURONS = 4
FLUENT_DISTINCT = 0.75
FLUENT_PPL = 3.0
MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class Probed:
    candidate: Candidate
    concept_ids: list[int]
    rise: float
    """Rise of the concept tokens' log-probability (nats) on the neutral texts."""
    damage: float
    """Rise of the neutral texts' NLL (nats per token)."""


@dataclass(frozen=True)
class Measures:
    """What one direction did at one strength."""

    logprob_rise: float
    """Rise of log mean P(concept tokens) on the prompts, nats, against no edit."""
    similarity_rise: float
    """Rise of the mean MiniLM cosine between generations and the concept, against no edit."""
    mentions: float
    """Share of generations that say a concept word."""
    distinct: float
    """Mean share of distinct tokens per generation."""


@dataclass(frozen=True)
class StrengthRow:
    strength: float
    feature: Measures
    perplexity: float
    """Of the feature's generations under the unsteered model."""
    fluent: bool
    neurons: list[Measures]
    random: list[Measures]
    random_p95: Measures
    """Each measure's 95th percentile over the random directions."""
    generations: list[Generation]
    """The feature's."""
    random_example: list[Generation]
    """The first random direction's, for comparison."""

    @property
    def beyond_random(self) -> bool:
        f, p = self.feature, self.random_p95
        return f.logprob_rise > p.logprob_rise and f.similarity_rise > p.similarity_rise

    @property
    def demonstrates(self) -> bool:
        return self.fluent and self.beyond_random and self.feature.mentions >= 0.5


@dataclass(frozen=True)
class Demonstration:
    feature: int
    words: list[str]
    concept: str
    unit: float
    baseline: Measures
    baseline_perplexity: float
    baseline_generations: list[Generation]
    rows: list[StrengthRow]

    @property
    def demonstrated_at(self) -> float | None:
        """The lowest strength that demonstrates the concept (None: none does)."""
        return next((r.strength for r in self.rows if r.demonstrates), None)


def probe(
    model: Model,
    site: str,
    dictionary: Dictionary,
    candidates: Sequence[Candidate],
    unit: float,
    *,
    texts: Sequence[str] = NEUTRAL_TEXTS[:2],
    n_random: int = 8,
    seed: int = 0,
) -> list[Probed]:
    """Candidates whose direction raises their own concept tokens on `texts` without more
    damage than the median random direction at the same norm, largest rise first."""
    if not candidates:
        return []
    W = dictionary.W_dec.detach().float().cpu()
    dirs = torch.stack([W[c.index] / W[c.index].norm() for c in candidates])
    rand = random_directions(W.shape[1], n_random, seed)
    scale = PROBE_STRENGTH * unit
    zero = torch.zeros(1, W.shape[1])
    ids = [concept_token_ids(model.tokenizer, c.words[:6]) for c in candidates]
    concepts = [i or [0] for i in ids]
    clean = text_effect(model, site, zero, texts, concepts)
    edited = text_effect(model, site, torch.cat([scale * rand, scale * dirs]), texts, concepts)
    hurt = edited.nll - clean.nll[0]  # [n_random + n_candidates]
    limit = float(hurt[: len(rand)].median())
    out = []
    for j, c in enumerate(candidates):
        rise = float(edited.concept_logprob[len(rand) + j, j] - clean.concept_logprob[0, j])
        damage = float(hurt[len(rand) + j])
        if ids[j] and damage <= limit:
            out.append(Probed(c, ids[j], rise, damage))
    return sorted(out, key=lambda p: (-p.rise, p.candidate.index))


def choose(
    model: Model,
    site: str,
    dictionary: Dictionary,
    probed: Sequence[Probed],
    unit: float,
    *,
    n: int = 8,
    prompts: Sequence[str] = SELECT_PROMPTS,
) -> Probed:
    """Of the `n` best probed, the one whose generations on `prompts` say its concept most
    at `CHOOSE_STRENGTHS` where they stay varied (ties: the larger probe rise)."""
    W = dictionary.W_dec.detach().float().cpu()
    best = probed[:n]
    dirs = torch.stack([W[p.candidate.index] / W[p.candidate.index].norm() for p in best])
    said = torch.zeros(len(best))
    for s in CHOOSE_STRENGTHS:
        gens = generate_rows(model, site, s * unit * dirs, prompts, MAX_NEW_TOKENS)
        for j, (p, g) in enumerate(zip(best, gens, strict=True)):
            if distinct_share(g) >= 0.5:
                said[j] += mention_share(g, p.candidate.words)
    j = max(range(len(best)), key=lambda i: (float(said[i]), best[i].rise))
    return best[j]


def demonstrate(
    model: Model,
    site: str,
    dictionary: Dictionary,
    chosen: Probed,
    unit: float,
    *,
    embedder: TextEmbedder,
    strengths: Sequence[float] = STRENGTHS,
    prompts: Sequence[str] = UNRELATED_PROMPTS,
    n_random: int = N_RANDOM,
    n_neurons: int = N_NEURONS,
    seed: int = 0,
) -> Demonstration:
    """The chosen feature against random directions and neurons at the same norm."""
    c = chosen.candidate
    W = dictionary.W_dec.detach().float().cpu()
    direction = W[c.index] / W[c.index].norm()
    dirs = torch.cat(
        [
            direction[None],
            aligned_neurons(direction, n_neurons),
            random_directions(len(direction), n_random, seed),
        ]
    )
    concept = ", ".join(c.words[:4])
    concept_vec = embedder.embed([concept])[0].float()
    words = c.words[:6]
    zero = torch.zeros(1, len(direction))
    concepts = [chosen.concept_ids]
    base_lp = float(text_effect(model, site, zero, prompts, concepts).concept_logprob[0, 0])
    base_gens = generate_rows(model, site, zero, prompts, MAX_NEW_TOKENS)[0]
    base_sim = _similarity(embedder, base_gens, concept_vec)
    base_ppl = continuation_perplexity(model, base_gens)
    baseline = Measures(0.0, 0.0, mention_share(base_gens, words), distinct_share(base_gens))
    rows = []
    for s in strengths:
        deltas = s * unit * dirs
        lp = text_effect(model, site, deltas, prompts, concepts).concept_logprob[:, 0] - base_lp
        gens = generate_rows(model, site, deltas, prompts, MAX_NEW_TOKENS)
        m = [
            Measures(
                float(lp[i]),
                _similarity(embedder, g, concept_vec) - base_sim,
                mention_share(g, words),
                distinct_share(g),
            )
            for i, g in enumerate(gens)
        ]
        ppl = continuation_perplexity(model, gens[0])
        fluent = (
            m[0].distinct >= FLUENT_DISTINCT * baseline.distinct and ppl <= FLUENT_PPL * base_ppl
        )
        rand = m[1 + n_neurons :]
        rows.append(
            StrengthRow(
                strength=s,
                feature=m[0],
                perplexity=ppl,
                fluent=fluent,
                neurons=m[1 : 1 + n_neurons],
                random=rand,
                random_p95=_p95(rand),
                generations=gens[0],
                random_example=gens[1 + n_neurons],
            )
        )
    return Demonstration(c.index, c.words, concept, unit, baseline, base_ppl, base_gens, rows)


def mention_share(gens: Sequence[Generation], words: Sequence[str]) -> float:
    """Share of generations that contain one of `words` as a word (any case, plural 's')."""
    if not gens:
        return math.nan
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")s?\b", re.IGNORECASE)
    return sum(bool(pattern.search(g.text)) for g in gens) / len(gens)


def _similarity(embedder: TextEmbedder, gens: Sequence[Generation], concept_vec: Tensor) -> float:
    emb = embedder.embed([g.text for g in gens]).float()
    return float((emb @ concept_vec).mean())


def _p95(ms: Sequence[Measures]) -> Measures:
    def q(values: list[float]) -> float:
        return float(torch.tensor(values).quantile(0.95))

    return Measures(
        q([m.logprob_rise for m in ms]),
        q([m.similarity_rise for m in ms]),
        q([m.mentions for m in ms]),
        q([m.distinct for m in ms]),
    )
