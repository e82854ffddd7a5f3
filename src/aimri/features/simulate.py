"""Scoring by simulation: a label is as good as the activations it lets you predict.

OpenAI's method (Bills et al. 2023, "Language models can explain neurons in language models"):
a simulator reads only the label and predicts the feature's activation on every token of
held-out text; the score is the Pearson correlation of predicted with true activations, pooled
over all tokens of all held-out windows. The windows are the feature's top windows the explainer
did not see, activation-quantile windows (the held-out half) and random windows (the quietest
ones for dense units, see `records.Split`), so a label that says "fires on X" is also scored
where X is absent, where the feature fires on something else, and where it is weak. A
constant prediction scores 0; so does a label that names tokens that never occur.

Simulators, chosen per label:
- offline, for labels in the notation of `words.py`: `fires on "codecs", "⏎" after ":"`
  predicts 1 on every token of each named word in context (with the unit before it, where one
  is given) and 0 elsewhere, whitespace and special tokens included; `promotes "Paris"` (an
  output label) predicts 1 on a token *before* one of them; case is ignored, as in `rule`;
- an LLM, for free-text labels: per window, the model sees the label and the numbered tokens
  and answers one digit 0-9 per token ("all at once"); with logprobs each prediction is the
  expected digit under the model's distribution at that answer, else the digit it wrote. With no
  LLM given, a free-text label gets nan (`needs_llm`).
`SimulationScorer` (registered as `simulation` in `scorers.SCORERS`) puts them together; its
headline is the pooled r, with r on the top windows alone and the windows' counts in metrics.
Not here: the `Scorer` base and the shuffled-label baseline (`score.py`), summaries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import NamedTuple, final

from aimri.features.chat import ChatClient, ChatReply, Message
from aimri.features.llm import ChatRequest, complete_many
from aimri.features.records import Example, FeatureStats, score_split
from aimri.features.score import Measure, Scorer, Task
from aimri.features.words import is_token_label, pooled_pearson, simulate_tokens

N_EXPLAIN_TOP = 10
"""Top examples the explainers see (`records.explain_split`'s default); the rest are held out."""


class Simulation(NamedTuple):
    predicted: list[list[float]]
    """Per window, per token: the simulated activation."""
    failed: bool = False
    """The simulator could not answer (LLM errors or unparsable replies)."""


def simulation_windows(f: FeatureStats, seed: int = 0) -> list[Example]:
    """The held-out windows a label is simulated on: top windows past the explainer's first
    `N_EXPLAIN_TOP`, the held-out half of the quantile windows, and the random windows."""
    split = score_split(f, seed)
    return f.of_kind("top")[N_EXPLAIN_TOP:] + split.positives + split.negatives


@final
class SimulationScorer(Scorer):
    """Pooled Pearson r of simulated against true activations on held-out windows."""

    name = "simulation"

    def __init__(
        self, client: ChatClient | None = None, *, concurrency: int = 8, seed: int = 0
    ) -> None:
        super().__init__(seed=seed)
        self.llm = LLMSimulator(client, concurrency=concurrency) if client is not None else None

    def measure(self, tasks: Sequence[Task]) -> list[Measure]:
        windows = [simulation_windows(t.feature) for t in tasks]
        sims: list[Simulation | None] = [
            Simulation(simulate_tokens(t.label, w)) if is_token_label(t.label) else None
            for t, w in zip(tasks, windows, strict=True)
        ]
        free = [k for k, s in enumerate(sims) if s is None]
        if free and self.llm is not None:
            done = self.llm.simulate_many([(tasks[k].label, windows[k]) for k in free])
            for k, s in zip(free, done, strict=True):
                sims[k] = s
        return [_measure(s, w) for s, w in zip(sims, windows, strict=True)]


def _measure(sim: Simulation | None, windows: list[Example]) -> Measure:
    if sim is None:
        return Measure(math.nan, {"needs_llm": 1.0})
    if sim.failed:
        return Measure(math.nan, {"failed_calls": 1.0})
    n_top = sum(e.kind == "top" for e in windows)
    r = pooled_pearson(sim.predicted, windows)
    metrics = {
        "pearson_r": r,
        "pearson_r_top": pooled_pearson(sim.predicted[:n_top], windows[:n_top]),
        "n_windows": float(len(windows)),
        "n_tokens": float(sum(len(e.acts) for e in windows)),
    }
    return Measure(r, metrics)


# --- the LLM simulator ----------------------------------------------------------------------

SIMULATOR_PROMPT = """\
You predict how strongly one feature of a language model activates on each token of a text, \
from a description of the feature. Activations are on a 0-9 scale: 0 means the feature is \
silent, 9 is its strongest. Most tokens are 0. Reply with one line per token, in order, each \
line the token's number, a tab, and one digit. No other text."""


@final
class LLMSimulator:
    """Free-text labels: an LLM predicts a digit 0-9 per token, one window per request."""

    def __init__(self, client: ChatClient, *, concurrency: int = 8, logprobs: int = 10) -> None:
        self.client = client
        self.concurrency = concurrency
        self.logprobs = logprobs

    def simulate_many(self, jobs: Sequence[tuple[str, Sequence[Example]]]) -> list[Simulation]:
        """One Simulation per (label, windows) job; all requests go out together."""
        flat = [(k, e) for k, (_, windows) in enumerate(jobs) for e in windows]
        requests = [self._request(jobs[k][0], e) for k, e in flat]
        replies = complete_many(self.client, requests, self.concurrency, desc="simulation")
        rows: list[list[list[float]]] = [[] for _ in jobs]
        failed = [False] * len(jobs)
        for (k, e), reply in zip(flat, replies, strict=True):
            got = None if isinstance(reply, Exception) else parse_digits(reply, len(e.tokens))
            failed[k] |= got is None
            rows[k].append(got if got is not None else [0.0] * len(e.tokens))
        return [Simulation(r, f) for r, f in zip(rows, failed, strict=True)]

    def _request(self, label: str, e: Example) -> ChatRequest:
        listing = "\n".join(
            f"{i}\t{json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(e.tokens)
        )
        messages: list[Message] = [
            {"role": "system", "content": SIMULATOR_PROMPT},
            {"role": "user", "content": f"Feature: {label}\n\nTokens:\n{listing}"},
        ]
        return ChatRequest(messages, 8 * len(e.tokens) + 16, 0.0, self.logprobs)


_LINE = re.compile(r"^\s*(\d+)\s*[\t:,.)-]?\s*(\d)\s*$", re.MULTILINE)


def parse_digits(reply: ChatReply, n: int) -> list[float] | None:
    """n predictions from `index<TAB>digit` lines; each is the expected digit under the reply's
    logprobs where they line up with the answers, else the digit written. None unless every
    index 0..n-1 is answered."""
    said: dict[int, int] = {}
    for idx, digit in _LINE.findall(reply.text):
        said.setdefault(int(idx), int(digit))
    if sorted(said) != list(range(n)):
        return None
    expected = _expected_digits(reply, n)
    return expected if expected is not None else [float(said[i]) for i in range(n)]


def _expected_digits(reply: ChatReply, n: int) -> list[float] | None:
    """E[digit] at each answer: the answers are the last token of each line, i.e. the digit
    tokens that come right before a newline or the end; None when they do not line up."""
    toks = reply.logprobs or []
    slots = [
        t
        for i, t in enumerate(toks)
        if t.token.strip().isdigit()
        and len(t.token.strip()) == 1
        and (i + 1 == len(toks) or "\n" in toks[i + 1].token)
    ]
    if len(slots) != n:
        return None
    out = []
    for t in slots:
        alts = {**t.top, t.token: t.logprob}
        p = [0.0] * 10
        for tok, lp in alts.items():
            s = tok.strip()
            if len(s) == 1 and s.isdigit():
                p[int(s)] += math.exp(lp)
        z = sum(p)
        out.append(sum(d * q for d, q in enumerate(p)) / z if z > 0 else float(t.token.strip()))
    return out
