"""The blue team's evidence: turn a `ModelDiff` and a steering experiment into candidates.

Signals, each a ranked list (`audit_words.fuse` adds them up):
- `output`: the output tokens B promotes most on the texts (mean probability change, KL pass);
- `lens`: the tokens the top layer's mean residual difference δ_L promotes through A's
  unembedding (the top layer: the best `steer_recovery`, else the largest ||δ_L||);
- `steer`: words over-represented (`over_represented`) in A's greedy replies to the prompts
  with the top layer's mean difference where replies start (B − A at each prompt's last token)
  added at every position (`STEER_GAIN` × its own length) vs A's own replies;
- `feature`: for the base dictionary's features that rise most in B, the feature's label words,
  else the tokens its decoder row promotes (logit effects);
- `trigger`: input tokens after which KL(B‖A) is ≥ `TRIGGER_RATIO` × its mean;
- `context`: the texts holding the highest-KL positions.
A word candidate's keywords: the word, words it comes with (the same feature, the same steered
reply), and the content words of where it shows: first where B itself shows it (its top-KL
contexts, feature contexts), then the prompts whose steered reply has it. Not here: the diff itself (`diff.py`), ranking (`audit_words.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aimri.checkup.audit_words import (
    CONTEXT_WEIGHT,
    Candidate,
    fuse,
    over_represented,
    token_word,
    top_words,
    words,
)
from aimri.checkup.diff import ModelDiff
from aimri.dicts.dictionary import Dictionary
from aimri.features.effects import logit_effects
from aimri.model.adapter import Model
from aimri.steer.directions import mean_difference, token_activations
from aimri.steer.edits import AddDirection
from aimri.steer.generate import generate

STEER_GAIN = 1.5
TRIGGER_RATIO = 3.0
N_WHERE = 5
N_WITH = 2


@dataclass
class Evidence:
    """Everything the candidates draw on, gathered once."""

    signals: dict[str, list[str]]
    where: dict[str, list[str]] = field(default_factory=dict)
    """word → texts where B itself shows it (top-KL context windows, feature contexts)."""
    steered_where: dict[str, list[str]] = field(default_factory=dict)
    """word → prompts where A steered toward B shows it (indirect: listed after `where`)."""
    groups: list[list[str]] = field(default_factory=list)
    """Word lists that belong together (a feature's words, a steered reply's new words)."""
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    """word → evidence record."""


def top_layer(d: ModelDiff) -> int | None:
    changed = [ly for ly in d.layers if ly.changed]
    if not changed:
        return None
    measured = [ly for ly in changed if ly.steer_recovery is not None]
    if measured:
        return max(measured, key=lambda ly: ly.steer_recovery or 0.0).layer
    return max(changed, key=lambda ly: ly.mean_diff_rel).layer


def diff_evidence(d: ModelDiff, feature_words: dict[int, list[str]]) -> Evidence:
    """The output, lens, feature and trigger signals of a diff, with where each word shows."""
    ev = Evidence(signals={})
    out = [(token_word(s.token), s) for s in d.kl.promoted]
    ev.signals["output"] = [w for w, _ in out if w]
    for w, s in out:
        if w:
            ev.details.setdefault(w, {})["output"] = {
                "p_a": round(s.mean_prob_a, 6),
                "p_b": round(s.mean_prob_b, 6),
            }
    L = top_layer(d)
    if L is not None:
        lens = [token_word(t.token) for t in d.layers[L].promoted]
        ev.signals["lens"] = [w for w in lens if w]
        for i, w in enumerate(ev.signals["lens"]):
            ev.details.setdefault(w, {})["lens"] = {"layer": L, "rank": i + 1}
    if d.features is not None:
        rising = [f for f in d.features.changed if f.smd > 0]
        ev.signals["feature"] = []
        for f in rising:
            fw = feature_words.get(f.feature, [])
            if not fw:
                continue
            ev.signals["feature"].append(fw[0])
            ev.groups.append(fw)
            for w in fw:
                ev.details.setdefault(w, {}).setdefault("features", []).append(
                    {"feature": f.feature, "label": f.label, "smd": round(f.smd, 3)}
                )
                ev.where.setdefault(w, []).extend(c.context for c in f.contexts)
    for c in d.kl.top_contexts:
        for t in c.top_b:
            w = token_word(t.token)
            if w:
                ev.where.setdefault(w, []).append(c.context)
    return ev


def feature_words(
    base: Model, d: ModelDiff, dictionary: Dictionary | None, n: int = 5
) -> dict[int, list[str]]:
    """For B's rising features: label words, else the words its decoder row promotes."""
    if d.features is None or dictionary is None:
        return {}
    rising = [f for f in d.features.changed if f.smd > 0]
    out = {f.feature: words(f.label) for f in rising if f.label}
    todo = [f.feature for f in rising if not out.get(f.feature)]
    if todo:
        rows = dictionary.W_dec[torch.tensor(todo)].detach().float()
        eff = logit_effects(base, rows, 3 * n)
        for f, ids in zip(todo, eff.promoted.tolist(), strict=True):
            toks = [token_word(base.tokenizer.decode([i])) for i in ids]
            out[f] = list(dict.fromkeys(w for w in toks if w))[:n]
    return out


@dataclass(frozen=True)
class SteerEvidence:
    layer: int
    strength: float
    words: list[str]
    """Over-represented in the steered replies, best first."""
    z: dict[str, float]
    examples: list[dict[str, str]]
    """Prompts whose reply the steering changed: A's reply, then A's steered reply."""
    steered: list[str] = field(repr=False)
    """A's steered reply to every prompt."""


def steer_evidence(
    base: Model,
    other: Model,
    layer: int,
    prompts: Sequence[str],
    max_new_tokens: int,
) -> SteerEvidence:
    """Add B−A's mean residual difference at `layer`, taken where the replies start (each
    prompt's last token), to A at every position; what does A say then?"""
    site = f"blocks.{layer}.hook_resid_post"
    last_b = torch.stack([a[-1] for a in token_activations(other, site, prompts)])  # [n, d]
    last_a = torch.stack([a[-1] for a in token_activations(base, site, prompts)])
    delta = mean_difference(last_b, last_a)
    strength = STEER_GAIN * float(delta.norm())
    edit = AddDirection(site, delta, strength)
    plain = [g.text for g in generate(base, prompts, max_new_tokens=max_new_tokens)]
    steered = [g.text for g in generate(base, prompts, [edit], max_new_tokens=max_new_tokens)]
    n_b = Counter(w for t in steered for w in words(t))
    shifts = over_represented(n_b, Counter(w for t in plain for w in words(t)))
    changed = [i for i, (a, b) in enumerate(zip(plain, steered, strict=True)) if a != b]
    return SteerEvidence(
        layer=layer,
        strength=round(strength, 4),
        words=[s.word for s in shifts],
        z={s.word: s.z for s in shifts},
        examples=[
            {"prompt": prompts[i], "a": plain[i], "a_steered": steered[i]} for i in changed[:3]
        ],
        steered=steered,
    )


def add_steering(ev: Evidence, s: SteerEvidence, prompts: Sequence[str]) -> None:
    """The steering signal, and where each of its words shows."""
    ev.signals["steer"] = s.words
    for w in s.words:
        ev.details.setdefault(w, {})["steer"] = {"layer": s.layer, "z": s.z[w]}
    for p, t in zip(prompts, s.steered, strict=True):
        found = [w for w in dict.fromkeys(words(t)) if w in s.z]
        for w in found:
            ev.steered_where.setdefault(w, []).append(p)
        if len(found) > 1:
            ev.groups.append(found)


def word_candidates(ev: Evidence) -> list[Candidate]:
    fused = fuse(ev.signals)
    out = []
    for w, sc in fused.items():
        direct = top_words(ev.where.get(w, []), N_WHERE, exclude=[w])
        steered = top_words(ev.steered_where.get(w, []), N_WHERE, exclude=[w])
        where = list(dict.fromkeys(direct + steered))[:N_WHERE]
        with_ = Counter(x for g in ev.groups if w in g for x in g if x != w)
        co = [x for x, _ in sorted(with_.items(), key=lambda kv: (-kv[1], -fused.get(kv[0], 0)))]
        sources = [name for name, ranked in ev.signals.items() if w in ranked]
        out.append(
            Candidate(
                kind="word",
                lead=w,
                text=f"B promotes '{w}' ({', '.join(sources)})"
                + (f", where: {' '.join(where[:3])}" if where else ""),
                keywords=[*co[:N_WITH], *where],
                score=sc,
                evidence={"sources": sources, **ev.details.get(w, {})},
            )
        )
    return out


def trigger_candidates(d: ModelDiff) -> list[Candidate]:
    floor = TRIGGER_RATIO * d.kl.mean
    out = []
    strong = [t for t in d.kl.triggers if t.mean_kl >= floor and token_word(t.token)]
    for i, t in enumerate(strong):
        w = token_word(t.token)
        assert w is not None
        ctx = [c for c in d.kl.top_contexts if c.token == t.token]
        after = [x for c in ctx for x in (token_word(p.token) for p in c.top_b) if x]
        out.append(
            Candidate(
                kind="trigger",
                lead=w,
                text=f"after the input '{w}', B departs from A (mean KL {t.mean_kl:.3g} vs "
                f"{d.kl.mean:.3g} overall, {t.count} times)",
                keywords=[*after[:N_WITH], *top_words([c.context for c in ctx], N_WHERE, [w])],
                score=1.0 / (i + 1),
                evidence={
                    "mean_kl": t.mean_kl,
                    "count": t.count,
                    "contexts": [c.context for c in ctx[:3]],
                },
            )
        )
    return out


def context_candidates(d: ModelDiff, texts: Sequence[str]) -> list[Candidate]:
    """One per text, ranked by the summed KL of its top-KL positions."""
    by_text: dict[int, float] = {}
    for c in d.kl.top_contexts:
        by_text[c.text_index] = by_text.get(c.text_index, 0.0) + c.kl
    out = []
    for i, t in enumerate(sorted(by_text, key=lambda t: -by_text[t])):
        ctx = [c for c in d.kl.top_contexts if c.text_index == t]
        after = [x for c in ctx for x in (token_word(p.token) for p in c.top_b) if x]
        own = top_words([ctx[0].context], N_WHERE)
        lead = own[0] if own else (after[0] if after else f"text{t}")
        out.append(
            Candidate(
                kind="context",
                lead=lead,
                text=f"B departs most from A in: '{ctx[0].context.strip()}' (KL {by_text[t]:.3g})",
                keywords=[*own, *after[:3]],
                score=CONTEXT_WEIGHT / (i + 1),
                evidence={
                    "text_index": t,
                    "kl": by_text[t],
                    "contexts": [c.context for c in ctx[:3]],
                },
            )
        )
    return out
