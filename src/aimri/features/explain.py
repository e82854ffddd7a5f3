"""Explainers: turn what a feature does into a short natural-language `Label`.

Each explainer is registered by name in `EXPLAINERS` and labels a batch of features at once:
`tokens` (offline: the tokens over-represented at the activation peaks), `logits` (offline: the
tokens the feature's output direction promotes) and `llm` (asks a `ChatClient` for one phrase
from marked examples). Held-out discipline: explainers read only `records.explain_split(f)`,
never `score_split`, so the examples that score a label were not seen when making it. A reply
that cannot be used (empty, truncated, refused, junk) or an endpoint that keeps failing gives
a Label with text "" and the reason in `meta["error"]`; other features keep their labels.
Not here: scoring labels (`score.py`), HTTP and caching (`llm.py`), storage (`catalog.py`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, final

from aimri.config import LLMConfig
from aimri.errors import AimriError
from aimri.features.chat import ChatClient, ChatReply, Message
from aimri.features.llm import ChatRequest, complete_many, make_client
from aimri.features.records import Example, FeatureStats, Label, explain_split


class Explainer(Protocol):
    """Labels features from their statistics; `name` is the provenance stored with each label."""

    @property
    def name(self) -> str: ...

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        """One Label per feature, in order."""
        ...


def show(token: str) -> str:
    """A token as a quoted, escaped literal: `" import"`, `"\\n"`."""
    return json.dumps(token, ensure_ascii=False)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def named_tokens(label: str) -> list[str]:
    """The tokens a label names, read back from `show`'s notation (JSON escapes undone):
    `tokens " import", "\\n"` → [" import", "\n"]."""
    out = []
    for q in _QUOTED.findall(label):
        try:
            out.append(json.loads(f'"{q}"'))
        except json.JSONDecodeError:
            out.append(q)
    return out


# --- tokens ---------------------------------------------------------------------------------


class PeakTokens(NamedTuple):
    at_peak: Counter[str]
    """How often each token sits at a peak (activation ≥ `peak` × the example's maximum)."""
    before: dict[str, Counter[str]]
    """For each peak token, the tokens right before it."""
    background: Counter[str]
    """Every token of the same windows."""


def peak_tokens(examples: Sequence[Example], peak: float = 0.5) -> PeakTokens:
    at_peak: Counter[str] = Counter()
    before: dict[str, Counter[str]] = defaultdict(Counter)
    background: Counter[str] = Counter()
    for e in examples:
        background.update(e.tokens)
        cut = peak * e.max_act
        for i, (tok, act) in enumerate(zip(e.tokens, e.acts, strict=True)):
            if act > 0 and act >= cut:
                at_peak[tok] += 1
                if i > 0:
                    before[tok][e.tokens[i - 1]] += 1
    return PeakTokens(at_peak, before, background)


def over_represented(p: PeakTokens) -> list[tuple[str, float]]:
    """Peak tokens ranked by count × log(share at peaks / share in the windows); tokens no more
    frequent at peaks than around them come last, by count."""
    n_peak, n_bg = p.at_peak.total(), p.background.total()

    def score(tok: str) -> float:
        ratio = (p.at_peak[tok] / n_peak) / (p.background[tok] / n_bg)
        return p.at_peak[tok] * math.log(ratio)

    ranked = sorted(p.at_peak, key=lambda t: (score(t) > 0, score(t), p.at_peak[t]), reverse=True)
    return [(t, p.at_peak[t] / n_peak) for t in ranked]


@final
class TokensExplainer:
    """Offline: the tokens at the activation peaks, most over-represented first."""

    name = "tokens"

    def __init__(self, *, peak: float = 0.5, max_tokens: int = 3) -> None:
        self.peak = peak
        self.max_tokens = max_tokens

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        return [self._one(f) for f in features]

    def _one(self, f: FeatureStats) -> Label:
        examples = [e for e in explain_split(f) if e.active]
        if not examples:
            return Label(f.index, "", self.name, {"error": "no active examples to explain"})
        p = peak_tokens(examples, self.peak)
        ranked = over_represented(p)
        top, share = ranked[0]
        if share >= 0.5 or len(ranked) == 1:
            text = f"the token {show(top)}"
            prev, n = p.before[top].most_common(1)[0] if p.before[top] else ("", 0)
            if n >= 2 and n >= 0.5 * p.at_peak[top]:
                text += f" (often after {show(prev)})"
            covered = share
        else:
            chosen = [(t, s) for t, s in ranked[: self.max_tokens] if s >= 0.1] or ranked[:1]
            text = "tokens " + ", ".join(show(t) for t, _ in chosen)
            covered = sum(s for _, s in chosen)
        meta = {"peak_share": round(covered, 4), "n_examples": len(examples)}
        return Label(f.index, text, self.name, meta)


# --- logits ---------------------------------------------------------------------------------


@final
class LogitsExplainer:
    """Offline: the tokens whose logits the feature's output direction raises most."""

    name = "logits"

    def __init__(self, *, max_tokens: int = 3) -> None:
        self.max_tokens = max_tokens

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        return [self._one(f) for f in features]

    def _one(self, f: FeatureStats) -> Label:
        if not f.promoted:
            error = "no logit effects (this basis has no output direction)"
            return Label(f.index, "", self.name, {"error": error})
        top = sorted(f.promoted, key=lambda e: e.value, reverse=True)[: self.max_tokens]
        text = "promotes " + ", ".join(show(e.token) for e in top)
        return Label(f.index, text, self.name, {"values": [round(e.value, 4) for e in top]})


# --- llm ------------------------------------------------------------------------------------

SYSTEM_PROMPT = """\
You are studying one feature of a language model. Below are text excerpts where it activates. \
Tokens where it fires are marked <<like this>>; after each excerpt, the marked tokens are \
listed with the activation on a 0-9 scale. Find what the marked tokens have in common: the \
tokens themselves, their context, or a concept. Answer with one short phrase (at most 12 \
words) describing the feature, with no preamble, quotes or explanation."""


def render_example(e: Example, scale: float) -> str:
    """One excerpt with firing tokens marked `<<…>>` and their activations (0-9) listed."""
    levels = [min(9, round(9 * a / scale)) if scale > 0 else 0 for a in e.acts]
    parts: list[str] = []
    marked: list[str] = []
    for tok, level in zip(e.tokens, levels, strict=True):
        shown = tok.replace("\n", "\\n")
        parts.append(f"<<{shown}>>" if level > 0 else shown)
        if level > 0:
            marked.append(f"{show(tok)} {level}")
    text = "".join(parts).replace(">><<", "")  # neighbours share one mark
    return f"{text}\nActivations: {', '.join(marked)}"


def build_prompt(examples: Sequence[Example]) -> list[Message]:
    """The chat messages asking for one phrase, from these (explain-split) examples."""
    scale = max((e.max_act for e in examples), default=0.0)
    body = "\n\n".join(
        f"Excerpt {i}:\n{render_example(e, scale)}" for i, e in enumerate(examples, 1)
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{body}\n\nWhat does this feature detect?"},
    ]


class Parsed(NamedTuple):
    text: str
    """The explanation, "" when none could be read."""
    error: str | None
    """Why there is none: `refused`, `empty`, `truncated`, `junk`."""


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_REFUSAL = re.compile(
    r"^\W*(i\s+can[’']?t|i\s+cannot|i\s+can\s+not|i[’']?m\s+(sorry|unable)|i\s+am\s+(sorry|unable)|"
    r"as\s+an\s+ai|i\s+won[’']?t|i[’']?m\s+not\s+able)",
    re.I,
)
_PREFIX = re.compile(
    r"^(the\s+)?(final\s+)?(explanation|answer|label|description|summary|feature|phrase)"
    r"(\s+is)?\s*[:\-–—]\s*",
    re.I,
)
_CHATTY = re.compile(r"^(sure|certainly|of course|okay|ok)\b[\s,.!:]*", re.I)
_MARKDOWN = re.compile(r"^(#+\s+|[-*+]\s+|>\s*|\d+[.)]\s+)|\*\*|__")
_QUOTES = "\"'“”‘’`«»"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
MAX_CHARS = 160


def _clean_line(line: str) -> str:
    line = _MARKDOWN.sub("", line.strip()).strip()
    line = _PREFIX.sub("", _CHATTY.sub("", line)).strip()
    while len(line) >= 2 and line[0] in _QUOTES and line.rstrip(".")[-1:] in _QUOTES:
        line = line.rstrip(".").strip(_QUOTES).strip()
    return line.rstrip(".").strip()


def parse_explanation(reply: ChatReply) -> Parsed:
    """The first usable line of a reply, without preambles, quotes and markdown."""
    raw = _THINK.sub("", reply.text).strip()
    if reply.finish_reason == "refusal" or _REFUSAL.match(raw):
        return Parsed("", "refused")
    for line in raw.splitlines():
        text = _clean_line(line)
        if not text or (text.endswith(":") and line.rstrip().endswith(":")):
            continue  # a blank line, or "Here is the explanation:" before the answer
        if _REFUSAL.match(text):
            return Parsed("", "refused")
        if not any(c.isalnum() for c in text):
            return Parsed("", "junk")
        text = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")  # one phrase, not a paragraph
        if len(text) > MAX_CHARS:
            text = text[:MAX_CHARS].rsplit(" ", 1)[0] + "…"
        return Parsed(text, None)
    return Parsed("", "truncated" if reply.finish_reason == "length" else "empty")


@final
class LLMExplainer:
    """Asks a chat model for one phrase per feature from its marked explain-split examples."""

    def __init__(
        self,
        client: ChatClient,
        *,
        concurrency: int = 8,
        n_examples: int = 16,
        max_tokens: int = 64,
    ) -> None:
        self.client = client
        self.concurrency = concurrency
        self.n_examples = n_examples
        self.max_tokens = max_tokens

    @property
    def name(self) -> str:
        return f"llm:{self.client.name}"

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        shown = [[e for e in explain_split(f) if e.active][: self.n_examples] for f in features]
        asked = [i for i, examples in enumerate(shown) if examples]
        requests = [ChatRequest(build_prompt(shown[i]), self.max_tokens) for i in asked]
        replies = dict(
            zip(
                asked,
                complete_many(self.client, requests, self.concurrency, desc="explain"),
                strict=True,
            )
        )
        return [
            self._label(f, replies[i])
            if i in replies
            else Label(f.index, "", self.name, {"error": "no active examples to explain"})
            for i, f in enumerate(features)
        ]

    def _label(self, f: FeatureStats, reply: ChatReply | AimriError) -> Label:
        if isinstance(reply, AimriError):
            return Label(f.index, "", self.name, {"error": f"endpoint failed: {reply}"})
        parsed = parse_explanation(reply)
        meta: dict[str, object] = {
            "finish_reason": reply.finish_reason,
            "prompt_tokens": reply.usage.prompt_tokens,
            "completion_tokens": reply.usage.completion_tokens,
            "cost_usd": reply.usage.cost_usd,
            "cached": reply.cached,
        }
        if parsed.error is not None:
            meta |= {"error": parsed.error, "raw": reply.text[:300]}
        return Label(f.index, parsed.text, self.name, meta)


# --- registry -------------------------------------------------------------------------------


def _llm(llm: LLMConfig | None, client: ChatClient | None) -> Explainer:
    if llm is None:
        raise AimriError(
            "explainer 'llm' needs a chat endpoint: pass --llm.base-url (and --llm.model), e.g. "
            "a llama.cpp server at http://127.0.0.1:8080/v1"
        )
    return LLMExplainer(client or make_client(llm), concurrency=llm.concurrency)


EXPLAINERS: dict[str, Callable[[LLMConfig | None, ChatClient | None], Explainer]] = {
    "tokens": lambda _, __: TokensExplainer(),
    "logits": lambda _, __: LogitsExplainer(),
    "llm": _llm,
}
"""Explainer name → factory taking the LLM endpoint (None for offline explainers) and, when the
caller already has one, its client (so one run shares one client and one set of accounts)."""


def make_explainer(
    name: str, llm: LLMConfig | None = None, *, client: ChatClient | None = None
) -> Explainer:
    factory = EXPLAINERS.get(name)
    if factory is None:
        raise AimriError(
            f"unknown explainer '{name}': use one of {', '.join(EXPLAINERS)} (--explainers)"
        )
    return factory(llm, client)
