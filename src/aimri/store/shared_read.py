"""One read of a corpus through a model, handed to every consumer that needs activations.

Each consumer declares the sites it reads and how long it wants batches (`Consumer`); the read
runs each forward batch once, stops the forward pass after the deepest site any consumer still
wants (once the transcoders have their tokens, a read for a middle-layer SAE runs half the
model), and hands the batch on. Memory is bounded by one forward batch plus what each consumer
buffers; nothing is cached on disk unless a consumer writes it (`StoreWriter`: a store as
`aimri collect` makes, for the stages that read one back).
Not here: what consumers do (training: `aimri.dicts.trainer.StreamTrainer`), the precision the
model runs at (the caller passes a model at the dtype it wants).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from aimri.config import CorpusConfig
from aimri.corpus.contexts import iter_contexts
from aimri.model.adapter import Model
from aimri.store.collect import prepare_store, write_manifest, write_shard
from aimri.store.manifest import read_sidecars
from aimri.store.sinks import chunk_summary

log = logging.getLogger(__name__)


class ReadBatch(NamedTuple):
    tokens: Tensor
    """[n] token ids (int64, CPU), n = contexts × ctx_len."""
    positions: Tensor
    """[n] position of each token in its context."""
    context_ids: Tensor
    """[n] index of each token's context in the read."""
    acts: dict[str, Tensor]
    """site → [n, width], the model's dtype, on the CPU."""


class Consumer(Protocol):
    name: str
    sites: tuple[str, ...]
    """Concrete site names (no globs) this consumer reads."""

    @property
    def wants(self) -> bool:
        """Whether it still takes batches; the read ends when no consumer does."""
        ...

    def consume(self, batch: ReadBatch) -> None: ...


@dataclass(frozen=True)
class ReadResult:
    n_tokens: int
    """Tokens read (the most any consumer took)."""
    seconds: float
    """Wall time of the read, consumers' work included."""
    forward_seconds: float
    """Time in the model's forward passes alone."""
    tokens: dict[str, int]
    """Consumer name → tokens it was handed."""
    dtype: str
    contexts: int = 0
    """Contexts read (where a later read that wants fresh text starts, after `start`)."""


def shared_read(
    model: Model,
    corpus: CorpusConfig,
    consumers: Sequence[Consumer],
    *,
    batch_size: int = 16,
    desc: str = "read",
    start: int = 0,
) -> ReadResult:
    """Read `corpus` (up to `corpus.max_tokens`) through `model` once, handing each forward
    batch to every consumer that still wants it; `start` > 0 begins at that context of the
    corpus's stream (and wraps at its end: `aimri.corpus.contexts.iter_contexts`)."""
    t0 = time.perf_counter()
    forward_s = 0.0
    handed = {c.name: 0 for c in consumers}
    contexts = iter_contexts(model.tokenizer, corpus, start=start)
    planned = corpus.max_tokens // corpus.ctx_len * corpus.ctx_len
    bar = tqdm(total=planned, unit="tok", unit_scale=True, desc=desc, disable=None)
    n_read, first_context = 0, 0
    for ids in _batches(contexts, batch_size):
        active = [c for c in consumers if c.wants]
        if not active:
            break
        sites = list(dict.fromkeys(s for c in active for s in c.sites))
        t = time.perf_counter()
        acts = model.run(ids, read=sites, logits=False).acts
        forward_s += time.perf_counter() - t
        batch = _read_batch(ids, acts, first_context)
        for c in active:
            c.consume(batch)
            handed[c.name] += len(batch.tokens)
        n_read += len(batch.tokens)
        first_context += len(ids)
        bar.update(len(batch.tokens))
        bar.set_postfix(sites=len(sites))
    bar.close()
    return ReadResult(
        n_tokens=n_read,
        seconds=time.perf_counter() - t0,
        forward_seconds=forward_s,
        tokens=handed,
        dtype=str(next(model.hf.parameters()).dtype).removeprefix("torch."),
        contexts=first_context,
    )


def _batches(contexts: Iterator[Tensor], n: int) -> Iterator[Tensor]:
    while chunk := list(itertools.islice(contexts, n)):
        yield torch.stack(chunk)


def _read_batch(ids: Tensor, acts: dict[str, Tensor], first_context: int) -> ReadBatch:
    n_ctx, ctx_len = ids.shape
    return ReadBatch(
        tokens=ids.reshape(-1),
        positions=torch.arange(ctx_len).repeat(n_ctx),
        context_ids=torch.arange(first_context, first_context + n_ctx).repeat_interleave(ctx_len),
        acts={s: a.reshape(-1, a.shape[-1]).cpu() for s, a in acts.items()},
    )


class StoreWriter:
    """A consumer that writes the first `n_tokens` of the read to an activation store, shard by
    shard, exactly as `aimri collect` lays it out (manifest, checksums, sink summaries), so
    the stages that read a store back (statistics, the logit lens) need no read of their own.
    Shards already complete from an interrupted run are not written again."""

    def __init__(
        self,
        name: str,
        out: Path,
        identity: dict[str, Any],
        sites: Sequence[str],
        n_tokens: int,
        special: Sequence[int],
        *,
        overwrite: bool = False,
    ) -> None:
        self.name = name
        self.out = out
        self.identity = identity
        self.sites = tuple(sites)
        self.n_tokens = n_tokens
        self.special = list(special)
        self.dtype = getattr(torch, identity["dtype"])
        self.per_shard = int(identity["shard_contexts"]) * int(identity["ctx_len"])
        prepare_store(out, identity, overwrite)
        self.done = read_sidecars(out)
        self.pending: list[ReadBatch] = []
        self.taken = 0
        self.shard = 0

    @property
    def wants(self) -> bool:
        return self.taken < self.n_tokens

    def consume(self, batch: ReadBatch) -> None:
        keep = min(len(batch.tokens), self.n_tokens - self.taken)
        keep -= keep % int(self.identity["ctx_len"])
        if keep <= 0:
            self.taken = self.n_tokens
            return
        self.pending.append(_head(batch, keep, self.sites))
        self.taken += keep
        while sum(len(b.tokens) for b in self.pending) >= self.per_shard or (
            not self.wants and self.pending
        ):
            self._write()

    def finish(self) -> None:
        while self.pending:
            self._write()
        write_manifest(self.out, self.identity, read_sidecars(self.out, verify=False))

    def _write(self) -> None:
        joined = {
            s: torch.cat([b.acts[s] for b in self.pending]).to(self.dtype) for s in self.sites
        }
        tokens = torch.cat([b.tokens for b in self.pending])
        positions = torch.cat([b.positions for b in self.pending])
        contexts = torch.cat([b.context_ids for b in self.pending])
        n = min(len(tokens), self.per_shard)
        self.pending = (
            [
                ReadBatch(
                    tokens[n:], positions[n:], contexts[n:], {s: a[n:] for s, a in joined.items()}
                )
            ]
            if n < len(tokens)
            else []
        )
        if self.shard not in self.done:
            tensors = {s: a[:n] for s, a in joined.items()}
            sinks = chunk_summary(tokens[:n], positions[:n].int(), tensors, self.special)
            tensors["tokens"] = tokens[:n].to(torch.int32)
            tensors["positions"] = positions[:n].to(torch.int32)
            tensors["context_ids"] = contexts[:n]
            write_shard(self.out, self.shard, tensors, n, extra={"sinks": sinks})
        self.shard += 1


def _head(batch: ReadBatch, n: int, sites: Sequence[str]) -> ReadBatch:
    return ReadBatch(
        batch.tokens[:n],
        batch.positions[:n],
        batch.context_ids[:n],
        {s: batch.acts[s][:n] for s in sites},
    )
