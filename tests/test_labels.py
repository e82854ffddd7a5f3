"""Labels in words: word pieces merged into their word, whitespace and special tokens shown and
scored like any other token, the context named where it is what fires, and an explainer that
stops naming words once they no longer help it predict its own examples.

Features are planted on text cut by the tiny models' own byte-level BPE tokenizer (it splits
"codecs" into five pieces): activations are set from character positions in the text, never
from `words.units`, so the planting does not share the code it checks."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from aimri.corpus.text import TokenText
from aimri.features import words
from aimri.features.explain import TokensExplainer
from aimri.features.records import Example, ExampleKind, FeatureStats, Label, explain_split
from aimri.features.score import TokenRuleScorer
from aimri.features.simulate import SimulationScorer
from tests.conftest import _tokenizer

FILLER = ["audio", "video", "we", "ship", "fast", "the", "code", "decks", "data", "list"]


@pytest.fixture(scope="module")
def tokenize(tmp_path_factory) -> Callable[[str], list[str]]:
    tok = _tokenizer(tmp_path_factory.mktemp("tokenizer"))
    text = TokenText(tok)
    return lambda s: text(tok(s, add_special_tokens=False)["input_ids"])


def planted(
    texts: Callable[[random.Random, bool], str],
    fires_at: Callable[[str], list[int]],
    tokenize: Callable[[str], list[str]],
    seed: int = 0,
) -> FeatureStats:
    """A feature firing on the tokens that cover the characters `fires_at(text)` names: 20 top
    and 18 quantile windows (3 buckets, weaker in lower ones) holding the target, 12 random
    windows without it. `texts(rng, with_target)` writes a window's text."""
    rng = random.Random(seed)

    def window(kind: ExampleKind, bucket: int, strength: float, ctx: int) -> Example:
        text = texts(rng, kind != "random_negative")
        toks = tokenize(text)
        assert "".join(toks) == text
        chars = set(fires_at(text))
        acts, at = [], 0
        for t in toks:
            hit = chars & set(range(at, at + len(t)))
            acts.append(strength * (1 + 0.1 * rng.random()) if hit else 0.0)
            at += len(t)
        return Example(toks, acts, ctx, 0, kind, bucket)

    examples = [window("top", 0, 5.0 - 0.1 * i, i) for i in range(20)]
    examples += [
        window("quantile", b, 3.0 / b, 100 + 10 * b + j) for b in (1, 2, 3) for j in range(6)
    ]
    examples += [window("random_negative", 0, 0.0, 500 + i) for i in range(12)]
    top = max(e.max_act for e in examples)
    return FeatureStats(
        index=0, density=0.01, max_act=top, mean_act=1.0, quantiles={}, hist_edges=[0.0, 1.0],
        hist_counts=[1], examples=examples,
    )  # fmt: skip


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def codecs_text(rng: random.Random, with_target: bool) -> str:
    word = rng.choice([" codecs", " Codecs"]) if with_target else ""
    return f"{sentence(rng, 3).capitalize()}{word} {sentence(rng, 4)}."


def codecs_chars(text: str) -> list[int]:
    at = text.lower().find(" codecs")
    return list(range(at + 1, at + 7)) if at >= 0 else []


def heading_text(rng: random.Random, with_target: bool) -> str:
    """Lines ending in '.', and (with the target) a heading line ending in ':'."""
    lines = [sentence(rng, 4) + "." for _ in range(3)]
    if with_target:
        lines.insert(rng.randrange(3), rng.choice(["Features", "Notes", "Usage"]) + ":")
    return "\n".join(lines) + "\n"


def newline_after_colon(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == "\n" and i and text[i - 1] == ":"]


def score(label: str, f: FeatureStats) -> float:
    (s,) = SimulationScorer().score([Label(f.index, label, "tokens")], [f])
    return s.value


def test_the_tokenizer_really_cuts_the_word_into_pieces(tokenize):
    pieces = tokenize(" codecs")
    assert len(pieces) > 2 and "codecs" not in pieces and " codecs" not in pieces


def test_a_word_in_pieces_is_labelled_with_the_word(tokenize):
    f = planted(codecs_text, codecs_chars, tokenize)
    (label,) = TokensExplainer().explain([f])
    assert label.text.lower() == 'fires on "codecs"', label.text  # either case, as written
    # the simulation predicts every piece of the word, and only them, on held-out windows
    held = f.of_kind("random_negative")[0]
    assert words.simulate_tokens(label.text, [held]) == [[0.0] * len(held.tokens)]
    top = f.of_kind("top")[-1]
    (row,) = words.simulate_tokens(label.text, [top])
    assert row == [1.0 if a > 0 else 0.0 for a in top.acts]
    # and the word predicts held-out activations better than any of its pieces would
    r = score(label.text, f)
    assert r > 0.9
    pieces = {t for e in explain_split(f) for t, a in zip(e.tokens, e.acts, strict=True) if a > 0}
    assert max(score(f"tokens {json.dumps(p)}", f) for p in pieces) < r - 0.2


def test_a_newline_after_a_heading_colon_is_named_with_its_context(tokenize):
    f = planted(heading_text, newline_after_colon, tokenize)
    assert any(t == "\n" for e in f.examples for t in e.tokens)  # newlines are tokens here
    (label,) = TokensExplainer().explain([f])
    assert label.text == 'fires on "⏎" after ":"', label.text
    # scored like any other token: near-perfect with its context, far worse without it
    assert score(label.text, f) > 0.9
    assert score('fires on "⏎"', f) < 0.6
    (rule,) = TokenRuleScorer().score([label], [f])
    assert rule.value == 1.0  # every held-out positive has it, no random window does


def test_an_indent_and_a_special_token_are_explained_like_words():
    rng = random.Random(0)

    def win(kind: ExampleKind, ctx: int) -> Example:
        toks = [rng.choice([" x", " =", " y", "\n"]) for _ in range(12)]
        acts = [0.0] * 12
        if kind != "random_negative":
            for at in (rng.randrange(1, 5), rng.randrange(6, 11)):
                toks[at - 1 : at + 1] = ["<|endoftext|>", "    "]
                acts[at] = 2.0 + rng.random()
        return Example(toks, acts, ctx, 0, kind, 1 if kind == "quantile" else 0)

    examples = [win("top", i) for i in range(20)] + [win("quantile", 50 + i) for i in range(12)]
    examples += [win("random_negative", 90 + i) for i in range(8)]
    f = FeatureStats(0, 0.01, 3.0, 2.0, {}, [0.0, 1.0], [1], examples)
    (label,) = TokensExplainer().explain([f])
    assert label.text == 'fires on "⇥"', label.text
    assert score(label.text, f) > 0.9
    assert words.claims('fires on "⏎" after "⟨endoftext⟩"') == [("⏎", "⟨endoftext⟩")]


def test_the_explainer_stops_when_a_word_no_longer_raises_its_own_score():
    """ " Paris" carries most of the mass; " the" is everywhere and fires weakly on 3 of 5 of
    its occurrences (enough to pass the precision bar, and to be named by a rule that adds
    tokens until 80% of the mass is covered)."""
    rng = random.Random(1)

    def win(kind: ExampleKind, ctx: int) -> Example:
        toks = [rng.choice([" the", " a", " of", " and"]) for _ in range(16)]
        toks[rng.randrange(16)] = " Paris"
        acts = [4.0 if t == " Paris" else 0.0 for t in toks]
        for i, t in enumerate(toks):
            if t == " the" and rng.random() < 0.6:
                acts[i] = 0.8
        return Example(toks, acts, ctx, 0, kind, 1 if kind == "quantile" else 0)

    examples = [win("top", i) for i in range(20)] + [win("quantile", 50 + i) for i in range(12)]
    f = FeatureStats(0, 0.01, 4.0, 2.0, {}, [0.0, 1.0], [1], examples)
    paris = sum(a for e in explain_split(f) for a in e.acts if a == 4.0)
    total = sum(a for e in explain_split(f) for a in e.acts)
    assert paris / total < 0.8  # a mass-coverage rule would go on to name " the"
    (label,) = TokensExplainer().explain([f])
    assert label.text == 'fires on "Paris"', label.text
    windows = [words.parse(e.tokens) for e in explain_split(f)]
    longer = 'fires on "Paris", "the"'
    r_longer = words.pooled_pearson([words.predict(longer, w) for w in windows], explain_split(f))
    assert r_longer < label.meta["explain_r"] + 0.01


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        ("\n", "⏎"), ("\n\n", "⏎⏎"), ("\r\n", "⏎"), ("\t", "⇥"), ("    ", "⇥"), (" ", "␣"),
        ("\n   ", "⏎⇥"), (":\n", ":⏎"), (" codecs", "codecs"), ("<|endoftext|>", "⟨endoftext⟩"),
        ("<|im_start|>", "⟨im_start⟩"), ("</s>", "⟨/s⟩"), ("<div>", "<div>"),
    ],
)  # fmt: skip
def test_whitespace_and_special_tokens_are_visible(token, shown):
    assert words.visible(token) == shown


def test_pieces_join_their_word_and_nothing_else():
    toks = [
        "The",
        " cod",
        "ecs",
        ",",
        " ",
        "co",
        "de",
        "c",
        "s",
        "<|endoftext|>",
        "ok",
        "\n",
        "2",
        "0",
    ]
    assert [u.text for u in words.units(toks)] == [
        "The", " codecs", ",", " codecs", "<|endoftext|>", "ok", "\n", "20",
    ]  # fmt: skip
