"""Scoring labels on held-out text: how well a label predicts where its feature fires.

Scorers, registered by name in `SCORERS` and built with `make_scorer`:
- `simulation` (offline for token labels, an LLM for free text): the label predicts the
  activation of every held-out token; pooled Pearson r (OpenAI's method; see `simulate.py`).
- `rule` (offline): a label that names tokens predicts firing where they occur; balanced
  accuracy (see `TokenRuleScorer`).
- `embedding` (offline): cosine similarity of the label's sentence embedding with each held-out
  example's; the AUROC of that similarity separating positives from negatives (delphi's idea).
- `detection` (LLM judge): the judge sees the label and a numbered, shuffled batch of held-out
  examples and answers 0/1 for each; balanced accuracy (headline), F1, precision, recall, and
  an AUROC from P("1") when the client returns logprobs.
- `fuzzing` (LLM judge): held-out positive windows, each shown twice, with `<<marks>>` on its
  activating tokens and on as many random silent tokens; the judge answers whether the marks
  fit the label; balanced accuracy (and AUROC from P("1") when there are logprobs).

Every scorer reads only `records.score_split(f)` (with its default seed, the one `explain_split`
uses), never an example an explainer saw; the headline sets positives against random negatives
(the same task for every basis) and hard negatives are reported apart in metrics (`auroc_hard`,
`hard_false_positive_rate`; judges skip them). Each label is scored twice on the same examples:
with its own text (`Score.value`) and with the text of another feature's label from the same
explainer, a fixed seeded derangement (`Score.baseline`), so a number can be set beside what a
wrong label gets. Conventions: one Score per label, in order. A label with empty text gets
value and baseline nan, metrics {"empty_label": 1} (and lends no text to baselines). A judge
whose calls all fail or cannot be parsed gives nan with `failed_calls`/`unparsed_calls` counted
in metrics; the messages go to the log, as `Score.metrics` holds numbers only.
Not here: LLM clients (`llm.py`), AUROC and the summary across bases (`summary.py`), storage.
"""

from __future__ import annotations

import logging
import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, final

import torch
from torch import Tensor

from aimri.errors import AimriError
from aimri.features.chat import ChatClient, ChatReply, Message
from aimri.features.embed import Embedder, load_embedder
from aimri.features.llm import ChatRequest, complete_many
from aimri.features.records import Example, FeatureStats, Label, Score, score_split
from aimri.features.summary import auroc, binary_metrics
from aimri.features.words import PROMOTES, claims, parse, predict

log = logging.getLogger(__name__)


class Task(NamedTuple):
    """Score `label` (a text) against the held-out examples of `feature`."""

    feature: FeatureStats
    label: str


class Measure(NamedTuple):
    value: float
    """The headline number (nan when it could not be measured)."""
    metrics: dict[str, float]


class Scorer(ABC):
    """Scores labels on held-out examples; subclasses only say how to `measure` tasks."""

    name: str

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def score(self, labels: Sequence[Label], features: Sequence[FeatureStats]) -> list[Score]:
        """One Score per label, in order: value on its own text, baseline on a shuffled one."""
        by_index = {f.index: f for f in features}
        for lab in labels:
            if lab.feature not in by_index:
                raise AimriError(
                    f"label of feature {lab.feature} (explainer '{lab.explainer}') has no "
                    f"statistics: pass the FeatureStats of every labelled feature to score()"
                )
        others = shuffled_label_texts(labels, self.seed)
        live = [i for i, lab in enumerate(labels) if lab.text.strip()]
        with_base = [i for i in live if others[i] is not None]
        tasks = [Task(by_index[labels[i].feature], labels[i].text) for i in live]
        tasks += [Task(by_index[labels[i].feature], others[i] or "") for i in with_base]
        measured = self.measure(tasks)
        own = dict(zip(live, measured[: len(live)], strict=True))
        base = dict(zip(with_base, measured[len(live) :], strict=True))
        nothing = Measure(math.nan, {"empty_label": 1.0})
        return [
            Score(
                feature=lab.feature,
                explainer=lab.explainer,
                scorer=self.name,
                value=own.get(i, nothing).value,
                baseline=base.get(i, nothing).value,
                metrics=own.get(i, nothing).metrics,
            )
            for i, lab in enumerate(labels)
        ]

    @abstractmethod
    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        """One Measure per task, in order (all at once, so work can be batched)."""


def shuffled_label_texts(labels: Sequence[Label], seed: int = 0) -> list[str | None]:
    """For each label, the text of another feature's label from the same explainer: a fixed
    seeded derangement (Sattolo's algorithm: one random cycle, so no label keeps its own text)
    of each explainer's non-empty labels taken in feature order. None for empty labels and where
    an explainer has a single label. Assumes one label per feature and explainer."""
    out: list[str | None] = [None] * len(labels)
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab.text.strip():
            groups.setdefault(lab.explainer, []).append(i)
    for explainer, idx in groups.items():
        if len(idx) < 2:
            continue
        idx.sort(key=lambda i: labels[i].feature)
        rng = random.Random(f"{seed}:{explainer}")
        perm = list(range(len(idx)))
        for k in range(len(perm) - 1, 0, -1):
            j = rng.randrange(k)
            perm[k], perm[j] = perm[j], perm[k]
        for k, i in enumerate(idx):
            out[i] = labels[idx[perm[k]]].text
    return out


@final
class EmbeddingScorer(Scorer):
    """AUROC of cos(label, example) separating held-out positives from negatives (offline)."""

    name = "embedding"

    def __init__(self, embedder: Embedder | None = None, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._embedder = embedder
        self._cache: dict[str, Tensor] = {}
        """text → embedding, kept across calls: several explainers' labels for the same
        features are scored on the same examples, which are embedded once."""

    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        splits = {t.feature.index: score_split(t.feature) for t in tasks}
        texts = list(
            dict.fromkeys(
                [t.label for t in tasks]
                + [e.text for s in splits.values() for e in s.positives + s.negatives + s.hard]
            )
        )
        embedder = self._embedder or load_embedder()
        fresh = [t for t in texts if t not in self._cache]
        self._cache.update(zip(fresh, embedder.embed(fresh), strict=True))
        emb = torch.stack([self._cache[t] for t in texts])  # [n_texts, 384], unit norm
        row = {text: k for k, text in enumerate(texts)}
        out = []
        for t in tasks:
            s = splits[t.feature.index]
            sims = emb @ emb[row[t.label]]  # [n_texts]
            pos = [float(sims[row[e.text]]) for e in s.positives]
            neg = [float(sims[row[e.text]]) for e in s.negatives]
            value = auroc(pos, neg)
            metrics = {"auroc": value, "n_pos": float(len(pos)), "n_neg": float(len(neg))}
            if s.hard:  # reported apart: not every basis has hard negatives (see Split)
                metrics["auroc_hard"] = auroc(pos, [float(sims[row[e.text]]) for e in s.hard])
                metrics["n_hard"] = float(len(s.hard))
            out.append(Measure(value, metrics))
        return out


class TokenRuleScorer(Scorer):
    """Offline check of a label that names words (the `tokens` explainer's claims, or any label
    with quoted words, see `words.py`): predict "fires in this window" iff a named word occurs
    in it, in its context where the label gives one (case ignored); balanced accuracy on
    held-out windows. A label naming no word gets nan with `no_token_claim`. Cheap, exact, and
    blind to meaning beyond the words."""

    name = "rule"

    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        out = []
        for t in tasks:
            if not claims(t.label):
                out.append(Measure(math.nan, {"no_token_claim": 1.0}))
                continue
            s = score_split(t.feature)
            truth = [True] * len(s.positives) + [False] * len(s.negatives)
            said = [_occurs(t.label, e) for e in s.positives + s.negatives]
            m = binary_metrics(truth, said)
            if s.hard:  # share of hard negatives the rule wrongly says fire (reported apart)
                m["hard_false_positive_rate"] = sum(_occurs(t.label, e) for e in s.hard) / len(
                    s.hard
                )
            out.append(Measure(m["balanced_accuracy"], m))
        return out


def _occurs(label: str, e: Example) -> bool:
    """Does a word the label names occur in the window (in its context, where given)?"""
    return any(predict(label.removeprefix(PROMOTES), parse(e.tokens)))


class Item(NamedTuple):
    """One example as the judge sees it, and the answer a label that fits should get."""

    text: str
    truth: bool


@dataclass
class _Tally:
    truth: list[bool] = field(default_factory=list)
    said: list[bool] = field(default_factory=list)
    p_yes: list[tuple[bool, float]] = field(default_factory=list)
    failed: int = 0
    unparsed: int = 0


class JudgeScorer(Scorer):
    """An LLM judge answers 0/1 for numbered items in batches; balanced accuracy of the answers.

    Items are made once per feature (seeded), so a label and its baseline see the same items in
    the same batches. With `logprobs`, P("1") per item comes from the reply's per-token logprobs
    (the last n tokens reading 0 or 1, renormalised over 0 and 1), in the same call; when they
    do not line up with the parsed answers, that batch gives no probabilities (no AUROC)."""

    system: str

    def __init__(
        self,
        client: ChatClient,
        *,
        batch_size: int = 10,
        concurrency: int = 8,
        logprobs: int | None = 5,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.client = client
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.logprobs = logprobs

    @abstractmethod
    def items(self, f: FeatureStats, rng: random.Random) -> list[Item]:
        """The items of one feature, from `score_split(f)` only, in the order shown."""

    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        items: dict[int, list[Item]] = {}
        for t in tasks:
            if t.feature.index not in items:
                rng = random.Random(f"{self.seed}:{t.feature.index}")
                items[t.feature.index] = self.items(t.feature, rng)
        jobs: list[tuple[int, list[Item]]] = []
        for k, t in enumerate(tasks):
            mine = items[t.feature.index]
            jobs += [
                (k, mine[b : b + self.batch_size]) for b in range(0, len(mine), self.batch_size)
            ]
        requests = [self._request(tasks[k].label, batch) for k, batch in jobs]
        replies = complete_many(self.client, requests, self.concurrency, desc=f"{self.name} judge")
        tallies = [_Tally() for _ in tasks]
        for (k, batch), reply in zip(jobs, replies, strict=True):
            _add_reply(tallies[k], batch, reply)
        return [_measure_tally(t) for t in tallies]

    def _request(self, label: str, batch: list[Item]) -> ChatRequest:
        listing = "\n".join(f"{i}. {item.text}" for i, item in enumerate(batch, start=1))
        user = (
            f"Explanation: {label}\n\nExamples:\n{listing}\n\n"
            f"Reply with a list of {len(batch)} 0s and 1s."
        )
        messages: list[Message] = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": user},
        ]
        return ChatRequest(messages, 16 + 4 * len(batch), 0.0, self.logprobs)


def _add_reply(tally: _Tally, batch: list[Item], reply: ChatReply | AimriError) -> None:
    if isinstance(reply, AimriError):
        tally.failed += 1
        return
    said = parse_verdicts(reply.text, len(batch))
    if said is None:
        tally.unparsed += 1
        log.warning("judge reply is not a list of %d 0s and 1s: %r", len(batch), reply.text[:200])
        return
    tally.truth += [item.truth for item in batch]
    tally.said += said
    probs = _p_yes(reply, said)
    if probs is not None:
        tally.p_yes += [(item.truth, p) for item, p in zip(batch, probs, strict=True)]


def _measure_tally(t: _Tally) -> Measure:
    metrics = binary_metrics(t.truth, t.said)
    metrics |= {"failed_calls": float(t.failed), "unparsed_calls": float(t.unparsed)}
    if t.p_yes:
        pos = [p for truth, p in t.p_yes if truth]
        neg = [p for truth, p in t.p_yes if not truth]
        metrics["auroc"] = auroc(pos, neg)
    return Measure(metrics["balanced_accuracy"], metrics)


_LIST = re.compile(r"\[([^\[\]]*)\]")
_BARE = re.compile(r"^[\s,]*[01](?:[\s,]+[01])*[\s,]*$", re.MULTILINE)
_PUNCT = " \t\n[](),.`'\""


def parse_verdicts(text: str, n: int) -> list[bool] | None:
    """The judge's n answers: the last bracketed list of exactly n 0s and 1s in the reply, else
    the last line made only of n 0s and 1s; None when there is neither."""
    candidates = _LIST.findall(text)[::-1] + _BARE.findall(text)[::-1]
    for body in candidates:
        parts = [p.strip(_PUNCT) for p in re.split(r"[,\s]+", body.strip(_PUNCT))]
        if len(parts) == n and all(p in ("0", "1") for p in parts):
            return [p == "1" for p in parts]
    return None


def _p_yes(reply: ChatReply, said: list[bool]) -> list[float] | None:
    """P("1") per answer from the reply's logprobs; None unless they line up with `said`."""
    slots = [t for t in reply.logprobs or [] if t.token.strip(_PUNCT) in ("0", "1")]
    if len(slots) < len(said):
        return None
    out = []
    for t, s in zip(slots[len(slots) - len(said) :], said, strict=True):
        if (t.token.strip(_PUNCT) == "1") != s:
            return None
        alts = {**t.top, t.token: t.logprob}
        p = {
            b: sum(math.exp(lp) for tok, lp in alts.items() if tok.strip(_PUNCT) == b) for b in "01"
        }
        out.append(p["1"] / (p["0"] + p["1"]) if p["0"] + p["1"] > 0 else float(s))
    return out


def show(tokens: Sequence[str], marked: set[int] | frozenset[int] = frozenset()) -> str:
    """Tokens joined into one line (newlines as `\\n`), each run of marked tokens in `<<…>>`
    with its leading whitespace kept outside the marks."""
    out, i = [], 0
    while i < len(tokens):
        j = i + 1
        while i in marked and j < len(tokens) and j in marked:
            j += 1
        run = "".join(tokens[i:j])
        if i in marked:
            lead = len(run) - len(run.lstrip())
            run = f"{run[:lead]}<<{run[lead:]}>>"
        out.append(run)
        i = j
    return "".join(out).replace("\n", "\\n")


@final
class DetectionScorer(JudgeScorer):
    """Which held-out examples (positives and negatives, shuffled) does the label describe?"""

    name = "detection"
    system = (
        "You check explanations of a feature of a language model. You get an explanation and "
        "numbered text examples. For each example answer 1 if the explanation describes it (the "
        "feature would fire on it) and 0 if not. Reply with only a list of 0s and 1s, one per "
        "example, in order, like [1, 0, 0]."
    )

    def items(self, f: FeatureStats, rng: random.Random) -> list[Item]:
        s = score_split(f)
        out = [Item(show(e.tokens), True) for e in s.positives]
        out += [Item(show(e.tokens), False) for e in s.negatives]
        rng.shuffle(out)
        return out


@final
class FuzzingScorer(JudgeScorer):
    """Are the marked tokens of a held-out positive window the ones the label is about?

    Correct marks: the window's tokens with activation at least `mark_fraction` of its maximum
    (the `max_marks` highest). Wrong marks: as many random tokens among the others (windows with
    too few others are skipped). Both versions of each window are shown, shuffled."""

    name = "fuzzing"
    system = (
        "You check explanations of a feature of a language model. You get an explanation and "
        "numbered text examples in which some tokens are marked <<like this>>. For each example "
        "answer 1 if the marked tokens are what the explanation describes and 0 if the marks "
        "look misplaced. Reply with only a list of 0s and 1s, one per example, in order, like "
        "[1, 0, 0]."
    )
    mark_fraction = 0.25
    max_marks = 5

    def items(self, f: FeatureStats, rng: random.Random) -> list[Item]:
        out = []
        for e in score_split(f).positives:
            right = self.marks(e)
            others = [i for i in range(len(e.tokens)) if i not in right and e.tokens[i].strip()]
            if not right or len(others) < len(right):
                continue
            wrong = set(rng.sample(others, len(right)))
            out += [Item(show(e.tokens, right), True), Item(show(e.tokens, wrong), False)]
        rng.shuffle(out)
        return out

    def marks(self, e: Example) -> set[int]:
        """Indices of the activating tokens a correct marking highlights."""
        floor = self.mark_fraction * e.max_act
        active = [i for i, a in enumerate(e.acts) if a > 0 and a >= floor]
        return set(sorted(active, key=lambda i: -e.acts[i])[: self.max_marks])
