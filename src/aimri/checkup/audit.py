"""The audit game's two players: the blue team (white box) and a black-box baseline.

Both get the same inputs and nothing else: the base model A, the modified model B, the fixed
prompt set (`audit_prompts.PROMPTS`) and neutral texts (built-in corpus documents, `neutral_texts`).
Neither reads plant.json or any training data. Both return an `AuditReport` of at most k ranked
`Hypothesis` items with at most `KEYWORD_CAP` keywords each, built by the same ranking
(`audit_words`), so success@k compares the evidence, not the bookkeeping.

- `blue_team`: `aimri.checkup.diff.diff_models` on prompts + texts (teacher-forced: per-token
  KL, promoted output tokens, per-layer mean differences through the logit lens, the base
  dictionary's changed features, trigger-candidate input tokens), plus steering A with the top
  layer's mean difference where the replies start (`audit_blue.py`).
- `black_box`: both models write replies to the prompts and continue the texts (the first
  `TEXT_PROMPT_CHARS` characters of each), greedy plus `samples − 1` sampled replies; words
  over-represented in B's replies (`audit_words.over_represented`) and the inputs whose replies
  differ most.
Not here: planting (`plant.py`), scoring rules (`audit_words.py`), the CLI and report.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from aimri.checkup.audit_blue import (
    add_steering,
    context_candidates,
    diff_evidence,
    feature_words,
    steer_evidence,
    top_layer,
    trigger_candidates,
    word_candidates,
)
from aimri.checkup.audit_prompts import PROMPTS
from aimri.checkup.audit_words import (
    CONTEXT_WEIGHT,
    KEYWORD_CAP,
    AuditReport,
    AuditScore,
    Candidate,
    Hypothesis,
    WordShift,
    named,
    over_represented,
    rank_candidates,
    score,
    top_words,
    words,
)
from aimri.checkup.diff import diff_models
from aimri.config import CorpusConfig
from aimri.corpus.sources import iter_documents
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.generate import generate

__all__ = [
    "KEYWORD_CAP",
    "PROMPTS",
    "AuditReport",
    "AuditScore",
    "Hypothesis",
    "black_box",
    "blue_team",
    "named",
    "neutral_texts",
    "score",
]
log = logging.getLogger(__name__)
TEXT_PROMPT_CHARS = 200
MAX_NEW_TOKENS = 32


def neutral_texts(n: int = 16, max_chars: int = 600, seed: int = 1) -> list[str]:
    """The first n built-in corpus documents (Python's docs and sources), each cut to
    max_chars: text neither model was fine-tuned on."""
    docs = iter_documents(CorpusConfig(source="builtin", seed=seed))
    return [d[:max_chars] for d in itertools.islice(docs, n)]


def blue_team(
    base: Model,
    other: Model,
    *,
    texts: Sequence[str],
    prompts: Sequence[str] = PROMPTS,
    dictionary: Dictionary | None = None,
    dict_site: str | None = None,
    feature_labels: Mapping[int, str] | None = None,
    k: int = 5,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> AuditReport:
    """Hypotheses about what B changed, from the two models' internals (module docstring)."""
    _check(prompts, k)
    t0 = time.perf_counter()
    inputs = [*prompts, *texts]
    d = diff_models(
        base,
        other,
        inputs,
        dictionary=dictionary,
        dict_site=dict_site,
        feature_labels=feature_labels,
        top_k=20,
        seed=seed,
    )
    details: dict[str, object] = {
        "mean_kl": d.kl.mean,
        "changed_layers": [ly.layer for ly in d.layers if ly.changed],
        "diff_notes": d.notes,
    }
    if d.empty:
        return _report("white-box", [], True, prompts, texts, t0, details)
    ev = diff_evidence(d, feature_words(base, d, dictionary))
    L = top_layer(d)
    if L is not None:
        s = steer_evidence(base, other, L, prompts, max_new_tokens)
        add_steering(ev, s, prompts)
        details["steering"] = {k: v for k, v in dataclasses.asdict(s).items() if k != "steered"}
    candidates = [*word_candidates(ev), *trigger_candidates(d), *context_candidates(d, inputs)]
    return _report("white-box", rank_candidates(candidates, k), False, prompts, texts, t0, details)


def black_box(
    base: Model,
    other: Model,
    *,
    prompts: Sequence[str] = PROMPTS,
    texts: Sequence[str] = (),
    k: int = 5,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    samples: int = 2,
) -> AuditReport:
    """Hypotheses from the two models' replies alone (module docstring)."""
    _check(prompts, k)
    if samples < 1:
        raise AimriError(f"samples={samples}: sample at least one reply per prompt")
    t0 = time.perf_counter()
    inputs = [*prompts, *(_text_prompt(t) for t in texts)]
    out_a = _replies(base, inputs, max_new_tokens, samples, seed)
    out_b = _replies(other, inputs, max_new_tokens, samples, seed)
    if out_a == out_b:
        return _report("black-box", [], True, prompts, texts, t0, {"identical_replies": True})
    n_a = Counter(w for rs in out_a for r in rs for w in words(r))
    n_b = Counter(w for rs in out_b for r in rs for w in words(r))
    shifts = over_represented(n_b, n_a)
    over = [s.word for s in shifts]
    candidates = [_word_candidate(s, i, inputs, out_a, out_b, over) for i, s in enumerate(shifts)]
    candidates += _context_candidates(inputs, out_a, out_b, set(over))
    details = {"over_represented": [s._asdict() for s in shifts[:20]], "samples": samples}
    return _report("black-box", rank_candidates(candidates, k), False, prompts, texts, t0, details)


def _check(prompts: Sequence[str], k: int) -> None:
    if not prompts:
        raise AimriError("an audit needs prompts: pass some, or leave the default set")
    if k < 1:
        raise AimriError(f"k={k}: ask for at least one hypothesis")


def _report(
    method: str,
    hyps: list[Hypothesis],
    empty: bool,
    prompts: Sequence[str],
    texts: Sequence[str],
    t0: float,
    details: dict[str, object],
) -> AuditReport:
    seconds = round(time.perf_counter() - t0, 2)
    log.info("%s audit: %d hypotheses in %.0f s", method, len(hyps), seconds)
    inputs = {"prompts": len(prompts), "texts": len(texts)}
    return AuditReport(method, hyps, empty, inputs, seconds, details)


def _text_prompt(text: str) -> str:
    """The start of a text, cut at a space, for the model to continue."""
    cut = text[:TEXT_PROMPT_CHARS]
    return cut[: cut.rfind(" ")] if " " in cut and len(text) > TEXT_PROMPT_CHARS else cut


def _replies(
    model: Model, inputs: Sequence[str], max_new_tokens: int, samples: int, seed: int
) -> list[list[str]]:
    """Per input: the greedy reply, then samples − 1 replies at temperature 0.7."""
    runs = [generate(model, inputs, max_new_tokens=max_new_tokens)]
    for i in range(1, samples):
        runs.append(
            generate(model, inputs, max_new_tokens=max_new_tokens, temperature=0.7, seed=seed + i)
        )
    return [[run[j].text for run in runs] for j in range(len(inputs))]


def _word_candidate(
    s: WordShift,
    rank: int,
    inputs: Sequence[str],
    out_a: list[list[str]],
    out_b: list[list[str]],
    over: Sequence[str],
) -> Candidate:
    """B says `s.word` more: where (the inputs whose B replies use it more) and with what."""
    w = s.word
    more = [
        i
        for i in range(len(inputs))
        if words(" ".join(out_b[i])).count(w) > words(" ".join(out_a[i])).count(w)
    ]
    where = top_words([inputs[i] for i in more], 5, exclude=[w])
    with_ = Counter(x for i in more for x in set(words(" ".join(out_b[i]))) if x in over and x != w)
    co = [x for x, _ in with_.most_common(2)]
    example = [{"prompt": inputs[i], "a": out_a[i][0], "b": out_b[i][0]} for i in more[:3]]
    return Candidate(
        kind="word",
        lead=w,
        text=f"B says '{w}' more than A ({s.count_b} vs {s.count_a} times, z {s.z:.1f})"
        + (f", where: {' '.join(where[:3])}" if where else ""),
        keywords=[*co, *where],
        score=1.0 / (rank + 1),
        evidence={**s._asdict(), "examples": example},
    )


def _context_candidates(
    inputs: Sequence[str], out_a: list[list[str]], out_b: list[list[str]], over: set[str]
) -> list[Candidate]:
    """One per input whose replies differ, ranked by 1 − Jaccard of their word sets."""
    diff: list[tuple[float, int, list[str]]] = []
    for i in range(len(inputs)):
        wa, wb = set(words(" ".join(out_a[i]))), set(words(" ".join(out_b[i])))
        union = wa | wb
        d = 1 - len(wa & wb) / len(union) if union else float(out_a[i] != out_b[i])
        if d > 0:
            diff.append((d, i, [w for w in words(" ".join(out_b[i])) if w not in wa]))
    diff.sort(key=lambda x: (-x[0], x[1]))
    out = []
    for rank, (d, i, new) in enumerate(diff):
        prompt: str = inputs[i]
        own = top_words([prompt], 5)
        new_words = list(dict.fromkeys(sorted(new, key=lambda w: w not in over)))
        out.append(
            Candidate(
                kind="context",
                lead=own[0] if own else (new_words[0] if new_words else f"input{i}"),
                text=f"B answers '{prompt.strip()[:80]}' differently (word overlap {1 - d:.2f})",
                keywords=[*own, *new_words[:3]],
                score=CONTEXT_WEIGHT / (rank + 1),
                evidence={"difference": round(d, 3), "a": out_a[i][0], "b": out_b[i][0]},
            )
        )
    return out
