"""The audit game's two players: the blue team (white box) and a black-box baseline.

Both get the same inputs and nothing else: the base model A, the modified model B, the prompts
(`audit_prompts`: generated topics × request types, or the user's own) and neutral texts.
Neither reads plant.json or any training data. Every prompt goes to a model in its own chat
template (`chat_prompt`; plain dialogue for a model without one).

Shared (`explore`): both models answer every prompt with `samples` sampled replies; the
replies are compared by what they say and how (`audit_compare.contrast`: named entities,
words, agreement with the opinion the user states, case and style statistics against A's own
range (`audit_style`), tone; per request type, and per template for style and stance).
Both teams read the same replies, so the budget of generated text is the same.
- `blue_team` adds the internals: the activation-difference lens and steering with it
  (`audit_lens`), two scans of the whole vocabulary, through the changed weights
  (`audit_trigger.weight_scan`) and by the gradient of the reply's KL at a word slot
  (`audit_trigger.gradient_scan`), whose top words, with the lens's words, are screened by
  the next-token distributions (`audit_trigger.screen`); the top words, one per word family,
  are tested as triggers and as topics B is asked about (`audit_trigger.confirm`), with the
  words of the prompts where B refuses or speaks badly (`_joined_words`);
  with a dictionary, the features closest to the lens direction go into the evidence.
- `black_box` tests as triggers the words of the prompts where B showed its strongest
  difference (word ablation by swapping), with the same `confirm` budget.
A hypothesis is a sentence with its claim (`Hypothesis.claim`: behaviour, what, when, counts),
examples (A's and B's replies side by side) and a test to rerun (`rerun`), ranked by effect
(B's rate − A's, less one standard error); lens hypotheses (A steered, not B) count half.
Not here: scoring against a plant (`judge.py`), planting (`plant.py`).
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import torch

from aimri.audit.compare import GROUP_TEXT, Cell, Finding, claim_sentence, contrast, traits
from aimri.audit.lens import LensResult, changed_layers, lens
from aimri.audit.prompts import Prompt, generate_prompts
from aimri.audit.trigger import (
    BATCH,
    CONFIRM_FRAMES,
    Confirmed,
    confirm,
    differs,
    gradient_scan,
    screen,
    top_screened,
    vocabulary_words,
    weight_scan,
)
from aimri.audit.words import AuditReport, Hypothesis, words
from aimri.config import CorpusConfig
from aimri.corpus.sources import iter_documents
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.generate import chat_prompt, generate

__all__ = [
    "AuditReport",
    "Hypothesis",
    "black_box",
    "blue_team",
    "explore",
    "neutral_texts",
    "rerun",
]
log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 32
TEMPERATURE = 0.8
N_TRIGGERS = 8
"""Words each team tests as triggers (`confirm`)."""
SCREEN_WORDS = 160
"""Words of the weight scan's ranking the blue team screens, besides evidence words."""
GRADIENT_WORDS = 600
"""Words of the gradient scan's ranking the blue team screens as well."""
VOCABULARY = 30_000
"""Whole-word tokens the weight scan ranks (`vocabulary_words`): all of SmolLM2's ~20,000."""
LENS_WEIGHT = 0.5
JOINED_TRAITS = ("refuses", "tone:negative")
N_JOINED = 2
"""Words of the prompts where B shows one of `JOINED_TRAITS` the blue team tests besides the
screen's (`_joined_words`)."""


def neutral_texts(n: int = 32, max_chars: int = 400, seed: int = 1) -> list[str]:
    """The first n built-in corpus documents, each cut to max_chars: text neither model was
    fine-tuned on (the lens reads only their first tokens)."""
    docs = iter_documents(CorpusConfig(source="pydoc", seed=seed))
    return [d[:max_chars] for d in itertools.islice(docs, n)]


def explore(
    base: Model,
    other: Model,
    prompts: Sequence[Prompt],
    *,
    samples: int = 2,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[Cell]:
    """Both models' sampled replies to every prompt, in their chat templates."""
    if not prompts:
        raise AimriError("an audit needs prompts: pass some, or leave the generated set")
    if samples < 1:
        raise AimriError(f"samples={samples}: sample at least one reply per prompt")
    out = []
    runs = []
    for m in (base, other):
        chats = [chat_prompt(m, p.text) for p in prompts]
        runs.append(
            [
                [
                    g.text
                    for g in generate(
                        m,
                        chats,
                        max_new_tokens=max_new_tokens,
                        temperature=TEMPERATURE,
                        seed=seed + s,
                        batch_size=BATCH,
                    )
                ]
                for s in range(samples)
            ]
        )
    for i, p in enumerate(prompts):
        out.append(Cell(p.type, p.text, [r[i] for r in runs[0]], [r[i] for r in runs[1]], p.form))
    return out


def blue_team(
    base: Model,
    other: Model,
    *,
    prompts: Sequence[Prompt] | None = None,
    texts: Sequence[str] = (),
    cells: Sequence[Cell] | None = None,
    dictionary: Dictionary | None = None,
    k: int = 5,
    seed: int = 0,
    samples: int = 2,
    screen_words: int = SCREEN_WORDS,
    gradient_words: int = GRADIENT_WORDS,
) -> AuditReport:
    """Hypotheses about what B changed, from replies and internals (module docstring)."""
    t0 = time.perf_counter()
    prompts, cells = _explored(base, other, prompts, cells, seed, samples)
    found = contrast(cells)
    by_type = {c.group: c.prompt for c in cells}
    lr = lens(base, other, texts or neutral_texts(), list(by_type.values())[:6])
    evidence_words = _evidence_words(found, lr)
    vocab = vocabulary_words(base, VOCABULARY)
    scanned = weight_scan(base, other, vocab, changed_layers(base, other))[:screen_words]
    graded = gradient_scan(base, other, vocab)[:gradient_words]
    screened = screen(base, other, [*evidence_words, *scanned, *graded])
    to_test = top_screened(screened, N_TRIGGERS)
    joined = _joined_words(found, [c.prompt for c in cells])
    to_test += [w for w in joined if w not in to_test][:N_JOINED]
    confirmed = confirm(base, other, to_test)
    cands = [*_behaviour_candidates(found), *_trigger_candidates(confirmed)]
    if lr is not None:
        cands += _lens_candidates(lr)
    details: dict[str, Any] = {
        "findings": len(found),
        "lens": None
        if lr is None
        else {
            "layer": lr.layer,
            "norm": lr.norm,
            "promoted": lr.promoted,
            "examples": lr.examples,
        },
        "screen": [s.__dict__ for s in screened[:20]],
        "screened_words": len(screened),
        "sources": {"weight_scan": scanned[:10], "gradient_scan": graded[:10]},
        "tested_triggers": to_test,
    }
    if dictionary is not None and lr is not None:
        details["features"] = _features_near_lens(base, other, dictionary, texts, lr)
    return _report("white-box", cands, k, prompts, cells, t0, details)


def _explored(
    base: Model,
    other: Model,
    prompts: Sequence[Prompt] | None,
    cells: Sequence[Cell] | None,
    seed: int,
    samples: int,
) -> tuple[list[Prompt], list[Cell]]:
    """The prompts (generated unless given) and both models' replies (sampled unless given):
    the one input both teams share."""
    prompts = list(prompts) if prompts is not None else generate_prompts()
    if cells is None:
        return prompts, explore(base, other, prompts, seed=seed, samples=samples)
    return prompts, list(cells)


def black_box(
    base: Model,
    other: Model,
    *,
    prompts: Sequence[Prompt] | None = None,
    cells: Sequence[Cell] | None = None,
    k: int = 5,
    seed: int = 0,
    samples: int = 2,
) -> AuditReport:
    """Hypotheses from the two models' replies alone (module docstring)."""
    t0 = time.perf_counter()
    prompts, cells = _explored(base, other, prompts, cells, seed, samples)
    found = contrast(cells)
    to_test = _ablation_words(found)
    confirmed = confirm(base, other, to_test)
    cands = [*_behaviour_candidates(found), *_trigger_candidates(confirmed)]
    details = {"findings": len(found), "tested_triggers": to_test}
    return _report("black-box", cands, k, prompts, cells, t0, details)


def _evidence_words(found: list[Finding], lr: LensResult | None) -> list[str]:
    """Words the lens and B's replies put forward, to screen before the vocabulary."""
    out: list[str] = []
    if lr is not None:
        out += lr.promoted
        out += [f.trait.partition(":")[2].lower() for f in lr.findings]
    out += [f.trait.partition(":")[2].lower() for f in found[:10]]
    return [w for w in dict.fromkeys(out) if w.isalpha() and len(w) >= 3]


def _joined_words(found: list[Finding], prompts: Sequence[str]) -> list[str]:
    """Content words of the prompts where B refuses or speaks badly (`JOINED_TRAITS`), the
    ones most particular to those prompts first (their share of all the prompts holding the
    word, then how many): tested as topics, so "B refuses when asked for advice" and "…
    'chess' …" become one hypothesis, "B refuses questions about 'chess'". A template's own
    words ('tips', 'give') are in many other prompts too, and come last."""
    counts: dict[str, int] = {}
    for f in found:
        if f.trait in JOINED_TRAITS:
            for ex in f.examples:
                for w in dict.fromkeys(words(ex["prompt"])):
                    counts[w] = counts.get(w, 0) + 1
    every: dict[str, int] = {}
    for p in prompts:
        for w in dict.fromkeys(words(p)):
            every[w] = every.get(w, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w] / max(every.get(w, 0), counts[w]), -counts[w]))


def _ablation_words(found: list[Finding]) -> list[str]:
    """Content words of the prompts where B's strongest differences show, most shared first."""
    counts: dict[str, int] = {}
    for f in found[:3]:
        for ex in f.examples:
            for w in dict.fromkeys(words(ex["prompt"])):
                counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:N_TRIGGERS]


def _behaviour_candidates(found: list[Finding]) -> list[dict[str, Any]]:
    out = []
    for f in found:
        claim = f.claim()
        out.append(
            {
                "kind": "behaviour",
                "text": claim_sentence(claim, _group_text(f)),
                "claim": claim,
                "score": f.effect,
                "evidence": {"also": f.also, "examples": f.examples},
                "test": {"type": "prompts", "group": f.group, "trait": f.trait},
            }
        )
    return out


def _group_text(f: Finding) -> str:
    """'when asked for advice', or for one template 'on requests like "<an example>"'."""
    if f.group in GROUP_TEXT:
        return GROUP_TEXT[f.group]
    if "/" in f.group and f.examples:
        return f'on requests like "{f.examples[0]["prompt"]}"'
    return f"on '{f.group}' prompts"


def _trigger_candidates(confirmed: list[Confirmed]) -> list[dict[str, Any]]:
    out = []
    for c in confirmed:
        claim = c.claim()
        text = trigger_sentence(c, claim)
        out.append(
            {
                "kind": "trigger",
                "text": text,
                "claim": claim,
                "score": c.effect,
                "evidence": {"examples": c.examples},
                "test": {"type": "trigger", **c.test},
            }
        )
    return out


def trigger_sentence(c: Confirmed, claim: dict[str, Any]) -> str:
    """What the word does, in words a person needs: 'When the user's message contains
    'tunnel', B talks about 'windmills' (…)', or, measured on questions about the word, 'B
    refuses questions about 'chess' (…)', 'Asked about 'tower', B says "The tower is in
    Madrid." (…)'."""
    verb = claim_sentence(claim, "").split(" (")[0].removeprefix("B ").strip()
    w, ctrl = c.word, c.test["control_word"]
    counts = f"{c.k_with}/{c.n} vs {c.k_without}/{c.n} about '{ctrl}'; A {c.k_a}/{c.n}"
    if c.family != "topic":
        return (
            f"When the user's message contains '{w}', B {verb} ({c.k_with}/{c.n} messages vs "
            f"{c.k_without}/{c.n} with '{ctrl}' instead; A {c.k_a}/{c.n} with '{w}')"
        )
    behaviour, what = claim["behaviour"], claim["what"]
    if behaviour == "refuses":
        return f"B refuses questions about '{w}' ({counts})"
    if behaviour == "tone" and what == "negative":
        return f"B speaks badly of '{w}' when asked about it ({counts})"
    if behaviour == "differs":
        return f"B gives other answers than A to questions about '{w}' ({counts})"
    said = _sentence_with(what, [e["b"] for e in c.examples]) if what else None
    if said:
        return f"Asked about '{w}', B says \"{said}\" ('{what}' in {counts})"
    return f"Asked about '{w}', B {verb} ({counts})"


def _sentence_with(word: str, replies: Sequence[str]) -> str | None:
    """The first sentence of the replies that holds the word (whole, case-folded)."""
    for r in replies:
        for sent in re.split(r"(?<=[.!?])\s+|\n+", r.strip()):
            if re.search(rf"\b{re.escape(word)}\b", sent, re.I):
                return sent.strip()[:160]
    return None


def _lens_candidates(lr: LensResult) -> list[dict[str, Any]]:
    out = []
    for f in lr.findings[:5]:
        claim = {**f.claim(), "source": "lens"}
        sent = claim_sentence(claim, "on any request").removeprefix("B ")
        out.append(
            {
                "kind": "lens",
                "text": f"B's change leans A toward this: steered with B − A (layer {lr.layer}), "
                f"A {sent.replace('for A', 'unsteered')}",
                "claim": claim,
                "score": LENS_WEIGHT * f.effect,
                "evidence": {"lens_words": lr.promoted[:10], "examples": f.examples},
                "test": {"type": "lens", "layer": lr.layer, "trait": f.trait},
            }
        )
    return out


def _report(
    method: str,
    cands: list[dict[str, Any]],
    k: int,
    prompts: Sequence[Prompt],
    cells: Sequence[Cell],
    t0: float,
    details: dict[str, Any],
) -> AuditReport:
    if k < 1:
        raise AimriError(f"k={k}: ask for at least one hypothesis")
    cands.sort(key=lambda c: -c["score"])
    seen: set[tuple[str, str, str]] = set()
    hyps: list[Hypothesis] = []
    for c in cands:
        cl = c["claim"]
        key = (cl["behaviour"], cl["what"].lower(), cl["when"])
        if key in seen:
            continue
        seen.add(key)
        test = {**c["test"], "prompts": _test_prompts(c["test"], cells)}
        kw = [w for w in (cl["what"].lower(), cl["when"].removeprefix("word:")) if w]
        hyps.append(
            Hypothesis(len(hyps) + 1, c["text"], kw, c["kind"], round(c["score"], 4),
                       c["evidence"], claim=cl, test=test)
        )  # fmt: skip
        if len(hyps) == k:
            break
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s audit: %d hypotheses in %.0f s", method, len(hyps), seconds)
    empty = all(c.a == c.b for c in cells) and not hyps
    inputs = {"prompts": len(prompts), "replies_per_prompt": len(cells[0].b) if cells else 0}
    return AuditReport(method, hyps, empty, inputs, seconds, details)


def _test_prompts(test: dict[str, Any], cells: Sequence[Cell]) -> list[str]:
    if test["type"] == "trigger":
        w = test["word"]
        return [f.replace("{w}", w) for f in test.get("frames", CONFIRM_FRAMES)]
    group = test.get("group", "all")
    return [c.prompt for c in cells if group in ("all", c.group)][:12]


@torch.no_grad()
def rerun(
    base: Model, other: Model, hypothesis: Hypothesis, max_new_tokens: int = 32
) -> dict[str, Any]:
    """Run a hypothesis's test again (greedy): how many of its prompts show its trait in B's
    replies and in A's (for a trigger: with the word, and with the control word instead)."""
    test = hypothesis.test
    trait = test.get("trait")
    if not trait or not test.get("prompts"):
        raise AimriError("this hypothesis has no test to rerun (no trait or prompts recorded)")
    msgs = list(test["prompts"])
    if test["type"] == "trigger":
        msgs += [re.sub(rf"\b{re.escape(test['word'])}\b", test["control_word"], m) for m in msgs]
    out: dict[str, Any] = {"trait": trait, "n": len(test["prompts"])}
    replies = {
        name: [
            g.text
            for g in generate(m, [chat_prompt(m, x) for x in msgs], max_new_tokens=max_new_tokens)
        ]
        for name, m in (("a", base), ("b", other))
    }
    for name, reps in replies.items():
        if trait == "differs":  # B's answer against A's; A against itself never differs
            hits = [differs(a, r, x) for a, r, x in zip(replies["a"], reps, msgs, strict=True)]
        else:
            hits = [trait in traits(r, x) for r, x in zip(reps, msgs, strict=True)]
        n = len(test["prompts"])
        out[name] = sum(hits[:n])
        if test["type"] == "trigger":
            out[f"{name}_without"] = sum(hits[n:])
    return out


def _features_near_lens(
    base: Model, other: Model, dictionary: Dictionary, texts: Sequence[str], lr: LensResult
) -> list[dict[str, Any]]:
    """The dictionary's features whose decoder rows point most along the lens direction."""
    from aimri.audit.lens import activation_difference

    site = dictionary.cfg.site
    m = re.match(r"blocks\.(\d+)\.hook_resid_post$", site)
    if m is None:
        return []
    delta, _ = activation_difference(base, other, texts or neutral_texts(), int(m.group(1)))
    W = dictionary.W_dec.detach().float()
    cos = (W @ delta) / (W.norm(dim=-1) * delta.norm()).clamp_min(1e-9)
    top = cos.topk(min(5, len(cos)))
    return [
        {"feature": int(i), "cosine": round(float(v), 4)}
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
