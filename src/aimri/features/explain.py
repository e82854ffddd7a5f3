"""Explainers: turn what a feature does into a short natural-language `Label`.

Each explainer is registered by name in `EXPLAINERS` and labels a batch of features at once:
`tokens` (offline: the words, whitespace and special tokens that carry the activation mass, word
pieces merged into their word and the preceding unit named where that context selects them, in
the notation of `words.py`), `logits` (offline: the whole words the feature's output
direction promotes) and `llm` (asks a `ChatClient` for one phrase
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
from functools import lru_cache
from typing import NamedTuple, Protocol, final

from aimri.config import LLMConfig
from aimri.errors import AimriError
from aimri.features import words
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


# --- tokens ---------------------------------------------------------------------------------


class Candidate(NamedTuple):
    """A word the feature may be labelled with, and what the explain split says of it."""

    unit: str
    """The word's `words.key`."""
    surface: str
    """Its most frequent form, as written (case kept)."""
    mass: float
    """Summed peak activation over its occurrences in the explain split."""
    context: str | None
    """The surface form of the unit right before it that carries at least half its mass (over
    two or more firing occurrences), if one does: the only context worth naming."""


@final
class TokensExplainer:
    """Offline: the words (pieces merged into the word they form in context, see `words.py`)
    whose activation mass is largest on the explainer's examples, whitespace and special tokens
    included, each with the unit before it where that context is what fires it.

    Candidates come by mass; a word is named only if the feature fires on at least
    `min_precision` of its occurrences (in its context, where one is given), so a frequent word
    the feature merely sits beside is not named. Each candidate is tried bare and after its
    preceding unit that carries most of its mass, if one does; the context is kept where it
    raises the simulation score
    (`words.pooled_pearson` of `words.predict`) on the explainer's own examples. Naming stops
    at the first candidate that raises that score by less than `min_gain`, or at `max_items`."""

    name = "tokens"

    def __init__(
        self,
        *,
        max_items: int = 6,
        min_precision: float = 0.5,
        min_gain: float = 0.01,
        max_candidates: int = 12,
    ) -> None:
        self.max_items = max_items
        self.min_precision = min_precision
        self.min_gain = min_gain
        self.max_candidates = max_candidates

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        return [self._one(f) for f in features]

    def _one(self, f: FeatureStats) -> Label:
        examples = explain_split(f)
        if not any(e.active for e in examples):
            return Label(f.index, "", self.name, {"error": "no active examples to explain"})
        windows = [words.parse(e.tokens) for e in examples]
        occurrences = word_occurrences(examples)
        named: list[str] = []
        r = 0.0  # a label naming nothing predicts a constant: r = 0
        for c in candidates(occurrences)[: self.max_candidates]:
            tries = [words.item(c.surface)]
            tries += [words.item(c.surface, c.context)] if c.context is not None else []
            tries = [t for t in tries if _precision(occurrences, t) >= self.min_precision]
            if not tries:
                continue
            # A context is named only where it raises the score: bare is the plainer claim.
            chosen, best = tries[0], self._r([*named, tries[0]], windows, examples)
            for t in tries[1:]:
                r_t = self._r([*named, t], windows, examples)
                if r_t >= best + self.min_gain:
                    chosen, best = t, r_t
            if best < r + self.min_gain:
                break
            named.append(chosen)
            r = best
            if len(named) == self.max_items:
                break
        if not named:
            return Label(f.index, "", self.name, {"error": "no word predicts where it fires"})
        meta = {"explain_r": round(r, 4), "n_examples": len(examples)}
        return Label(f.index, words.FIRES_ON + ", ".join(named), self.name, meta)

    @staticmethod
    def _r(items: list[str], windows: list[words.Parsed], examples: list[Example]) -> float:
        label = words.FIRES_ON + ", ".join(items)
        r = words.pooled_pearson([words.predict(label, w) for w in windows], examples)
        return r if math.isfinite(r) else 0.0


class Occurrence(NamedTuple):
    """One word of one explain-split window."""

    unit: str
    """Its `words.key`."""
    surface: str
    """Its visible form, case kept."""
    before: str | None
    """The key of the unit right before it (None at a window's start)."""
    before_surface: str | None
    peak: float
    """The feature's largest activation on the word's tokens."""


def word_occurrences(examples: Sequence[Example]) -> list[Occurrence]:
    out = []
    for e in examples:
        prev: words.Unit | None = None
        for u in words.units(e.tokens):
            peak = max(e.acts[u.start : u.end])
            before = None if prev is None else words.key(prev.text)
            shown = None if prev is None else words.visible(prev.text)
            out.append(Occurrence(words.key(u.text), words.visible(u.text), before, shown, peak))
            prev = u
    return out


def candidates(occurrences: Sequence[Occurrence]) -> list[Candidate]:
    """Words the feature fires on, by summed peak activation, highest first."""
    mass: defaultdict[str, float] = defaultdict(float)
    surface: defaultdict[str, Counter[str]] = defaultdict(Counter)
    ctx_mass: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    ctx_fired: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for o in occurrences:
        surface[o.unit][o.surface] += 1
        if o.peak > 0:
            mass[o.unit] += o.peak
            if o.before_surface is not None:
                ctx_mass[o.unit][o.before_surface] += o.peak
                ctx_fired[o.unit][o.before_surface] += 1
    out = []
    for k, m in sorted(mass.items(), key=lambda kv: -kv[1]):
        if not k:
            continue
        heaviest = max(ctx_mass[k].items(), key=lambda kv: kv[1], default=None)
        context = None
        if heaviest and heaviest[1] >= 0.5 * m and ctx_fired[k][heaviest[0]] >= 2:
            context = heaviest[0]
        out.append(Candidate(k, surface[k].most_common(1)[0][0], m, context))
    return out


def _precision(occurrences: Sequence[Occurrence], item: str) -> float:
    """Share of the item's occurrences (in its context, where given) on which it fires."""
    ((unit, after),) = words.claims(item)
    hits = [o for o in occurrences if o.unit == unit and (after is None or o.before == after)]
    return sum(o.peak > 0 for o in hits) / len(hits) if hits else 0.0


# --- logits ---------------------------------------------------------------------------------


@final
class LogitsExplainer:
    """Offline: the whole words whose logits the feature's output direction raises most.

    Only tokens that start a word and read as one (`readable_word`) are named: at middle layers
    the logit lens is dominated by word pieces ("ducive", "ancip"), which say nothing a reader
    can use. With none among the promoted tokens the label says "no readable output effect"."""

    name = "logits"

    def __init__(self, *, max_tokens: int = 3) -> None:
        self.max_tokens = max_tokens

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        return [self._one(f) for f in features]

    def _one(self, f: FeatureStats) -> Label:
        if not f.promoted:
            error = "no logit effects (this basis has no output direction)"
            return Label(f.index, "", self.name, {"error": error})
        ranked = sorted(f.promoted, key=lambda e: e.value, reverse=True)
        top = [e for e in ranked if readable_word(e.token)][: self.max_tokens]
        if not top:
            return Label(f.index, words.NO_OUTPUT, self.name, {"n_promoted": len(ranked)})
        text = words.PROMOTES + ", ".join(words.quote(e.token) for e in top)
        return Label(f.index, text, self.name, {"values": [round(e.value, 4) for e in top]})


def readable_word(token: str) -> bool:
    """A token that starts a word (a leading space) and reads as an English word: at least two
    letters and nothing else, and a common-English word-piece vocabulary (MiniLM's WordPiece)
    spells it in at most two pieces (`" wrapper"` → wrap + ##per passes; `" meticul"` → met +
    ##ic + ##ul does not). Without that vocabulary installed, the letter rule alone decides."""
    word = token[1:] if token[:1] == " " else ""
    if len(word) < 2 or not word.isascii() or not word.isalpha():
        return False
    pieces = _wordpiece()
    return pieces is None or len(pieces(word.lower())) <= 2


@lru_cache(maxsize=1)
def _wordpiece() -> Callable[[str], list[str]] | None:
    try:
        from transformers import AutoTokenizer

        from aimri.features.embed import model_dir

        tok = AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)
    except (AimriError, OSError, ValueError):
        return None
    return tok.tokenize


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
            marked.append(f"{json.dumps(tok, ensure_ascii=False)} {level}")
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
