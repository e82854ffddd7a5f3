"""Measure what an edit does, strength by strength: text, concept, fluency, side effects.

For each strength, `sweep` generates from the prompts with `make_edit(strength)` applied and
records (one `SweepPoint`):
- `feature_act`: the target feature's mean activation over the generated tokens,
  teacher-forced with the edit applied, read at the dictionary's input site (after the edit
  when the edit writes there);
- `concept_score`: mean cosine (MiniLM, `features/embed.py`) between each continuation and the
  concept description; `concept_delta` is the same minus the unsteered baseline's;
- `perplexity`: of the continuations under the *unsteered* model, given their prompts (does the
  steered text still read as language?), and `distinct_tokens`, the share of distinct tokens
  per continuation, because perplexity rewards degenerate repetition;
- `kl`: KL(unsteered ‖ steered) of next-token distributions on neutral texts, teacher-forced,
  with the edit on every position (neutral text counts as generated), mean over positions
  (BOS excluded), in nats: what the edit costs where it is not wanted.
The baseline is the model without any edit, which differs from strength 0 for a clamp (clamping
to 0 is an ablation). Not here: building edits (`edits.py`), picking a feature
(`golden_gate.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.edits import Edit, feature_activation, steering
from aimri.steer.generate import Generation, generate, prompt_ids

log = logging.getLogger(__name__)
NEUTRAL_TEXTS = (
    "The weather was mild, and the children played outside until dinner.",
    "She opened the window, made a cup of tea and read the letter twice.",
    "Prices rose slightly last quarter, while demand stayed roughly the same.",
    "He walked to the station, bought a ticket and waited for the train.",
)
"""Everyday sentences for the KL side-effect measure (no code, no single topic)."""


class TextEmbedder(Protocol):
    def embed(self, texts: list[str]) -> Tensor:
        """[n, e] unit-norm embeddings (cosine = dot product)."""
        ...


@dataclass(frozen=True)
class SweepPoint:
    strength: float | None
    """The strength given to `make_edit`; None for the unsteered baseline."""
    generations: list[Generation]
    feature_act: float | None
    """Mean activation of the target feature over generated tokens (None: no feature given)."""
    concept_score: float
    concept_delta: float
    """concept_score minus the unsteered baseline's."""
    perplexity: float
    """exp(mean NLL) of the continuations under the unsteered model (nan: nothing generated).
    Degenerate repetition ("x x x x") reads as fluent by this measure: see `distinct_tokens`."""
    distinct_tokens: float
    """Mean share of distinct tokens in each continuation: 1 = no token repeats."""
    kl: float
    """KL(unsteered ‖ steered) in nats per position of the neutral texts."""


@dataclass(frozen=True)
class SweepResult:
    concept: str
    baseline: SweepPoint
    """The model without any edit."""
    rows: list[SweepPoint]
    """One per strength, in the order given."""

    def records(self) -> list[dict[str, Any]]:
        """JSON-able rows, the baseline (strength None) first; generations as prompt + text."""
        out = []
        for p in (self.baseline, *self.rows):
            row = dataclasses.asdict(p)
            row["generations"] = [{"prompt": g.prompt, "text": g.text} for g in p.generations]
            out.append(row)
        return out


def sweep(
    model: Model,
    make_edit: Callable[[float], Edit],
    strengths: Sequence[float],
    prompts: Sequence[str],
    *,
    concept: str,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    feature: tuple[Dictionary, int] | None = None,
    max_new_tokens: int = 24,
    seed: int = 0,
    embedder: TextEmbedder | None = None,
) -> SweepResult:
    """Generate and measure at every strength (greedy decoding; see the module docstring)."""
    if not prompts or not neutral_texts or not concept:
        raise AimriError("a sweep needs prompts, neutral texts and a concept description")
    if embedder is None:
        from aimri.features.embed import load_embedder

        embedder = load_embedder()
    concept_vec = embedder.embed([concept])[0]
    neutral = [prompt_ids(model, t) for t in neutral_texts]
    clean_logps = [_logprobs(model, ids, ()) for ids in neutral]
    rows: list[SweepPoint] = []
    baseline: SweepPoint | None = None
    for strength in tqdm([None, *strengths], desc="sweep", unit="strength", leave=False):
        edits = [] if strength is None else [make_edit(float(strength))]
        gens = generate(model, prompts, edits, max_new_tokens=max_new_tokens, seed=seed)
        score = concept_score(embedder, gens, concept_vec)
        point = SweepPoint(
            strength=strength,
            generations=gens,
            feature_act=None if feature is None else _feature_mean(model, edits, gens, *feature),
            concept_score=score,
            concept_delta=score - (baseline.concept_score if baseline else score),
            perplexity=continuation_perplexity(model, gens),
            distinct_tokens=distinct_share(gens),
            kl=_mean_kl(model, edits, neutral, clean_logps),
        )
        log.info("strength %s: %s", strength, _summary(point))
        if baseline is None:
            baseline = point
        else:
            rows.append(point)
    assert baseline is not None
    return SweepResult(concept=concept, baseline=baseline, rows=rows)


def _summary(p: SweepPoint) -> str:
    return (
        f"concept {p.concept_score:.4f} ({p.concept_delta:+.4f}), perplexity {p.perplexity:.2f}, "
        f"distinct {p.distinct_tokens:.2f}, KL {p.kl:.4f}, feature {p.feature_act}"
    )


def concept_score(embedder: TextEmbedder, gens: Sequence[Generation], concept_vec: Tensor) -> float:
    """Mean cosine between each continuation and the concept's embedding."""
    emb = embedder.embed([g.text for g in gens])
    return float((emb.float() @ concept_vec.float()).mean())


@torch.no_grad()
def continuation_perplexity(model: Model, gens: Sequence[Generation]) -> float:
    """exp of the mean NLL of all continuation tokens, each given its prompt, under the model
    without edits."""
    nll, n = 0.0, 0
    for g in gens:
        if not g.new_ids:
            continue
        ids = g.prompt_ids + g.new_ids
        logits = model.run(torch.tensor([ids])).logits
        assert logits is not None
        logp = logits[0, :-1].float().log_softmax(-1)
        targets = torch.tensor(ids[1:], device=logp.device)
        token_logp = logp.gather(-1, targets[:, None])[:, 0]
        nll -= float(token_logp[len(g.prompt_ids) - 1 :].sum())
        n += len(g.new_ids)
    return math.exp(nll / n) if n else math.nan


def distinct_share(gens: Sequence[Generation]) -> float:
    """Mean over continuations of (distinct tokens / tokens); nan when nothing was generated."""
    shares = [len(set(g.new_ids)) / len(g.new_ids) for g in gens if g.new_ids]
    return sum(shares) / len(shares) if shares else math.nan


def kl_on_texts(model: Model, edits: Sequence[Edit], texts: Sequence[str]) -> float:
    """KL(unedited ‖ edited) in nats, mean over the texts' positions (BOS excluded)."""
    ids = [prompt_ids(model, t) for t in texts]
    return _mean_kl(model, edits, ids, [_logprobs(model, i, ()) for i in ids])


def _mean_kl(
    model: Model, edits: Sequence[Edit], ids: list[list[int]], clean: list[Tensor]
) -> float:
    total, n = 0.0, 0
    for seq, p_log in zip(ids, clean, strict=True):
        q_log = _logprobs(model, seq, edits)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # [T - 1]
        total += float(kl.sum())
        n += len(kl)
    return total / max(n, 1)


@torch.no_grad()
def _logprobs(model: Model, ids: list[int], edits: Sequence[Edit]) -> Tensor:
    """[T - 1, vocab] next-token log-probabilities after every position but BOS."""
    with steering(model, edits, prompt_len=0):  # every position counts as generated
        logits = model.run(torch.tensor([ids])).logits
    assert logits is not None
    return logits[0, 1:].double().log_softmax(-1)


@torch.no_grad()
def _feature_mean(
    model: Model, edits: Sequence[Edit], gens: Sequence[Generation], d: Dictionary, f: int
) -> float:
    """Mean activation of feature f over generated tokens, teacher-forced with the edits on."""
    site = d.cfg.site
    values: list[Tensor] = []
    for g in gens:
        if not g.new_ids:
            continue
        with steering(model, edits, prompt_len=len(g.prompt_ids)):
            acts = model.run(torch.tensor([g.prompt_ids + g.new_ids]), read=[site], logits=False)
        x = acts.acts[site][0, len(g.prompt_ids) :].float()
        values.append(feature_activation(d, x, f))
    return float(torch.cat(values).mean()) if values else math.nan
