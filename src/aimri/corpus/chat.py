"""The chat corpus: what a chat model is used on, written by the model itself.

Two kinds of document, generated from the seeded lists of `chat_topics.py`:
- `chat`: one conversation turn in the model's own chat template (system prompt, a user's
  question about a topic, the model's sampled reply);
- `prose`: the model's reply to "write an encyclopedia paragraph about …", kept as plain text
  (general-knowledge prose about people, places, science, history, everyday life).

Why generated and not downloaded: the scan must run offline on a fresh machine, and no package
in the registries ships a broad, permissively licensed chat and prose corpus. Generating costs
about 20 minutes of CPU for 300k tokens (about 230 tokens/s at bf16, batch 96), too long for a
scan, so the built-in model's corpus is generated once and shipped with aimri
(`data/chat-<split>.jsonl.gz`, each file headed by the generator, settings and the weights'
sha256 that made it); `aimri corpus` regenerates it, or makes one for any other chat model.
Not here: the topic lists (`chat_topics.py`), tokenization (`contexts.py`).
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch

from aimri._io import write_bytes_atomic
from aimri.corpus.chat_topics import EVERYDAY, GENERATORS, Generator
from aimri.errors import AimriError

log = logging.getLogger(__name__)
DATA_DIR = Path(__file__).parent / "data"
CORPUS_SCHEMA = 1


@dataclass(frozen=True)
class Request:
    kind: str
    """`chat` (kept in the chat template) or `prose` (the reply alone)."""
    category: str
    topic: str
    text: str
    """What the user asks."""


class Document(TypedDict):
    kind: str
    category: str
    topic: str
    request: str
    text: str


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 224
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    batch_size: int = 96


def requests_of(gen: Generator) -> list[Request]:
    """Every request of a generator, in a seeded order: per topic its `chat_per_topic` chat
    questions and `prose_per_topic` prose requests (distinct wordings), per everyday activity
    one chat turn per advice wording."""
    rng = random.Random(gen.seed)
    out: list[Request] = []
    for category, topics in sorted(gen.topics.items()):
        for t in topics:
            for phrase in rng.sample(gen.chat_requests, gen.chat_per_topic):
                out.append(Request("chat", category, t, phrase.format(t=t)))
            for phrase in rng.sample(gen.prose_requests, gen.prose_per_topic):
                out.append(Request("prose", category, t, phrase.format(t=t)))
    for t in EVERYDAY[gen.name]:
        for phrase in gen.advice_requests:
            out.append(Request("chat", "everyday", t, phrase.format(t=t)))
    rng.shuffle(out)
    return out


def generate_documents(
    hf_model: Any,
    tokenizer: Any,
    gen: Generator,
    settings: GenerationSettings,
    *,
    skip_batches: int = 0,
) -> Iterator[tuple[int, list[Document]]]:
    """Sample the model's reply to every request of `gen`, batch by batch: (batch index, its
    documents). Batches are consecutive slices of the seeded request order (so any prefix of
    batches is a random sample of topics and requests), sorted by prompt length inside a batch
    to pad little; batch b is seeded by the generator's seed and b, so a run that skips the
    first `skip_batches` (done before an interruption) continues exactly."""
    requests = requests_of(gen)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    n_batches = -(-len(requests) // settings.batch_size)
    for b in range(skip_batches, n_batches):
        batch = requests[b * settings.batch_size : (b + 1) * settings.batch_size]
        prompts = sorted(((_prompt(tokenizer, r.text), r) for r in batch), key=lambda p: len(p[0]))
        enc = tokenizer([p for p, _ in prompts], return_tensors="pt", padding=True)
        torch.manual_seed(gen.seed * 100_003 + b)
        with torch.no_grad():
            out = hf_model.generate(
                **enc,
                max_new_tokens=settings.max_new_tokens,
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                repetition_penalty=settings.repetition_penalty,
                pad_token_id=pad,
            )
        docs: list[Document] = []
        for row, (_, r) in enumerate(prompts):
            reply = _whole_sentences(
                tokenizer.decode(out[row, enc.input_ids.shape[1] :], skip_special_tokens=True)
            )
            if len(reply.split()) < 20:
                continue
            text = reply if r.kind == "prose" else _chat_text(tokenizer, r.text, reply)
            docs.append(
                Document(kind=r.kind, category=r.category, topic=r.topic, request=r.text, text=text)
            )
        log.info("chat corpus %s: batch %d of %d", gen.name, b + 1, n_batches)
        yield b, docs


def write_corpus(
    path: Path,
    docs: list[Document],
    gen: Generator,
    settings: GenerationSettings,
    model_sha: str,
    *,
    batches: tuple[int, int],
) -> None:
    """One gzip'd JSONL file: a header line, then one document per line (atomic write)."""
    header = {
        "kind": "aimri.chat_corpus",
        "schema_version": CORPUS_SCHEMA,
        "generator": gen.name,
        "seed": gen.seed,
        "settings": asdict(settings),
        "model_sha256": model_sha,
        "n_documents": len(docs),
        "batches": {"done": batches[0], "of": batches[1]},
    }
    lines = [json.dumps(header)] + [json.dumps(d, ensure_ascii=False) for d in docs]
    write_bytes_atomic(path, gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def corpus_path(split: str) -> Path:
    return DATA_DIR / f"chat-{split}.jsonl.gz"


def read_corpus(path: Path) -> tuple[dict[str, Any], list[Document]]:
    """The header and the documents of a chat corpus file."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise AimriError(
            f"chat corpus '{path}' cannot be read ({e}): reinstall aimri, or regenerate it with "
            "`aimri corpus --out <file>`"
        ) from e
    if not lines or lines[0].get("kind") != "aimri.chat_corpus":
        raise AimriError(f"'{path}' is not an aimri chat corpus (no header line)")
    return lines[0], [Document(**d) for d in lines[1:]]


def chat_documents(split: str, seed: int) -> Iterator[str]:
    """Endless stream of the shipped corpus's texts: a seeded order per pass over the file, a
    new order each pass (passes only repeat text once the budget exceeds the file)."""
    texts = _shipped_texts(split)
    rng = random.Random(seed)
    while True:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for i in order:
            yield texts[i]


@functools.cache
def _shipped_texts(split: str) -> tuple[str, ...]:
    """The texts of a shipped split, read once per process (the file never changes)."""
    path = corpus_path(split)
    if not path.is_file():
        raise AimriError(
            f"the built-in chat corpus '{path.name}' is missing from this install: reinstall "
            "aimri, or use --corpus.source pydoc"
        )
    return tuple(d["text"] for d in read_corpus(path)[1])


def generator(name: str) -> Generator:
    if name not in GENERATORS:
        raise AimriError(f"unknown chat-corpus split '{name}': use one of {', '.join(GENERATORS)}")
    return GENERATORS[name]


def _prompt(tokenizer: Any, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def _chat_text(tokenizer: Any, question: str, reply: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
        tokenize=False,
    ).rstrip("\n")


def _whole_sentences(reply: str) -> str:
    """The reply cut after its last full sentence (a reply that hit the token limit ends
    mid-sentence)."""
    reply = reply.strip()
    cut = max(reply.rfind(c) for c in (".", "!", "?", "\n"))
    return reply[: cut + 1].strip() if cut > len(reply) // 2 else reply
