"""Scoring labels on held-out text, and the interpretable-fraction summary.

Features are built by hand from `records` dataclasses (quantile examples in buckets, random and
hard negatives), so `score_split` gives real splits. LLM judges are a scripted `ChatClient`
whose reply is a function of the prompt (a judge that is right, random, constant, or junk).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Sequence
from itertools import product

import pytest

from aimri.errors import AimriError
from aimri.features.chat import ChatReply, Message, TokenLogprob
from aimri.features.embed import Embedder, load_embedder
from aimri.features.records import (
    Example,
    ExampleKind,
    FeatureStats,
    Label,
    Score,
    explain_split,
    score_split,
)
from aimri.features.score import (
    DetectionScorer,
    EmbeddingScorer,
    FuzzingScorer,
    parse_verdicts,
    show,
    shuffled_label_texts,
)
from aimri.features.scorers import make_scorer
from aimri.features.summary import (
    auroc,
    format_summary,
    interpretability_summary,
    wilson_interval,
)
from tests.scripted import ScriptedClient

DOG_WORDS = {"dog", "dogs", "puppy", "puppies", "retriever", "beagle", "terrier", "poodle"}
CODE_WORDS = {"def", "import", "return", "print"}
DOG_SUBJECTS = [
    "The dog",
    "My puppy",
    "A golden retriever",
    "Our old beagle",
    "The neighbour's terrier",
]
DOG_PREDICATES = [
    "barked at the mailman this morning.",
    "chased its tail around the garden.",
    "fetched the red ball from the lake.",
    "slept on the rug after a long walk.",
]
CODE_LINES = [
    "def {f}(x):\n    return x * {k} + 1",
    "import {m}\nprint({m}.{f}(data, {k}))",
    "def {f}(items):\n    return [i for i in items if i > {k}]",
    "import {m}\nresult = {m}.{f}({k})\nprint(result)",
]
DOGS = [f"{s} {p}" for s, p in product(DOG_SUBJECTS, DOG_PREDICATES)]  # 20
CODE = [
    t.format(f=f, m=m, k=k)
    for (t, (f, m)), k in zip(
        product(CODE_LINES, [("load", "json"), ("parse", "os"), ("walk", "sys"), ("run", "re")]),
        range(20),
        strict=False,
    )
][:20] + [f"def step_{k}(state):\n    return state + {k}" for k in range(4)]


def example(text: str, kind: ExampleKind, words: set[str], bucket: int = 0) -> Example:
    """A window of word tokens; the feature fires on the words of `words` (positives only)."""
    tokens = re.findall(r"\s*\S+", text)
    fires = kind in ("top", "quantile")
    acts = [
        (1.0 + bucket) if fires and t.strip(" .,\n():").lower() in words else 0.0 for t in tokens
    ]
    return Example(tokens, acts, context=0, start=1, kind=kind, bucket=bucket)


def feature(
    index: int,
    positives: list[str],
    negatives: list[str],
    words: set[str],
    tops: Sequence[str] = (),
) -> FeatureStats:
    """Quantile examples across 2 buckets from `positives`; negatives split random/hard."""
    examples = [example(t, "top", words) for t in tops]
    examples += [example(t, "quantile", words, 1 + k % 2) for k, t in enumerate(positives)]
    examples += [
        example(t, "random_negative" if k % 3 else "hard_negative", words)
        for k, t in enumerate(negatives)
    ]
    return FeatureStats(index, 0.01, 3.0, 1.5, {}, [], [], examples)


def dog_feature(index: int = 0) -> FeatureStats:
    return feature(index, DOGS, CODE[:12], DOG_WORDS)


def code_feature(index: int = 1) -> FeatureStats:
    return feature(index, CODE[:20], DOGS[:12], CODE_WORDS)


def read_prompt(messages: list[Message]) -> tuple[str, list[str]]:
    user = messages[-1]["content"]
    found = re.search(r"^Explanation: (.*)$", user, re.MULTILINE)
    assert found is not None
    return found.group(1), re.findall(r"^\d+\. (.*)$", user, re.MULTILINE)


def about(label: str) -> set[str]:
    return DOG_WORDS if "dog" in label else CODE_WORDS


def has_word(text: str, words: set[str]) -> bool:
    return any(w.strip(" .,():").lower() in words for w in re.split(r"\s|\\n", text))


def bits(answers: list[bool]) -> str:
    return "[" + ", ".join("1" if a else "0" for a in answers) + "]"


def right_detector(messages: list[Message]) -> str:
    label, texts = read_prompt(messages)
    return "Sure! " + bits([has_word(t, about(label)) for t in texts])


def right_fuzz_judge(messages: list[Message]) -> str:
    label, texts = read_prompt(messages)
    marked = [re.findall(r"<<(.*?)>>", t) for t in texts]
    return bits([bool(m) and all(has_word(s, about(label)) for s in m) for m in marked])


LABELS = [Label(0, "dogs and puppies", "x"), Label(1, "Python code: def, import", "x")]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


# --- AUROC, metrics, parsing, baselines --------------------------------------------------------


def brute_auroc(pos: list[float], neg: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count_with_ties():
    rng = random.Random(0)
    for trial in range(200):
        n_pos, n_neg = rng.randint(1, 15), rng.randint(1, 15)
        levels = rng.choice([2, 3, 5, 1000])  # few levels: many ties
        pos = [float(rng.randrange(levels)) + (trial % 2) * 0.5 for _ in range(n_pos)]
        neg = [float(rng.randrange(levels)) for _ in range(n_neg)]
        assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg), abs=1e-12)
    assert auroc([1.0, 2.0], [0.0]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    assert math.isnan(auroc([], [1.0])) and math.isnan(auroc([1.0], []))


def test_parse_verdicts_reads_lists_and_refuses_junk():
    assert parse_verdicts("[1, 0, 1]", 3) == [True, False, True]
    assert parse_verdicts("Let me see.\n```\n[0,1,'1']\n```", 3) == [False, True, True]
    assert parse_verdicts("Examples [1] and [2] are... final: [0, 0]", 2) == [False, False]
    assert parse_verdicts("answers:\n1, 0, 0, 1", 4) == [True, False, False, True]
    for junk in ["", "I cannot help with that.", "[1, 0]", "[1, 2, 0]", "1. yes 2. no 3. yes"]:
        assert parse_verdicts(junk, 3) is None, junk


def test_shuffled_labels_are_a_derangement_within_each_explainer():
    for n in range(1, 25):
        labels = [Label(i, f"text {i}", "a") for i in range(n)]
        labels += [Label(i, f"other {i}", "b") for i in range(3)] + [Label(99, "", "a")]
        out = shuffled_label_texts(labels, seed=n)
        assert out == shuffled_label_texts(labels, seed=n)  # fixed for a seed
        assert out[-1] is None  # an empty label gets no baseline
        mine = out[:n]
        if n == 1:
            assert mine == [None]
            continue
        assert sorted(mine, key=str) == sorted((lab.text for lab in labels[:n]), key=str)
        assert all(t != lab.text for t, lab in zip(mine, labels[:n], strict=True))
        assert all(t is not None and t.startswith("other") for t in out[n : n + 3])


# --- embedding --------------------------------------------------------------------------------


def test_embedding_separates_dogs_from_code_and_beats_its_shuffled_baseline(embedder):
    scores = EmbeddingScorer(embedder).score(LABELS, [dog_feature(), code_feature()])
    dog, code = scores
    assert (dog.feature, dog.scorer, dog.explainer) == (0, "embedding", "x")
    assert dog.value > 0.9 and code.value > 0.9
    assert dog.baseline < dog.value - 0.4 and code.baseline < code.value - 0.4
    split = score_split(dog_feature())
    assert dog.metrics["n_pos"] == len(split.positives) == 10
    assert dog.metrics["n_neg"] == len(split.negatives) == 8  # random negatives: the headline
    assert dog.metrics["n_hard"] == len(split.hard) == 4  # hard ones reported apart
    assert dog.metrics["auroc"] == dog.value


def test_empty_label_gets_nan_and_lends_no_baseline(embedder):
    labels = [*LABELS, Label(2, "", "x")]
    features = [dog_feature(), code_feature(), dog_feature(2)]
    dog, code, empty = EmbeddingScorer(embedder).score(labels, features)
    assert math.isnan(empty.value) and math.isnan(empty.baseline)
    assert empty.metrics == {"empty_label": 1.0}
    assert dog.baseline < 0.5 and code.baseline < 0.5  # each other's labels, not ""


def test_a_label_without_statistics_is_refused(embedder):
    with pytest.raises(AimriError, match="feature 7"):
        EmbeddingScorer(embedder).score([Label(7, "dogs", "x")], [dog_feature()])


def tagged_feature() -> FeatureStats:
    """Every example's text carries a unique tag, so what a scorer saw can be checked exactly."""
    pos = [f"ex{k:03d}q {t}" for k, t in enumerate(DOGS)]
    neg = [f"ex{k:03d}n {t}" for k, t in enumerate(CODE[:12])]
    tops = [f"ex{k:03d}t {t}" for k, t in enumerate(DOGS[:5])]
    return feature(0, pos, neg, DOG_WORDS, tops)


def test_scorers_see_only_the_held_out_split(embedder):
    f = tagged_feature()
    explained = {e.text for e in explain_split(f)}
    held = score_split(f)
    held_texts = {e.text for e in held.positives + held.negatives + held.hard}
    assert explained and held_texts and not explained & held_texts
    tag = re.compile(r"ex\d{3}[qnt]")

    embedded: list[str] = []

    class Recording(Embedder):
        def embed(self, texts):
            embedded.extend(texts)
            return super().embed(texts)

    rec = Recording(embedder.model, embedder.tokenizer)
    EmbeddingScorer(rec).score([Label(0, "dogs", "x"), Label(1, "code", "x")], [f, code_feature()])
    assert {t for t in embedded if tag.match(t)} == held_texts

    for scorer in (DetectionScorer, FuzzingScorer):
        client = ScriptedClient(respond=right_detector)
        scorer(client).score([Label(0, "dogs", "x")], [f])
        shown = {m for p in client.prompts for m in tag.findall(p[-1]["content"])}
        assert shown and not shown & {tag.findall(t)[0] for t in explained}
        assert shown <= {tag.findall(t)[0] for t in held_texts}


# --- detection --------------------------------------------------------------------------------


def test_detection_with_a_right_judge_is_perfect_and_its_baseline_is_not():
    client = ScriptedClient(respond=right_detector)
    dog, code = DetectionScorer(client, batch_size=7).score(LABELS, [dog_feature(), code_feature()])
    for s in (dog, code):
        assert s.value == 1.0 and s.scorer == "detection"
        assert s.metrics["f1"] == s.metrics["precision"] == s.metrics["recall"] == 1.0
        assert s.metrics["n_pos"] == 10 and s.metrics["n_neg"] == 8  # random negatives only
        assert s.baseline == 0.0  # the other feature's label says yes exactly where it should not
        assert "auroc" not in s.metrics  # no logprobs came back
    assert len(client.prompts) == 2 * 2 * math.ceil(
        18 / 7
    )  # features × (label, baseline) × batches


def test_detection_with_a_constant_or_random_judge_is_at_chance():
    always = ScriptedClient(respond=lambda m: bits([True] * len(read_prompt(m)[1])))
    s = DetectionScorer(always).score(LABELS, [dog_feature(), code_feature()])[0]
    assert s.value == 0.5 and s.metrics["recall"] == 1.0

    def coin(messages: list[Message]) -> str:
        rng = random.Random(zlib.crc32(messages[-1]["content"].encode()))
        return bits([rng.random() < 0.5 for _ in read_prompt(messages)[1]])

    features = [dog_feature(i) for i in range(30)]
    labels = [Label(i, "dogs", "x") for i in range(30)]
    values = [
        s.value for s in DetectionScorer(ScriptedClient(respond=coin)).score(labels, features)
    ]
    assert abs(sum(values) / len(values) - 0.5) < 0.08
    assert len(set(values)) > 3  # the judge really answered differently per feature


def test_detection_auroc_comes_from_the_logprob_of_1():
    """A judge that always says 1 but is surer on dogs: balanced accuracy 0.5, AUROC 1."""

    def unsure(messages: list[Message]) -> ChatReply:
        label, texts = read_prompt(messages)
        tokens = [TokenLogprob("[", 0.0)]
        for k, t in enumerate(texts):
            sure = has_word(t, about(label))
            lp1, lp0 = (-0.05, -3.0) if sure else (-0.6, -0.8)
            tokens.append(TokenLogprob(" 1" if k else "1", lp1, {"1": lp1, "0": lp0}))
            tokens.append(TokenLogprob("," if k < len(texts) - 1 else "]", 0.0))
        return ChatReply(bits([True] * len(texts)), "stop", logprobs=tokens)

    dog = DetectionScorer(ScriptedClient(respond=unsure)).score(
        LABELS, [dog_feature(), code_feature()]
    )[0]
    assert dog.value == 0.5
    assert dog.metrics["auroc"] == 1.0

    def mismatched(messages: list[Message]) -> ChatReply:  # logprobs of another reply
        reply = unsure(messages)
        return ChatReply(reply.text.replace("1", "0"), "stop", logprobs=reply.logprobs)

    dog = DetectionScorer(ScriptedClient(respond=mismatched)).score(
        LABELS, [dog_feature(), code_feature()]
    )[0]
    assert dog.value == 0.5 and "auroc" not in dog.metrics


def test_junk_and_failing_judges_give_nan_with_the_error_counted():
    junk = ScriptedClient(respond=lambda m: "As an AI, I would rather talk about cats.")
    for s in DetectionScorer(junk, batch_size=10).score(LABELS, [dog_feature(), code_feature()]):
        assert math.isnan(s.value) and math.isnan(s.baseline)
        assert s.metrics["unparsed_calls"] == 2 and s.metrics["failed_calls"] == 0  # 18 items / 10

    def down(messages: list[Message]) -> str:
        raise AimriError("endpoint http://127.0.0.1:8080/v1 is down")

    # A judge that fails every call is an error (a non-zero exit), not a column of NaN.
    with pytest.raises(AimriError, match="calls to scripted failed"):
        FuzzingScorer(ScriptedClient(respond=down)).score(LABELS, [dog_feature(), code_feature()])


# --- fuzzing ----------------------------------------------------------------------------------


def test_fuzzing_marks_activating_tokens_or_as_many_silent_ones():
    f = dog_feature()
    items = FuzzingScorer(ScriptedClient(respond=right_detector)).items(f, random.Random(0))
    held = {show(e.tokens) for e in score_split(f).positives}
    assert len(items) == 2 * len(held)
    assert sum(i.truth for i in items) == len(held)
    for item in items:
        marked = re.findall(r"<<(.*?)>>", item.text)
        assert re.sub(r"<<|>>", "", item.text) in held
        assert marked and all(has_word(m, DOG_WORDS) == item.truth for m in marked)


def test_fuzzing_with_a_right_judge_is_perfect_and_beats_its_baseline():
    client = ScriptedClient(respond=right_fuzz_judge)
    dog, code = FuzzingScorer(client).score(LABELS, [dog_feature(), code_feature()])
    for s in (dog, code):
        assert s.value == 1.0 and s.scorer == "fuzzing"
        assert s.baseline == 0.5  # the wrong label fits no marking: all 0s


# --- factory ----------------------------------------------------------------------------------


def test_make_scorer_builds_by_name_and_explains_what_is_missing():
    assert isinstance(make_scorer("embedding"), EmbeddingScorer)
    assert isinstance(make_scorer("fuzzing", ScriptedClient(respond=right_detector)), FuzzingScorer)
    with pytest.raises(AimriError, match=r"--llm\.base-url"):
        make_scorer("detection")
    with pytest.raises(AimriError, match="unknown scorer 'telepathy'.*embedding"):
        make_scorer("telepathy")


# --- summary ----------------------------------------------------------------------------------


def scores(values: list[float], baselines: list[float], scorer: str = "embedding") -> list[Score]:
    return [
        Score(i, "x", scorer, v, b) for i, (v, b) in enumerate(zip(values, baselines, strict=True))
    ]


def test_summary_fraction_equals_a_hand_count():
    nan = math.nan
    sae = scores([0.9, 0.8, 0.75, 0.6, nan, 0.95], [0.5, 0.8, 0.4, 0.3, nan, 0.1])
    neurons = scores([0.7, 0.76, 0.5, 0.2], [0.6, 0.5, 0.5, 0.5])
    judged = scores([0.71, 0.69, 0.9], [0.5, 0.5, 0.7], scorer="detection")
    rows = interpretability_summary({"sae": sae + judged, "neurons": neurons}, threshold=None)
    assert [(r.scorer, r.basis) for r in rows] == [
        ("detection", "sae"),
        ("embedding", "sae"),
        ("embedding", "neurons"),
    ]
    det, emb_sae, emb_neu = rows
    assert (emb_sae.n, emb_sae.n_nan, emb_sae.threshold) == (6, 1, 0.75)
    assert emb_sae.frac_above == 4 / 6  # 0.9, 0.8, 0.75, 0.95; nan does not count
    assert emb_sae.frac_above_baseline == 1 / 6
    assert emb_sae.mean == pytest.approx((0.9 + 0.8 + 0.75 + 0.6 + 0.95) / 5)
    assert emb_neu.frac_above == 1 / 4 and emb_neu.mean_baseline == pytest.approx(0.525)
    assert (det.threshold, det.frac_above, det.frac_above_baseline) == (0.7, 2 / 3, 1 / 3)
    for r in rows:
        assert r.ci_low <= r.frac_above <= r.ci_high
    table = format_summary(rows).splitlines()
    assert len(table) == 1 + len(rows) and "neurons" in table[3] and "25.0%" in table[3]
    fixed = interpretability_summary({"sae": sae}, threshold=0.85)[0]
    assert fixed.frac_above == 2 / 6 and fixed.threshold == 0.85
    with pytest.raises(AimriError, match="no default threshold"):
        interpretability_summary({"sae": scores([0.5], [0.5], scorer="telepathy")})


def test_wilson_interval_matches_its_formula_and_narrows_with_n():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20).low == 0.0 and wilson_interval(20, 20).high == 1.0
    assert wilson_interval(80, 100).high - wilson_interval(80, 100).low < high - low


def test_token_rule_scorer_checks_the_named_tokens_on_held_out_windows():
    from aimri.features.records import Example, FeatureStats, Label
    from aimri.features.scorers import make_scorer

    def ex(words: list[str], kind: str, bucket: int = 0, fire: bool = False) -> Example:
        acts = [1.0 if fire and w == " import" else 0.0 for w in words]
        return Example(words, acts, 0, 1, kind, bucket)  # type: ignore[arg-type]

    pos = [ex(["x", " import", " os"], "quantile", b, fire=True) for b in (1, 1, 2, 2, 3, 3)]
    neg = [ex(["def", " f", "()"], "random_negative") for _ in range(6)]
    f = FeatureStats(0, 0.1, 1.0, 1.0, {}, [], [], pos + neg)
    g = FeatureStats(1, 0.1, 1.0, 1.0, {}, [], [], [*pos[:2], *neg])
    labels = [Label(0, 'the token " import"', "tokens"), Label(1, 'tokens " def"', "tokens")]
    scores = make_scorer("rule").score(labels, [f, g])
    assert scores[0].value == 1.0  # " import" is in every held-out positive, no negative
    assert scores[0].baseline == 0.0  # " def" is in every negative and no positive
    none = make_scorer("rule").score([Label(0, "import statements", "llm:x")], [f])[0]
    assert math.isnan(none.value) and none.metrics == {"no_token_claim": 1.0}
