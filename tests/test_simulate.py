"""Scoring by simulation: the sanity cases a correlation scorer must pass, on hand-built
records (offline simulator) and with a scripted LLM (free-text labels)."""

from __future__ import annotations

import math
import random

import pytest

from aimri.features.chat import ChatReply, TokenLogprob
from aimri.features.records import Example, FeatureStats, Label, explain_split
from aimri.features.scorers import make_scorer
from aimri.features.simulate import SimulationScorer, parse_digits, simulation_windows
from aimri.features.words import claims, pooled_pearson
from tests.scripted import ScriptedClient

VOCAB = [f" w{i}" for i in range(40)]


def one_token_feature(target: str = " Paris", seed: int = 0, index: int = 0) -> FeatureStats:
    """Fires exactly on `target` (strength varying), silent on every other token; windows of
    random filler words, with `target` present in the top and quantile windows only."""
    rng = random.Random(seed)
    examples = []

    def win(kind: str, bucket: int, strength: float, with_target: bool, ctx: int) -> Example:
        toks = [rng.choice(VOCAB) for _ in range(16)]
        acts = [0.0] * 16
        if with_target:
            for at in rng.sample(range(16), 2):
                toks[at], acts[at] = target, strength
        return Example(toks, acts, ctx, 0, kind, bucket)  # type: ignore[arg-type]

    examples += [win("top", 0, 5.0 - 0.1 * i, True, i) for i in range(20)]
    examples += [
        win("quantile", b, 3.0 / b, True, 100 + 10 * b + j) for b in (1, 2, 3) for j in range(6)
    ]
    examples += [win("random_negative", 0, 0.0, False, 500 + i) for i in range(12)]
    return FeatureStats(
        index=index, density=0.01, max_act=5.0, mean_act=2.0, quantiles={}, hist_edges=[0.0, 1.0],
        hist_counts=[1], examples=examples,
    )  # fmt: skip


def score(label: str, f: FeatureStats, scorer=None):
    (s,) = (scorer or SimulationScorer()).score([Label(f.index, label, "tokens")], [f])
    return s


def test_a_one_token_feature_labelled_with_that_token_scores_near_one():
    s = score('tokens " Paris"', one_token_feature())
    assert s.value > 0.9, s  # binary prediction vs strengths 1-5: r < 1
    assert s.metrics["n_windows"] == 10 + 9 + 12  # held-out top, quantile half, random


def test_a_label_naming_random_tokens_scores_near_zero():
    f = one_token_feature()
    values = [
        score(f'tokens "{a}", "{b}"', f).value for a, b in zip(VOCAB[::2], VOCAB[1::2], strict=True)
    ]
    # slightly negative: a filler word never sits where the feature fires
    assert abs(sum(values) / len(values)) < 0.1 and max(abs(v) for v in values) < 0.2


def test_a_label_naming_an_absent_token_predicts_nothing():
    assert score('tokens " Berlin"', one_token_feature()).value == 0.0


def test_case_and_spaces_are_ignored_and_context_is_required():
    f = one_token_feature()
    assert score('tokens "paris"', f).value > 0.9
    assert claims('tokens " it" (after " of"), "X"') == [("it", "of"), ("x", None)]
    # A context that never precedes the token: the claim predicts nothing.
    assert score('tokens " Paris" (after " nowhere")', f).value == 0.0


def test_an_output_label_predicts_firing_before_its_tokens():
    f = one_token_feature()
    # The token after each " Paris" is random filler, so "promotes" the word after fails...
    assert abs(score('promotes " Paris"', f).value) < 0.3
    # ...while a feature that fires right before " Paris" is predicted by "promotes Paris".
    shifted = []
    for e in f.examples:
        acts = [*e.acts[1:], 0.0]
        shifted.append(Example(e.tokens, acts, e.context, e.start, e.kind, e.bucket))
    g = FeatureStats(**{**f.__dict__, "examples": shifted})
    assert score('promotes " Paris"', g).value > 0.9


def test_simulation_windows_never_overlap_what_the_explainer_saw():
    f = one_token_feature()
    seen = {(e.context, e.start) for e in explain_split(f)}
    held = {(e.context, e.start) for e in simulation_windows(f)}
    assert seen and held and not seen & held


def test_the_shuffled_label_baseline_is_near_zero():
    feats = [
        one_token_feature(t, seed=i, index=i) for i, t in enumerate([" Paris", " Rome", " Oslo"])
    ]
    labels = [
        Label(f.index, f'tokens "{t}"', "tokens")
        for f, t in zip(feats, [" Paris", " Rome", " Oslo"], strict=True)
    ]
    out = SimulationScorer().score(labels, feats)
    assert all(s.value > 0.9 for s in out)
    assert all(abs(s.baseline) < 0.1 for s in out)


def test_free_text_needs_an_llm_and_the_llm_simulator_reads_digits():
    f = one_token_feature()
    assert math.isnan(score("the capital of France", f).value)

    def respond(messages):
        lines = messages[-1]["content"].split("Tokens:\n", 1)[1].splitlines()
        return "\n".join(f"{i}\t{9 if 'Paris' in line else 0}" for i, line in enumerate(lines))

    llm = make_scorer("simulation", ScriptedClient(respond=respond))
    assert score("the capital of France", f, llm).value > 0.9
    junk = make_scorer("simulation", ScriptedClient(respond=lambda m: "I cannot do that"))
    s = score("the capital of France", f, junk)
    assert math.isnan(s.value) and s.metrics["failed_calls"] == 1


def test_digits_come_from_logprobs_as_an_expectation():
    toks = [
        TokenLogprob("0", 0.0), TokenLogprob("\t", 0.0),
        TokenLogprob("9", math.log(0.5), {"0": math.log(0.5)}), TokenLogprob("\n", 0.0),
        TokenLogprob("1", 0.0), TokenLogprob("\t", 0.0), TokenLogprob("0", 0.0),
    ]  # fmt: skip
    reply = ChatReply("0\t9\n1\t0", "stop", logprobs=toks)
    assert parse_digits(reply, 2) == pytest.approx([4.5, 0.0])
    assert parse_digits(ChatReply("0\t9\n1\t0", "stop"), 2) == [9.0, 0.0]
    assert parse_digits(ChatReply("0\t9", "stop"), 2) is None


def test_pooled_pearson_edges():
    e = Example([" a", " b"], [1.0, 0.0], 0, 0, "top")
    assert pooled_pearson([[1.0, 0.0]], [e]) == pytest.approx(1.0)
    assert pooled_pearson([[0.0, 0.0]], [e]) == 0.0
    assert math.isnan(
        pooled_pearson([[1.0, 0.0]], [Example([" a", " b"], [0.0, 0.0], 0, 0, "top")])
    )
