"""Tokenize documents into fixed-length contexts with explicit BOS and boundary handling.

`pack`: documents joined by an end-of-text token, cut into contexts of `ctx_len`, each starting
with BOS. `truncate`: one context per document (its first tokens); shorter ones are skipped.
Same config and seed → the same token ids. Not here: where documents come from (`sources.py`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aimri.config import CorpusConfig
from aimri.corpus.sources import iter_documents
from aimri.errors import AimriError

log = logging.getLogger(__name__)
_TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None
    """Prepended to every context (None: nothing is prepended)."""
    separator: int
    """Put between documents when packing."""


def special_tokens(tokenizer: Any, prepend_bos: bool) -> SpecialTokens:
    """BOS: the tokenizer's BOS, else its EOS. Separator: `<|endoftext|>` if the vocabulary has
    it (the pretraining document separator of GPT-2, Qwen, SmolLM...), else EOS."""
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    sep_id = _token_id(tokenizer, "<|endoftext|>")
    sep_id = eos if sep_id is None else sep_id
    if sep_id is None or (prepend_bos and bos is None):
        raise AimriError(
            "this tokenizer has neither BOS nor EOS token, so contexts cannot be delimited: "
            "set its eos_token, or use --corpus.no-prepend-bos with --corpus.boundary truncate"
        )
    return SpecialTokens(bos=bos if prepend_bos else None, separator=int(sep_id))


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` if the vocabulary has it. (One lookup: `get_vocab()` builds the whole
    vocabulary, ~50 ms, and this runs once per prompt.) An unknown token maps to the unknown
    token's id, so the id is checked to spell `token`."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != token:
        return None
    return int(tid)


def iter_contexts(tokenizer: Any, cfg: CorpusConfig, *, start: int = 0) -> Iterator[Tensor]:
    """Yield contexts, each a [ctx_len] int64 tensor, at most `cfg.max_tokens // ctx_len`.

    `start` > 0 passes over the stream's first `start` contexts (fresh text for a dictionary
    that read them before) and wraps to the corpus's start when it reaches the end, so text is
    only repeated once all of it has been read."""
    special = special_tokens(tokenizer, cfg.prepend_bos)
    body = cfg.ctx_len - (special.bos is not None)
    prefix = [special.bos] if special.bos is not None else []
    n_max = cfg.max_tokens // cfg.ctx_len

    def stream() -> Iterator[list[int]]:
        docs = _tokenized(tokenizer, iter_documents(cfg))
        if cfg.boundary == "pack":
            return _packed(docs, body, special.separator)
        return (ids[:body] for ids in docs if len(ids) >= body)

    chunks = stream() if start == 0 else _from(stream, start)
    n = 0
    for chunk in itertools.islice(chunks, n_max):
        n += 1
        yield torch.tensor(prefix + chunk, dtype=torch.long)
    if n == 0:
        raise AimriError(
            f"corpus '{cfg.source}' gave no context of {cfg.ctx_len} tokens: it is empty or its "
            "documents are too short; check the source, or lower --corpus.ctx-len"
        )
    if n < n_max:
        log.warning("corpus '%s' ran out after %d of %d contexts", cfg.source, n, n_max)


def _from(stream: Callable[[], Iterator[list[int]]], start: int) -> Iterator[list[int]]:
    """The chunks of `stream()` from the `start`-th on (`start` taken modulo the stream's
    length), then from its beginning again, for ever. Only the text before `start` is passed
    over; the stream is never counted whole unless it is shorter than `start`."""
    chunks = stream()
    skipped = sum(1 for _ in itertools.islice(chunks, start))
    if skipped == 0:
        return
    if skipped < start:  # shorter than `start`: its length is now known
        chunks = itertools.islice(stream(), start % skipped, None)
    yield from chunks
    while True:
        yield from stream()


def take_contexts(tokenizer: Any, cfg: CorpusConfig) -> Tensor:
    """All contexts as one [n_contexts, ctx_len] tensor (for small jobs)."""
    return torch.stack(list(iter_contexts(tokenizer, cfg)))


def _tokenized(tokenizer: Any, docs: Iterator[str]) -> Iterator[list[int]]:
    while batch := list(itertools.islice(docs, _TOKENIZE_BATCH)):
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def _packed(docs: Iterator[list[int]], body: int, separator: int) -> Iterator[list[int]]:
    buf: list[int] = []
    for ids in docs:
        buf.extend(ids)
        buf.append(separator)
        while len(buf) >= body:
            yield buf[:body]
            del buf[:body]
