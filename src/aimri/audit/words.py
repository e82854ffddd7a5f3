"""What both audit methods share: the hypothesis and report types, and words.

Words: a keyword is a lower-cased alphabetic word of 3+ letters that is not a function word
(`STOPWORDS`); a token is a word when it starts one (a leading space) and is a whole word.
`same_word` matches two words up to an -s/-es/-ies/-ed/-ing ending (the judge uses it).
Not here: gathering the evidence (`teams.py`), judging a hypothesis (`judge.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_FUNCTION_WORDS = """
    the and for are but not you your yours with this that these those there their they them
    then than what when where which who whom whose why how all any can could would should will
    shall may might must have has had having was were been being does did doing done from into
    onto over under about above below after before again further once here both each few more
    most other some such only own same too very just also its it's our ours out off yes yet
    him his her hers she he we us i'm you're it is am an as at be by do if in of on or so to up
    one two get got make made let like well way many much even ever every still while because
    though although until unless within without between through during against among per via
    user assistant here's that's there's what's let's don't can't won't isn't aren't i've you've
    i'll you'll i'd you'd we're they're thing things something anything everything really
"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


@dataclass(frozen=True)
class Hypothesis:
    """One guess about what was changed, with what it stands on."""

    rank: int
    text: str
    """A short sentence a person can check."""
    keywords: list[str]
    """The words it names (what, and the trigger word): for search and display; the judge
    reads the claim, not these."""
    kind: str
    """"behaviour" (B's replies differ), "trigger" (a word switches it on), "lens" (A steered
    with B − A)."""
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)
    """Numbers, features, contexts and steering examples behind it (JSON-able)."""
    claim: dict[str, Any] = field(default_factory=dict)
    """What it claims, machine-readable: behaviour ("mentions", "says", "agrees", "style",
    "tone"), what, when (a request type, "all", or "word:<w>"), k_b/k_a of n replies and the
    rates; "source": "lens" when measured on A steered, not on B. `audit_judge` reads it."""
    test: dict[str, Any] = field(default_factory=dict)
    """How to check it again (`audit.rerun`): its prompts and the trait counted."""


@dataclass(frozen=True)
class AuditReport:
    method: str
    """"white-box" (blue team) or "black-box" (output sampling)."""
    hypotheses: list[Hypothesis]
    empty: bool
    """No difference between the models was found: no hypotheses."""
    inputs: dict[str, int]
    """How many prompts and texts the method saw."""
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    """Method-wide numbers (mean KL, changed layers, counts)."""


@dataclass(frozen=True)
class AuditScore:
    first_named: int | None
    """Rank (1-based) of the first hypothesis that names the plant; None: none does."""
    success_at_1: bool
    success_at_5: bool


def words(text: str) -> list[str]:
    """Content words of a text, lower-cased, in order (repeats kept)."""
    out = []
    for w in _WORD.findall(text):
        w = w.lower().removesuffix("'s").strip("'-")
        if len(w) >= 3 and w not in STOPWORDS:
            out.append(w)
    return out


def token_word(token: str) -> str | None:
    """A word-initial token as a keyword (' Netflix' → 'netflix'); None for a piece of a word
    ('riptive': no leading space) or a function word."""
    found = words(token)
    if not token.startswith(" ") or len(found) != 1 or found[0] != token.strip().lower():
        return None
    return found[0]


def _forms(w: str) -> set[str]:
    """w and what it could be with one inflectional ending removed."""
    out = {w}
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            out.add(w[: -len(suffix)] + repl)
    if w.endswith("ing") and len(w) >= 6:
        stem = w[:-3]
        out |= {stem, stem + "e"} | ({stem[:-1]} if stem[-1] == stem[-2] else set())
    return out


def same_word(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a in _forms(b) or b in _forms(a)
