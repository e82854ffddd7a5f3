"""Words in context: the units a token label names, how they are shown, and how such a label
predicts activations (the offline simulator).

A model's tokens are pieces: "codecs" may be `" cod"`, `"ecs"`, or `"C"`, `"od"`, `"ecs"`. A
label names the *word* a piece belongs to in its context, never the piece. `units` groups a
window's tokens: a token joins the unit before it when it starts with a letter or digit and that
unit ends with one or is a lone space (tokenizers that split `" codecs"` as `" "`, `"co"`, …);
special tokens never join; every other token starts a unit. So a unit is a
word, a number, a punctuation token, a run of whitespace or a special token.

Units are shown visibly (`visible`): surrounding spaces dropped, ⏎ for a newline, ⇥ for a tab
or an indent (two or more spaces), ␣ for a lone space, ⟨endoftext⟩ for `<|endoftext|>`. Two
units are the same when their visible forms are, ignoring case (`key`).

Notation (the `tokens` explainer writes it, the simulation and rule scorers read it):
`fires on "codecs", "⏎" after ":"`: each item a JSON-quoted visible unit, optionally `after`
the unit right before it. `promotes "Paris", "London"` is an output label (the feature fires
right before one of them). Older labels (`tokens " it" (after " of")`) read the same way.
Not here: choosing what to name (`explain.py`), the scorers (`score.py`, `simulate.py`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch

from aimri.features.records import Example

FIRES_ON = "fires on "
PROMOTES = "promotes "
NO_OUTPUT = "no readable output effect"
_SPECIAL = re.compile(r"^<\|([^<>|]+)\|>$|^<(/?(?:s|unk|pad|bos|eos))>$")
_WHITE = re.compile(r"\r?\n|\t| {2,}")
_ITEM = re.compile(
    r'"((?:[^"\\]|\\.)*)"(?:\s*\(?after\s+"((?:[^"\\]|\\.)*)"\)?)?'
)  # "x", "x" after "y", or the older "x" (after "y")


def is_special(token: str) -> bool:
    """A special token written out, such as `<|endoftext|>`, `<|im_start|>` or `</s>`."""
    return _SPECIAL.match(token) is not None


def visible(text: str) -> str:
    """A unit as a reader sees it: `" codecs"` → `codecs`, `"\\n"` → `⏎`, `":\\n"` → `:⏎`,
    `"    "` → `⇥`, `" "` → `␣`, `"<|endoftext|>"` → `⟨endoftext⟩`."""
    special = _SPECIAL.match(text)
    if special:
        return f"⟨{special.group(1) or special.group(2)}⟩"
    if text and not text.strip(" "):
        return "⇥" if len(text) > 1 else "␣"
    blank = not text.strip()  # whitespace only: its spaces are an indent, not word breaks
    shown = _WHITE.sub(_symbol, text if blank else text.strip(" "))
    return shown.replace(" ", "") if blank else shown


def _symbol(m: re.Match[str]) -> str:
    return "⏎" if m.group().endswith("\n") else "⇥"


def key(text: str) -> str:
    """What makes two units the same: their visible form, case ignored."""
    return visible(text).lower()


class Unit(NamedTuple):
    start: int
    """Index of the unit's first token in the window (a lone space token before a word is
    in its text, not in its tokens)."""
    end: int
    """One past its last token."""
    text: str
    """Its tokens joined."""


def units(tokens: Sequence[str]) -> list[Unit]:
    """The window's tokens grouped into words, numbers, punctuation, whitespace and specials."""
    out: list[Unit] = []
    for i, tok in enumerate(tokens):
        prev = out[-1].text if out else ""
        joins = (
            tok[:1].isalnum()
            and (prev[-1:].isalnum() or prev == " ")  # a lone space token is the word's own
            and not is_special(tok)
            and not is_special(prev)
        )
        if joins and prev == " ":  # the space is shown with the word, and not predicted
            out[-1] = Unit(i, i + 1, prev + tok)
        elif joins:
            u = out[-1]
            out[-1] = Unit(u.start, i + 1, u.text + tok)
        else:
            out.append(Unit(i, i + 1, tok))
    return out


# --- the notation ---------------------------------------------------------------------------


class Claim(NamedTuple):
    unit: str
    """The `key` of the unit the label names."""
    after: str | None
    """The `key` of the unit that must come right before it, or None for any."""


def quote(text: str) -> str:
    """A unit's visible form, JSON-quoted: `"codecs"`, `"⏎"`."""
    return json.dumps(visible(text), ensure_ascii=False)


def item(text: str, after: str | None = None) -> str:
    """One item of a label: `"⏎"`, or `"⏎" after ":"`."""
    return quote(text) + (f" after {quote(after)}" if after is not None else "")


def claims(label: str) -> list[Claim]:
    """The units (and contexts) a label in this notation names, in order."""
    out = []
    for unit, after in _ITEM.findall(label):
        k = key(_unquote(unit))
        if k:
            out.append(Claim(k, key(_unquote(after)) if after else None))
    return out


def is_token_label(label: str) -> bool:
    """Labels the offline simulator reads: the `tokens` and `logits` explainers' notation."""
    return label.startswith((FIRES_ON, PROMOTES, NO_OUTPUT, "tokens ", "the token "))


def _unquote(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s


# --- the offline simulator ------------------------------------------------------------------


class Parsed(NamedTuple):
    """A window cut into units once, so that many labels can be simulated on it cheaply."""

    n_tokens: int
    spans: list[tuple[int, int]]
    """Per unit: its tokens' [start, end)."""
    keys: list[str]
    """Per unit: its `key`."""
    next_keys: list[str]
    """Per token: the key of the next token alone ("" at the end), for output labels."""


def parse(tokens: Sequence[str]) -> Parsed:
    us = units(tokens)
    following = [key(t) for t in tokens[1:]] + [""]
    return Parsed(len(tokens), [(u.start, u.end) for u in us], [key(u.text) for u in us], following)


def predict(label: str, window: Parsed) -> list[float]:
    """1 on every token of each unit the label names (in its context, where given), else 0;
    for an output label, 1 on a token right before one it promotes."""
    named = claims(label)
    row = [0.0] * window.n_tokens
    if label.startswith(PROMOTES):
        promoted = {c.unit for c in named}
        return [1.0 if k in promoted else 0.0 for k in window.next_keys]
    plain = {c.unit for c in named if c.after is None}
    ctx = {(c.after, c.unit) for c in named if c.after is not None}
    for j, ((start, end), k) in enumerate(zip(window.spans, window.keys, strict=True)):
        before = window.keys[j - 1] if j else None
        if k in plain or (before, k) in ctx:
            row[start:end] = [1.0] * (end - start)
    return row


def simulate_tokens(label: str, windows: Sequence[Example]) -> list[list[float]]:
    """The offline simulator: per window, per token, the predicted activation (0 or 1)."""
    return [predict(label, parse(e.tokens)) for e in windows]


def pooled_pearson(predicted: Sequence[Sequence[float]], windows: Sequence[Example]) -> float:
    """Pearson r of predicted with true activations over every token of every window; 0 when
    the prediction is constant (it predicts nothing), nan when the truth is."""
    p = torch.tensor([v for row in predicted for v in row], dtype=torch.float64)
    t = torch.tensor([v for e in windows for v in e.acts], dtype=torch.float64)
    if len(t) < 2 or float(t.std()) == 0:
        return math.nan
    if float(p.std()) == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([p, t]))[0, 1])
