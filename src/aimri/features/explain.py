"""Explainers: turn what a feature does into a short natural-language `Label`.

Each explainer is registered by name in `EXPLAINERS` and labels a batch of features at once:
`tokens` (offline: the tokens that carry most of the activation mass, with their preceding
token where that context selects them), `logits` (offline: the whole words the feature's output
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
    """Offline: the smallest set of tokens that carries most of the activation mass on the
    explainer's examples, each with its preceding token where that context is what fires it.

    Tokens are grouped case- and space-insensitively (the form shown is the most frequent);
    a token is named only if the feature fires on at least `min_precision` of its occurrences
    in the windows (so a frequent token the feature merely sits beside is not named). Tokens are
    added by mass until they cover `coverage` of it or `max_tokens` are named. A token gets
    `(after "x")` when at least `context_share` of its mass comes after "x" and "x" is no
    more than `context_share` of its occurrences' contexts by count (the context selects)."""

    name = "tokens"

    def __init__(
        self,
        *,
        coverage: float = 0.8,
        max_tokens: int = 6,
        min_precision: float = 0.5,
        context_share: float = 0.8,
    ) -> None:
        self.coverage = coverage
        self.max_tokens = max_tokens
        self.min_precision = min_precision
        self.context_share = context_share

    def explain(self, features: Sequence[FeatureStats]) -> list[Label]:
        return [self._one(f) for f in features]

    def _one(self, f: FeatureStats) -> Label:
        examples = [e for e in explain_split(f) if e.active]
        if not examples:
            return Label(f.index, "", self.name, {"error": "no active examples to explain"})
        m = token_mass(examples)
        total = sum(m.mass.values())
        named: list[str] = []
        covered = 0.0
        for key in sorted(m.mass, key=lambda k: -m.mass[k]):
            if covered >= self.coverage or len(named) == self.max_tokens:
                break
            if m.fired[key] < self.min_precision * m.count[key]:
                continue
            named.append(self._item(m, key))
            covered += m.mass[key] / total
        if not named:
            return Label(f.index, "", self.name, {"error": "no token fires reliably"})
        meta = {"mass_share": round(covered, 4), "n_examples": len(examples)}
        return Label(f.index, "tokens " + ", ".join(named), self.name, meta)

    def _item(self, m: TokenMass, key: str) -> str:
        text = show(m.surface[key].most_common(1)[0][0])
        prev = m.before_mass[key]
        if not prev:
            return text
        ctx, mass = max(prev.items(), key=lambda kv: kv[1])
        share_by_count = m.before_count[key][ctx] / m.count[key]
        if mass >= self.context_share * m.mass[key] and share_by_count <= self.context_share:
            return f"{text} (after {show(m.before_surface[ctx])})"
        return text


class TokenMass(NamedTuple):
    mass: defaultdict[str, float]
    """Normalised token → its summed activation over the windows."""
    count: Counter[str]
    """Normalised token → its occurrences in the windows."""
    fired: Counter[str]
    """Normalised token → occurrences where the feature fires."""
    surface: dict[str, Counter[str]]
    """Normalised token → how often each surface form occurs."""
    before_mass: defaultdict[str, defaultdict[str, float]]
    """Normalised token → normalised preceding token → activation mass."""
    before_count: dict[str, Counter[str]]
    before_surface: dict[str, str]
    """Normalised preceding token → a surface form of it."""


def token_mass(examples: Sequence[Example]) -> TokenMass:
    m = TokenMass(defaultdict(float), Counter(), Counter(), defaultdict(Counter),
                  defaultdict(lambda: defaultdict(float)), defaultdict(Counter), {})  # fmt: skip
    for e in examples:
        keys = [t.strip().lower() for t in e.tokens]
        for i, (tok, key, act) in enumerate(zip(e.tokens, keys, e.acts, strict=True)):
            if not key:
                continue
            m.count[key] += 1
            m.surface[key][tok] += 1
            if act > 0:
                m.mass[key] += act
                m.fired[key] += 1
            if i > 0:
                m.before_count[key][keys[i - 1]] += 1
                m.before_mass[key][keys[i - 1]] += max(act, 0.0)
                m.before_surface.setdefault(keys[i - 1], e.tokens[i - 1])
    return m


# --- logits ---------------------------------------------------------------------------------

NO_OUTPUT = "no readable output effect"


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
            return Label(f.index, NO_OUTPUT, self.name, {"n_promoted": len(ranked)})
        text = "promotes " + ", ".join(show(e.token) for e in top)
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
