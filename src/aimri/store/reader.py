"""Read activations back: from a store on disk, or on the fly from a model (no disk).

Both give shuffled training batches through the same bounded mixing buffer: shards (or
forward-pass chunks) stream in, the buffer is permuted, and half of it is served as batches.
Memory stays at about `buffer_tokens` rows whatever the store's size.
Not here: writing (`collect.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor

from aimri._io import sha256_file
from aimri.config import CorpusConfig
from aimri.corpus.contexts import iter_contexts, special_tokens
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.store.manifest import read_manifest
from aimri.store.sinks import find_sinks, special_ids

DEFAULT_BUFFER_TOKENS = 1 << 18


class Pair(NamedTuple):
    x: Tensor
    """[batch, width_in] the input site."""
    y: Tensor
    """[batch, width_out] the target site, same tokens."""


class BatchSource(ABC):
    """Anything that yields a site's activations in chunks: a store on disk, or a model on the
    fly. Training reads through this interface, shuffled by the same bounded mixing buffer."""

    @property
    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """At least `sites` (site -> width) and `ctx_len`."""

    @property
    @abstractmethod
    def n_tokens(self) -> int: ...

    @abstractmethod
    def _chunks(
        self, sites: list[str], g: torch.Generator | None, exclude_sinks: bool
    ) -> Iterator[Tensor]:
        """[n, Σ widths] chunks with the sites side by side; seeded order when g is given."""

    def width(self, site: str) -> int:
        if site not in self.identity["sites"]:
            raise AimriError(
                f"site '{site}' is not in {self} (it holds: {', '.join(self.identity['sites'])}); "
                f"collect it with `aimri collect --sites {site}`"
            )
        return int(self.identity["sites"][site])

    def batches(
        self,
        site: str,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        exclude_sinks: bool = False,
    ) -> Iterator[Tensor]:
        """Training batches [batch_size, width] of one site; the last partial batch is dropped.

        `exclude_sinks` leaves out attention sinks and massive activations (`sinks.py`): position
        0, special tokens, and tokens whose norm dwarfs the rest.
        """
        g = torch.Generator().manual_seed(seed)
        chunks = self._chunks([site], g if shuffle else None, exclude_sinks)
        return mix(chunks, batch_size, g if shuffle else None, buffer_tokens)

    def paired_batches(
        self,
        site_in: str,
        site_out: str,
        batch_size: int,
        *,
        seed: int = 0,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        exclude_sinks: bool = False,
    ) -> Iterator[Pair]:
        """Shuffled batches of two sites at the same tokens (a transcoder's input and target)."""
        joint = self.joint_batches(
            [site_in, site_out],
            batch_size,
            seed=seed,
            buffer_tokens=buffer_tokens,
            exclude_sinks=exclude_sinks,
        )
        return (Pair(x, y) for x, y in joint)

    def joint_batches(
        self,
        sites: list[str],
        batch_size: int,
        *,
        seed: int = 0,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        exclude_sinks: bool = False,
    ) -> Iterator[list[Tensor]]:
        """Shuffled batches of several sites at the same tokens, one tensor per site. Row order
        is that of `batches(site, ...)` with the same seed, whichever sites ride along."""
        g = torch.Generator().manual_seed(seed)
        widths = [self.width(s) for s in sites]
        for joint in mix(self._chunks(sites, g, exclude_sinks), batch_size, g, buffer_tokens):
            yield list(joint.split(widths, dim=-1))


class ActivationStore(BatchSource):
    """A complete store on disk. Shards are checked against their sha256 when first opened."""

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        if not self.manifest.get("complete"):
            raise AimriError(
                f"activation store '{self.path}' is incomplete (its collection was interrupted): "
                "run the same `aimri collect` command again to finish it"
            )
        self.verify = verify
        self._verified: set[str] = set()

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["identity"]

    @property
    def sites(self) -> list[str]:
        return list(self.identity["sites"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def load(self, name: str, shard: int) -> Tensor:
        """One tensor of one shard: a site [n_tokens, width], or tokens/positions/context_ids."""
        if name not in ("tokens", "positions", "context_ids"):
            self._check_site(name)
        path = self._shard_path(shard)
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    def tokens(self) -> Tensor:
        """All token ids, [n_tokens] int32, in store order."""
        return torch.cat([self.load("tokens", i) for i in range(self.n_shards)])

    def iter_shards(self, site: str) -> Iterator[Tensor]:
        """The site's activations shard by shard, in order."""
        for i in range(self.n_shards):
            yield self.load(site, i)

    def _chunks(
        self, sites: list[str], g: torch.Generator | None, exclude_sinks: bool
    ) -> Iterator[Tensor]:
        """Shards in a seeded order (or in order), the sites side by side: [n, Σ widths]."""
        for site in sites:
            self._check_site(site)
        order = (
            torch.randperm(self.n_shards, generator=g).tolist()
            if g is not None
            else range(self.n_shards)
        )
        for i in order:
            parts = [self.load(s, i) for s in sites]
            x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            if exclude_sinks:
                tokens, positions = self.load("tokens", i).long(), self.load("positions", i)
                x = x[~find_sinks(tokens, positions, parts, self.special_ids).sink]
            yield x

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Token ids that are always sinks: recorded at collection, else BOS and separator."""
        sinks = self.manifest.get("sinks") or {}
        if "special_ids" in sinks:
            return tuple(int(i) for i in sinks["special_ids"])
        special = self.identity.get("special_tokens") or {}
        return tuple(int(v) for v in special.values() if v is not None)

    def _check_site(self, site: str) -> str:
        self.width(site)
        return site

    def __str__(self) -> str:
        return f"activation store '{self.path}'"

    def _shard_path(self, shard: int) -> Path:
        record = self.manifest["shards"][shard]
        path = self.path / record["file"]
        if not path.is_file():
            raise AimriError(f"shard '{path}' is missing: re-run the `aimri collect` that made it")
        if self.verify and record["file"] not in self._verified:
            actual = sha256_file(path)
            if actual != record["sha256"]:
                raise AimriError(
                    f"shard '{path}' is corrupt: its sha256 is {actual[:12]}…, the manifest says "
                    f"{record['sha256'][:12]}…; delete the shard and its .json sidecar and run "
                    "the same `aimri collect` command again to re-create it"
                )
            self._verified.add(record["file"])
        return path


class ActivationStream(BatchSource):
    """Activations made on the fly by a model over a corpus, no disk. Deterministic: a resumed
    training run replays the stream from its start."""

    def __init__(
        self, model: Model, corpus: CorpusConfig, sites: Sequence[str], *, forward_batch: int = 16
    ) -> None:
        self.model = model
        self.corpus = corpus
        self.sites = model.expand_sites(sites)
        self.forward_batch = forward_batch
        self.special = special_ids(
            model.tokenizer, [special_tokens(model.tokenizer, corpus.prepend_bos).separator]
        )

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "sites": {s: self.model.site_width(s) for s in self.sites},
            "ctx_len": self.corpus.ctx_len,
        }

    @property
    def n_tokens(self) -> int:
        return self.corpus.max_tokens // self.corpus.ctx_len * self.corpus.ctx_len

    def _chunks(
        self, sites: list[str], g: torch.Generator | None, exclude_sinks: bool
    ) -> Iterator[Tensor]:
        for site in sites:
            self.width(site)
        for tokens, acts in forward_batches(
            self.model, self.corpus, sites, batch_size=self.forward_batch
        ):
            parts = [acts[s].to("cpu", torch.float32) for s in sites]
            x = torch.cat(parts, dim=-1)
            if exclude_sinks:
                positions = torch.arange(len(x)) % self.corpus.ctx_len
                x = x[~find_sinks(tokens, positions, parts, self.special).sink]
            yield x

    def __str__(self) -> str:
        return f"the activation stream of '{self.model.info.spec}'"


class ForwardBatch(NamedTuple):
    tokens: Tensor
    """[batch*ctx_len] token ids (CPU)."""
    acts: dict[str, Tensor]
    """site -> [batch*ctx_len, width] (model dtype and device)."""


def forward_batches(
    model: Model, corpus: CorpusConfig, sites: Sequence[str], *, batch_size: int = 16
) -> Iterator[ForwardBatch]:
    """On the fly, no disk: the corpus through the model, one forward batch at a time."""
    names = model.expand_sites(sites)
    contexts = iter_contexts(model.tokenizer, corpus)
    while batch := [c for _, c in zip(range(batch_size), contexts, strict=False)]:
        ids = torch.stack(batch)
        acts = model.run(ids, read=names, logits=False).acts
        yield ForwardBatch(
            ids.reshape(-1), {s: a.reshape(-1, a.shape[-1]) for s, a in acts.items()}
        )


def stream_activations(
    model: Model, corpus: CorpusConfig, sites: Sequence[str], *, batch_size: int = 16
) -> Iterator[dict[str, Tensor]]:
    """On the fly, no disk: per forward batch, site -> [batch*ctx_len, width] (model dtype)."""
    for b in forward_batches(model, corpus, sites, batch_size=batch_size):
        yield b.acts


def stream_batches(
    model: Model,
    corpus: CorpusConfig,
    site: str,
    batch_size: int,
    *,
    seed: int = 0,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    forward_batch: int = 16,
) -> Iterator[Tensor]:
    """On the fly, no disk: shuffled training batches [batch_size, width] of one site, through
    the same bounded mixing buffer as `ActivationStore.batches`."""
    chunks = (
        acts[site] for acts in stream_activations(model, corpus, [site], batch_size=forward_batch)
    )
    return mix(chunks, batch_size, torch.Generator().manual_seed(seed), buffer_tokens)


class Mixer:
    """Fixed-size batches from pushed [n, width] chunks, shuffled at token level through a
    buffer of about `buffer_tokens` rows when a generator is given (push-based: the shared
    read hands chunks over; `mix` pulls them)."""

    def __init__(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    ) -> None:
        self.batch_size = batch_size
        self.generator = generator
        self.buffer_tokens = max(buffer_tokens, 2 * batch_size)
        self.buf: Tensor | None = None

    def push(self, chunk: Tensor) -> Iterator[Tensor]:
        self.buf = chunk if self.buf is None else torch.cat([self.buf, chunk])
        while len(self.buf) >= self.buffer_tokens:
            self._shuffle()
            n_out = (len(self.buf) // 2) // self.batch_size * self.batch_size
            yield from self.buf[:n_out].split(self.batch_size)
            self.buf = self.buf[n_out:]

    def flush(self) -> Iterator[Tensor]:
        if self.buf is None:
            return
        self._shuffle()
        n_out = len(self.buf) // self.batch_size * self.batch_size
        yield from self.buf[:n_out].split(self.batch_size)
        self.buf = None

    def _shuffle(self) -> None:
        if self.generator is not None and self.buf is not None:
            self.buf = self.buf[torch.randperm(len(self.buf), generator=self.generator)]


def mix(
    chunks: Iterator[Tensor],
    batch_size: int,
    generator: torch.Generator | None,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
) -> Iterator[Tensor]:
    """Serve fixed-size batches from a stream of [n, width] chunks; shuffle at token level
    through a buffer of about `buffer_tokens` rows when a generator is given."""
    mixer = Mixer(batch_size, generator, buffer_tokens)
    for chunk in chunks:
        yield from mixer.push(chunk)
    yield from mixer.flush()
