"""Where feature statistics read text and activations from: a store on disk, or a model on the fly.

Both give the same thing, whole contexts in a fixed order, as often as asked (statistics make
two passes): `ContextBatch(ids [B], tokens [B, T], acts [B, T, d], sink [B, T])`, where `sink`
marks the attention sinks and massive activations every statistic leaves out (`store.sinks`).
Not here: features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from aimri.config import CorpusConfig
from aimri.corpus.contexts import iter_contexts
from aimri.model.adapter import Model
from aimri.store.reader import ActivationStore
from aimri.store.sinks import model_special_ids, sinks_in_contexts


class ContextBatch(NamedTuple):
    ids: Tensor
    """[B] context indices (0, 1, 2 … in source order)."""
    tokens: Tensor
    """[B, T] token ids."""
    acts: Tensor
    """[B, T, d] activations of the site (float32, CPU)."""
    sink: Tensor
    """[B, T] bool: tokens to leave out (position 0 always; with sinks excluded, also special
    tokens and massive activations)."""


class ContextSource(ABC):
    """Re-iterable source of whole contexts of one site."""

    site: str
    ctx_len: int
    n_contexts: int
    special: tuple[int, ...]
    exclude_sinks: bool

    def _batch(self, ids: Tensor, tokens: Tensor, acts: Tensor) -> ContextBatch:
        sink = sinks_in_contexts(tokens, [acts], self.special, self.exclude_sinks)
        return ContextBatch(ids, tokens, acts, sink)

    @abstractmethod
    def __iter__(self) -> Iterator[ContextBatch]:
        """Every context, in the same order each time."""


class StoreContexts(ContextSource):
    """Contexts of an activation store, shard by shard (each shard holds whole contexts)."""

    def __init__(
        self,
        store: ActivationStore,
        site: str,
        batch_contexts: int = 16,
        *,
        exclude_sinks: bool = True,
    ) -> None:
        store.width(site)  # a clear error for a site the store lacks
        self.special = store.special_ids
        self.exclude_sinks = exclude_sinks
        self.batch_contexts = batch_contexts
        self.store = store
        self.site = site
        self.ctx_len = int(store.identity["ctx_len"])
        self.n_contexts = store.n_tokens // self.ctx_len

    def __iter__(self) -> Iterator[ContextBatch]:
        T, step = self.ctx_len, self.batch_contexts
        for i in range(self.store.n_shards):
            acts = self.store.load(self.site, i)
            tokens = self.store.load("tokens", i).long()
            ids = self.store.load("context_ids", i).long()
            B = len(tokens) // T
            ids, tokens, acts = ids.view(B, T)[:, 0], tokens.view(B, T), acts.view(B, T, -1)
            for s in range(0, B, step):  # a shard may hold 256 MiB: hand it out in slices
                yield self._batch(
                    ids[s : s + step], tokens[s : s + step], acts[s : s + step].float()
                )


class ModelContexts(ContextSource):
    """Contexts made on the fly: the corpus through the model, stopping after the site."""

    def __init__(
        self,
        model: Model,
        corpus: CorpusConfig,
        site: str,
        batch_size: int = 16,
        *,
        exclude_sinks: bool = True,
    ) -> None:
        model.expand_sites([site])
        self.special = model_special_ids(model.tokenizer, corpus.prepend_bos)
        self.exclude_sinks = exclude_sinks
        self.model = model
        self.corpus = corpus
        self.site = site
        self.batch_size = batch_size
        self.ctx_len = corpus.ctx_len
        self.n_contexts = corpus.max_tokens // corpus.ctx_len

    def __iter__(self) -> Iterator[ContextBatch]:
        contexts = iter_contexts(self.model.tokenizer, self.corpus)
        start = 0
        while batch := [c for _, c in zip(range(self.batch_size), contexts, strict=False)]:
            tokens = torch.stack(batch)
            acts = self.model.run(tokens, read=[self.site], logits=False).acts[self.site]
            ids = torch.arange(start, start + len(batch))
            start += len(batch)
            yield self._batch(ids, tokens, acts.to("cpu", torch.float32))
