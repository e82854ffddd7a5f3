"""Concrete-concept candidates from one cheap pass over every feature of a dictionary.

The features stage describes a sample (256 of thousands); a Golden Gate feature is rare, so it
is usually not in the sample. `top_tokens` encodes a few thousand ordinary tokens (attention
sinks and massive activations left out: `aimri.store.sinks`) with the whole dictionary and
keeps, per feature, the tokens of its `k` highest activations and how often it fired.
`concept_candidates` then applies the concept rule to every feature:
1. density between `min_density` and `max_density` (rare, but not a one-off) and at least
   `min_examples` top tokens;
2. its *peak words*: each top token stripped and lower-cased, kept when alphabetic, at least 3
   letters and not a function word (`STOP_WORDS`) or Python keyword. At least half the top
   tokens must be such words, and on at least two different words (one repeated word is a token
   detector; a concept has several forms);
3. coherence: mean pairwise cosine (MiniLM) of the distinct peak words.
Candidates come back ordered by word share × coherence. `concept_token_ids` turns a candidate's
words into the vocabulary ids the model would use to say them (" word", "word", " Word",
"Word"), which is what the steering measurement reads the model's probability of.
Not here: the causal check and the comparison with random directions (`golden_gate.py`).
"""

from __future__ import annotations

import itertools
import keyword
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.steer.sweep import TextEmbedder

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


class TopTokens(NamedTuple):
    """What one pass over ordinary tokens saw of every feature."""

    n_tokens: int
    """Ordinary tokens encoded (sinks left out)."""
    count: Tensor
    """[F] tokens on which each feature fired."""
    max_act: Tensor
    """[F] each feature's largest activation (0 for a feature that never fired)."""
    top_ids: Tensor
    """[F, k] token ids of each feature's k largest activations, largest first (-1: none)."""


@dataclass(frozen=True)
class Candidate:
    index: int
    words: list[str]
    """Distinct peak words, most common first."""
    density: float
    max_act: float
    share: float
    """Share of the top tokens that are concept words."""
    coherence: float
    """Mean pairwise cosine of the distinct words (MiniLM)."""


@torch.no_grad()
def top_tokens(
    dictionary: Dictionary, chunks: Iterable[tuple[Tensor, Tensor]], k: int = 16
) -> TopTokens:
    """Per feature, its `k` top tokens over `chunks` of (token ids [N], activations [N, d_in]);
    the caller leaves sinks out of the chunks."""
    F = dictionary.cfg.d_sae
    count = torch.zeros(F, dtype=torch.long)
    best_v = torch.full((F, k), -1.0)
    best_t = torch.full((F, k), -1, dtype=torch.long)
    n = 0
    for tokens, x in chunks:
        n += len(tokens)
        codes = dictionary.encode(x.to(dictionary.W_enc.dtype))
        idx = (
            codes.idx
            if codes.idx is not None
            else torch.arange(F).expand(len(x), F)  # a dense dictionary
        )
        f, v = idx.reshape(-1), codes.vals.reshape(-1).float()
        t = tokens.long()[:, None].expand_as(idx).reshape(-1)
        fired = v > 0
        f, v, t = f[fired], v[fired], t[fired]
        count += torch.bincount(f, minlength=F)
        best_v, best_t = _merge_top(best_v, best_t, f, v, t, k)
    max_act = best_v[:, 0].clamp_min(0.0)
    return TopTokens(n, count, max_act, torch.where(best_v > 0, best_t, -1))


def _merge_top(
    best_v: Tensor, best_t: Tensor, f: Tensor, v: Tensor, t: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Merge new (feature, value, token) triples into each feature's running top k."""
    F = best_v.shape[0]
    old_f = torch.arange(F).repeat_interleave(k)
    all_f = torch.cat([old_f, f])
    all_v = torch.cat([best_v.reshape(-1), v])
    all_t = torch.cat([best_t.reshape(-1), t])
    order = torch.argsort(all_v, descending=True, stable=True)
    order = order[torch.argsort(all_f[order], stable=True)]  # by feature, largest value first
    sf = all_f[order]
    start = torch.searchsorted(sf, torch.arange(F))
    rank = torch.arange(len(sf)) - start[sf]
    keep = rank < k
    out_v = torch.full((F, k), -1.0)
    out_t = torch.full((F, k), -1, dtype=torch.long)
    out_v[sf[keep], rank[keep]] = all_v[order][keep]
    out_t[sf[keep], rank[keep]] = all_t[order][keep]
    return out_v, out_t


def concept_candidates(
    tops: TopTokens,
    decode: Any,
    embedder: TextEmbedder,
    *,
    min_density: float = 1e-4,
    max_density: float = 1e-2,
    min_examples: int = 8,
) -> list[Candidate]:
    """Every feature that passes the concept rule (see the module docstring), best first.
    `decode` maps one token id to its text (the model's tokenizer)."""
    density = tops.count.float() / max(tops.n_tokens, 1)
    ok = (density >= min_density) & (density <= max_density)
    ok &= (tops.top_ids >= 0).sum(1) >= min_examples
    texts: dict[int, str | None] = {}
    pending: list[tuple[int, list[str], int]] = []
    for f in ok.nonzero()[:, 0].tolist():
        ids = [i for i in tops.top_ids[f].tolist() if i >= 0]
        for i in ids:
            if i not in texts:
                texts[i] = word_of(decode([i]))
        peaks = [w for i in ids if (w := texts[i])]
        words = [w for w, _ in Counter(peaks).most_common()]
        if 2 * len(peaks) >= len(ids) and len(words) >= 2:
            pending.append((f, words, len(peaks) * 1_000_000 // len(ids)))
    vecs = _vectors(embedder, sorted({w for _, words, _ in pending for w in words}))
    out = []
    for f, words, share_ppm in pending:
        pairs = list(itertools.combinations(words, 2))
        coherence = sum(float(vecs[a] @ vecs[b]) for a, b in pairs) / len(pairs)
        out.append(
            Candidate(
                index=f,
                words=words,
                density=float(density[f]),
                max_act=float(tops.max_act[f]),
                share=share_ppm / 1_000_000,
                coherence=coherence,
            )
        )
    return sorted(out, key=lambda c: (-c.share * c.coherence, c.index))


def concept_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Single-token vocabulary ids that spell the words: " w", "w", " W", "W" where each is
    one token of `tokenizer`."""
    ids: list[int] = []
    for w in words:
        for form in (f" {w}", w, f" {w.capitalize()}", w.capitalize()):
            enc = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
    return ids


def word_of(token: str) -> str | None:
    """A token's concept word: stripped, lower-cased, alphabetic, ≥ 3 letters, not a stop word."""
    w = token.strip().lower()
    return w if len(w) >= 3 and w.isalpha() and w not in STOP_WORDS else None


def _vectors(embedder: TextEmbedder, words: list[str]) -> dict[str, Tensor]:
    if not words:
        return {}
    return dict(zip(words, embedder.embed(words).float(), strict=True))
