"""Where feature statistics read text and activations from: a store on disk, or a model on the fly.

Both give the same thing, whole contexts in a fixed order, as often as asked (statistics make
two passes): `ContextBatch(ids [B], tokens [B, T], acts [B, T, d], sink [B, T])`, where `sink`
marks the attention sinks and massive activations every statistic leaves out (`store.sinks`).
`at_site` gives the same contexts with another site's activations (the MLP neurons read the
MLP's input, not the dictionary's site), keeping the first site's sinks so that every basis is
measured on the same tokens. Not here: features.
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

    def _batch(
        self, ids: Tensor, tokens: Tensor, acts: Tensor, sink_acts: Tensor | None = None
    ) -> ContextBatch:
        """`sink_acts`: the activations whose massive norms mark sinks (default `acts`)."""
        by = acts if sink_acts is None else sink_acts
        sink = sinks_in_contexts(tokens, [by], self.special, self.exclude_sinks)
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
        sinks_of: str | None = None,
    ) -> None:
        """`sinks_of`: the site whose massive activations mark sinks (default `site`)."""
        store.width(site)  # a clear error for a site the store lacks
        self.sinks_of = sinks_of or site
        store.width(self.sinks_of)
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
            by = acts if self.sinks_of == self.site else self.store.load(self.sinks_of, i)
            tokens = self.store.load("tokens", i).long()
            ids = self.store.load("context_ids", i).long()
            B = len(tokens) // T
            ids, tokens = ids.view(B, T)[:, 0], tokens.view(B, T)
            acts, by = acts.view(B, T, -1), by.view(B, T, -1)
            for s in range(0, B, step):  # a shard may hold 256 MiB: hand it out in slices
                part = slice(s, s + step)
                yield self._batch(ids[part], tokens[part], acts[part].float(), by[part].float())


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
        sinks_of: str | None = None,
    ) -> None:
        """`sinks_of`: the site whose massive activations mark sinks (default `site`); both
        are read in the same forward pass."""
        self.sinks_of = sinks_of or site
        model.expand_sites([site, self.sinks_of])
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
            read = self.model.run(tokens, read=[self.site, self.sinks_of], logits=False).acts
            ids = torch.arange(start, start + len(batch))
            start += len(batch)
            acts, by = (read[s].to("cpu", torch.float32) for s in (self.site, self.sinks_of))
            yield self._batch(ids, tokens, acts, by)


class RereadContexts(ContextSource):
    """The contexts of another source, each batch's tokens read again through the model at
    `site`; ids and sinks are the other source's."""

    def __init__(self, base: ContextSource, model: Model, site: str) -> None:
        model.expand_sites([site])
        self.base, self.model, self.site = base, model, site
        self.ctx_len, self.n_contexts = base.ctx_len, base.n_contexts
        self.special, self.exclude_sinks = base.special, base.exclude_sinks

    def __iter__(self) -> Iterator[ContextBatch]:
        for b in self.base:
            acts = self.model.run(b.tokens, read=[self.site], logits=False).acts[self.site]
            yield ContextBatch(b.ids, b.tokens, acts.to("cpu", torch.float32), b.sink)


def at_site(source: ContextSource, model: Model, site: str) -> ContextSource:
    """The contexts of `source` with the activations of `site`, and the sinks of `source`'s own
    site: from the same store where it holds `site`, else in the same forward pass as the
    corpus, else (any other source) read again through `model`."""
    if site == source.site:
        return source
    if isinstance(source, StoreContexts) and site in source.store.sites:
        return StoreContexts(
            source.store,
            site,
            source.batch_contexts,
            exclude_sinks=source.exclude_sinks,
            sinks_of=source.sinks_of,
        )
    if isinstance(source, ModelContexts):
        return ModelContexts(
            source.model,
            source.corpus,
            site,
            source.batch_size,
            exclude_sinks=source.exclude_sinks,
            sinks_of=source.sinks_of,
        )
    return RereadContexts(source, model, site)
