"""Explainers label features from their explain-split examples only, and never crash on a bad
reply: the offline ones on hand-built records, the LLM one with a scripted chat client."""

from __future__ import annotations

import dataclasses
import re

import pytest

from aimri.config import LLMConfig
from aimri.errors import AimriError
from aimri.features.chat import ChatReply
from aimri.features.explain import (
    EXPLAINERS,
    LLMExplainer,
    LogitsExplainer,
    TokensExplainer,
    make_explainer,
)
from aimri.features.records import (
    Example,
    ExampleKind,
    FeatureStats,
    TokenEffect,
    explain_split,
    score_split,
)
from tests.scripted import ScriptedClient


def window(
    tokens: list[str], fire: dict[int, float], kind: ExampleKind = "top", bucket=0, context=0
) -> Example:
    acts = [fire.get(i, 0.0) for i in range(len(tokens))]
    return Example(tokens, acts, context=context, start=0, kind=kind, bucket=bucket)


def feature(examples: list[Example], index: int = 0, **kw) -> FeatureStats:
    return FeatureStats(
        index=index,
        density=0.01,
        max_act=max(e.max_act for e in examples),
        mean_act=1.0,
        quantiles={"p50": 1.0, "p90": 2.0, "p99": 3.0},
        hist_edges=[0.0, 1.0],
        hist_counts=[1],
        examples=examples,
        **kw,
    )


FILLER = [" x", " =", " 1", " the", " data", ","]


def import_feature(index: int = 0) -> FeatureStats:
    """Fires on " import" after a newline, in top and quantile examples, silent in negatives."""
    examples = []
    for i in range(8):
        toks = [*FILLER[i % 3 :], "\n", " import", " os", "\n", " y"]
        examples.append(window(toks, {toks.index(" import"): 5.0 - 0.1 * i}, context=i))
    for b in (1, 2, 3):
        for j in range(4):
            toks = [*FILLER[j:], "\n", " import", " numpy", " as", " np"]
            examples.append(
                window(toks, {toks.index(" import"): 3.0 / b}, "quantile", b, 10 * b + j)
            )
    examples += [window(FILLER, {}, "random_negative", context=90 + i) for i in range(4)]
    return feature(examples, index)


def test_tokens_explainer_names_the_token_that_carries_the_mass():
    (label,) = TokensExplainer().explain([import_feature()])
    assert label.explainer == "tokens"
    # " import" always follows a newline here, so the context selects nothing: not named.
    assert label.text == 'fires on "import"'
    assert label.meta["explain_r"] > 0.9  # 1 on " import" against graded activations


def test_tokens_explainer_names_a_context_only_where_it_selects():
    # " it" fires after " of" and is silent after " saw": the context is what fires it.
    examples = []
    for i in range(8):
        toks = [" all", " of", " it", " and", " I", " saw", " it", " too"]
        examples.append(window(toks, {2: 3.0 + 0.1 * i}, context=i))
    (label,) = TokensExplainer().explain([feature(examples)])
    # it fires on half its occurrences, which passes the precision bar (0.5)
    assert label.text == 'fires on "it" after "of"', label.text


def test_tokens_explainer_lists_several_tokens_of_a_concept():
    words = [" Paris", " France", " French"]
    examples = [
        window([" I", " love", words[i % 3], " in", " spring"], {2: 4.0}, context=i)
        for i in range(9)
    ]
    (label,) = TokensExplainer().explain([feature(examples)])
    assert label.text.startswith("fires on ")
    assert all(f'"{w.strip()}"' in label.text for w in words), label.text
    assert '"in"' not in label.text


def test_tokens_explainer_prefers_over_represented_tokens_to_frequent_ones():
    # " the" is at a peak as often as " Rome", but it is everywhere in the windows.
    examples = []
    for i in range(6):
        toks = [" the", " the", " the", " Rome", " the", " the"]
        fire = {3: 4.0} if i % 2 else {0: 4.0}
        examples.append(window(toks, fire, context=i))
    (label,) = TokensExplainer().explain([feature(examples)])
    assert re.match(r'fires on "Rome"', label.text), label.text


def test_tokens_explainer_without_active_examples_says_so():
    f = feature([window(FILLER, {}, "random_negative"), window(FILLER, {0: 1.0}, "top")])
    f = dataclasses.replace(f, examples=f.of_kind("random_negative"))
    (label,) = TokensExplainer().explain([f])
    assert label.text == "" and "no active examples" in label.meta["error"]


def test_logits_explainer_names_whole_words_only():
    promoted = [TokenEffect(" London", 1.5), TokenEffect(" Paris", 3.0), TokenEffect("ducive", 2.5)]
    promoted += [TokenEffect(" meticul", 2.0), TokenEffect(" Rome", 0.1), TokenEffect(" ##", 1.0)]
    f = dataclasses.replace(import_feature(), promoted=promoted)
    (label,) = LogitsExplainer().explain([f])
    assert label.text == 'promotes "Paris", "London", "Rome"'
    assert label.meta["values"] == [3.0, 1.5, 0.1]
    pieces = [TokenEffect("ducive", 2.5), TokenEffect(" meticul", 2.0), TokenEffect("ancip", 1.0)]
    (none,) = LogitsExplainer().explain([dataclasses.replace(f, promoted=pieces)])
    assert none.text == "no readable output effect"
    (empty,) = LogitsExplainer().explain([import_feature()])
    assert empty.text == "" and "error" in empty.meta


def test_llm_explainer_parses_a_reply_with_preamble_and_quotes():
    client = ScriptedClient('Explanation: "Python import statements"')
    (label,) = LLMExplainer(client).explain([import_feature(7)])
    assert label.feature == 7
    assert label.text == "Python import statements"
    assert label.explainer == "llm:scripted"
    assert label.meta["prompt_tokens"] == 120 and label.meta["completion_tokens"] == 7
    assert "error" not in label.meta
    prompt = client.prompts[0][-1]["content"]
    assert "<<\\n>>" not in prompt and "<< import>>" in prompt  # the firing token is marked
    assert '" import" 9' in prompt  # the strongest activation is 9 on the 0-9 scale


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (ChatReply("I can't help with that request.", "stop"), "refused"),
        (ChatReply("As an AI language model, I", "stop"), "refused"),
        (ChatReply("", "refusal"), "refused"),
        (ChatReply("", "stop"), "empty"),
        (ChatReply("   \n\n", "stop"), "empty"),
        (ChatReply("", "length"), "truncated"),
        (ChatReply("Here is the explanation:", "length"), "truncated"),
        (ChatReply("!!! ???", "stop"), "junk"),
    ],
)
def test_llm_explainer_turns_unusable_replies_into_empty_labels(reply, error):
    (label,) = LLMExplainer(ScriptedClient(reply)).explain([import_feature()])
    assert label.text == ""
    assert label.meta["error"] == error


def test_llm_explainer_keeps_the_first_sentence_of_a_long_answer():
    long = (
        'This feature detects the "import" token in Python code. Specifically, it also fires '
        "on the x token, e.g. in x = 1 … " + "and more " * 30
    )
    (label,) = LLMExplainer(ScriptedClient(long)).explain([import_feature()])
    assert label.text == 'This feature detects the "import" token in Python code'
    (label,) = LLMExplainer(ScriptedClient("word " * 100)).explain([import_feature()])
    assert len(label.text) <= 161 and label.text.endswith("…")


def test_llm_explainer_keeps_finished_labels_when_one_feature_fails():
    client = ScriptedClient(
        "Python imports", AimriError("LLM endpoint http://x failed 5 times"), "**numpy**"
    )
    features = [import_feature(i) for i in range(3)]
    labels = LLMExplainer(client, concurrency=1).explain(features)
    assert [lab.feature for lab in labels] == [0, 1, 2]
    assert [lab.text for lab in labels] == ["Python imports", "", "numpy"]
    assert "failed 5 times" in labels[1].meta["error"]


def marked_feature() -> FeatureStats:
    """Every example carries a unique marker token, so a prompt shows which examples it used."""
    examples = [window([" a", f" top{i}", " b"], {1: 5.0 - 0.1 * i}, context=i) for i in range(12)]
    examples += [
        window([" a", f" q{b}_{j}", " b"], {1: 3.0 / b}, "quantile", b, 100 + 10 * b + j)
        for b in (1, 2, 3)
        for j in range(5)
    ]
    examples += [window([" a", f" neg{i}", " b"], {}, "random_negative") for i in range(3)]
    examples += [window([" a", f" hard{i}", " b"], {}, "hard_negative") for i in range(3)]
    return feature(examples)


def test_llm_explainer_sees_only_the_explain_split():
    f = marked_feature()
    client = ScriptedClient("markers")
    LLMExplainer(client, n_examples=100).explain([f])
    prompt = " ".join(m["content"] for m in client.prompts[0])
    seen = set(re.findall(r"(?:top|q|neg|hard)\d+(?:_\d+)?", prompt))
    allowed = {e.tokens[1].strip() for e in explain_split(f)}
    held_out = {
        e.tokens[1].strip()
        for e in score_split(f).positives + score_split(f).negatives + score_split(f).hard
    }
    assert seen == allowed
    assert not seen & held_out
    assert held_out, "the test needs held-out examples to mean anything"


@pytest.mark.parametrize("explainer", [TokensExplainer(), LogitsExplainer()])
def test_offline_explainers_ignore_the_held_out_examples(explainer):
    """Rewriting every score-split example (a loud " LEAK" token) leaves the label unchanged."""
    f = dataclasses.replace(import_feature(), promoted=[TokenEffect(" import", 1.0)])
    held = {
        id(e) for e in score_split(f).positives + score_split(f).negatives + score_split(f).hard
    }
    leaked = [
        dataclasses.replace(e, tokens=[" LEAK"] * len(e.tokens), acts=[99.0] * len(e.acts))
        if id(e) in held
        else e
        for e in f.examples
    ]
    g = dataclasses.replace(f, examples=leaked)
    assert [x.tokens for x in explain_split(g)] == [x.tokens for x in explain_split(f)]
    assert explainer.explain([f]) == explainer.explain([g])


def test_make_explainer_by_name():
    assert set(EXPLAINERS) == {"tokens", "logits", "llm"}
    assert make_explainer("tokens").name == "tokens"
    assert make_explainer("logits").name == "logits"
    with pytest.raises(AimriError, match="unknown explainer 'magic'.*tokens, logits, llm"):
        make_explainer("magic")
    with pytest.raises(AimriError, match="needs a chat endpoint"):
        make_explainer("llm")
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", model="smol", api_key_env="AIMRI_NO_KEY")
    assert make_explainer("llm", cfg).name == "llm:openai:smol"
