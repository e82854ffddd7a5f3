"""`aimri collect`: stream a corpus through a model and write sites' activations to shards.

One forward pass per batch reads every requested site and stops after the last one (the LM
head is never run). Shards are written atomically and each is followed by a sidecar, so an
interrupted run resumes where it stopped, with nothing lost or duplicated. Under torchrun,
shard k is written by rank k mod world size; rank 0 writes the final manifest.
Not here: reading the store back (`reader.py`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from aimri._io import atomic_path, cleanup_temp_files, sha256_file, write_json_atomic
from aimri._version import __version__
from aimri.config import CollectConfig
from aimri.corpus.contexts import iter_contexts, special_tokens
from aimri.distributed import barrier, device_for_rank, world
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.outputs import writer_lock
from aimri.store.manifest import (
    KIND,
    MANIFEST,
    check_existing_store,
    read_sidecars,
    shard_name,
    sidecar_path,
)
from aimri.store.sinks import chunk_summary, merge_summaries, special_ids

log = logging.getLogger(__name__)
SHARD_TARGET_BYTES = 256 << 20


@dataclass(frozen=True)
class CollectResult:
    path: Path
    n_tokens: int
    n_shards: int
    resumed_shards: int
    """Shards found complete from an earlier run and not recomputed."""
    seconds: float
    tokens_per_second: float
    """Throughput of the shards computed in this run."""


def collect(cfg: CollectConfig, model: Model | None = None) -> CollectResult:
    """Collect activations as `cfg` says; reuse `model` if it is already loaded. A second
    writer of the same store (another run, another scan of the same name) is refused."""
    with writer_lock(cfg.out, what="activation store", enabled=world().rank == 0):
        return _collect(cfg, model)


def _collect(cfg: CollectConfig, model: Model | None) -> CollectResult:
    t0 = time.perf_counter()
    w = world()
    if model is None:
        model = load_model(dataclasses.replace(cfg.model, device=device_for_rank(cfg.model.device)))
    sites = model.expand_sites(cfg.sites)
    widths = {s: model.site_width(s) for s in sites}
    identity = store_identity(cfg, model, widths)
    per_shard = identity["shard_contexts"]
    if w.rank == 0:
        prepare_store(cfg.out, identity, cfg.overwrite)
    barrier()
    done = read_sidecars(cfg.out)
    dtype = getattr(torch, cfg.dtype)
    shards = _batched(iter_contexts(model.tokenizer, cfg.corpus), per_shard)
    planned = cfg.corpus.max_tokens // cfg.corpus.ctx_len * cfg.corpus.ctx_len
    bar = tqdm(
        total=planned, unit="tok", unit_scale=True, desc="collect", disable=w.rank != 0 or None
    )
    computed_tokens, compute_seconds = 0, 0.0
    special = special_ids(model.tokenizer, [identity["special_tokens"]["separator"]])
    for index, contexts in enumerate(shards):
        n_tok = len(contexts) * cfg.corpus.ctx_len
        if index % w.size != w.rank or index in done:
            bar.update(n_tok)
            continue
        t = time.perf_counter()
        tensors = _shard_tensors(model, contexts, sites, dtype, cfg.batch_size, index * per_shard)
        sinks = chunk_summary(
            tensors["tokens"].long(), tensors["positions"], {s: tensors[s] for s in sites}, special
        )
        write_shard(cfg.out, index, tensors, n_tok, extra={"sinks": sinks})
        compute_seconds += time.perf_counter() - t
        computed_tokens += n_tok
        bar.update(n_tok)
        bar.set_postfix(shard=index)
    bar.close()
    barrier()
    records = read_sidecars(cfg.out, verify=False)  # this run's own shards, just written
    if w.rank == 0:
        write_manifest(cfg.out, identity, records)
    barrier()
    return CollectResult(
        path=cfg.out,
        n_tokens=sum(r["n_tokens"] for r in records.values()),
        n_shards=len(records),
        resumed_shards=len(done),
        seconds=time.perf_counter() - t0,
        tokens_per_second=computed_tokens / compute_seconds if compute_seconds else 0.0,
    )


def store_identity(cfg: CollectConfig, model: Model, widths: dict[str, int]) -> dict[str, Any]:
    """Everything that determines the stored numbers; a resumed run must match it exactly."""
    corpus = dataclasses.asdict(cfg.corpus)
    if cfg.corpus.source == "pydoc":  # the Python docs corpus is read from this Python
        corpus["python"] = platform.python_version()
    special = special_tokens(model.tokenizer, cfg.corpus.prepend_bos)
    return {
        "model": {**dataclasses.asdict(model.info), "weights_sha256": model.weights_sha256},
        "sites": widths,
        "dtype": cfg.dtype,
        "ctx_len": cfg.corpus.ctx_len,
        "corpus": corpus,
        "special_tokens": dataclasses.asdict(special),
        "shard_contexts": _shard_contexts(cfg, widths),
    }


def _shard_contexts(cfg: CollectConfig, widths: dict[str, int]) -> int:
    if cfg.shard_contexts is not None:
        return cfg.shard_contexts
    bytes_per_context = (
        cfg.corpus.ctx_len * sum(widths.values()) * torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    )
    return max(1, SHARD_TARGET_BYTES // bytes_per_context)


def prepare_store(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Create the store, or check that an existing one was made with the same identity."""
    check_existing_store(out, identity, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    cleanup_temp_files(out)
    if not (out / MANIFEST).is_file():
        write_json_atomic(out / MANIFEST, _manifest(identity, {}, complete=False))


def _batched(contexts: Iterator[torch.Tensor], n: int) -> Iterator[list[torch.Tensor]]:
    while chunk := list(itertools.islice(contexts, n)):
        yield chunk


def _shard_tensors(
    model: Model,
    contexts: list[torch.Tensor],
    sites: list[str],
    dtype: torch.dtype,
    batch_size: int,
    first_context: int,
) -> dict[str, torch.Tensor]:
    """Run the shard's contexts in batches; return flat [n_tokens, width] per site + tokens."""
    tokens = torch.stack(contexts)  # [n_ctx, ctx_len]
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for batch in tokens.split(batch_size):
        acts = model.run(batch, read=sites, logits=False).acts
        for s in sites:
            parts[s].append(acts[s].reshape(-1, acts[s].shape[-1]).to("cpu", dtype))
    n_ctx, ctx_len = tokens.shape
    out = {s: torch.cat(p) for s, p in parts.items()}
    out["tokens"] = tokens.reshape(-1).to(torch.int32)
    out["positions"] = torch.arange(ctx_len, dtype=torch.int32).repeat(n_ctx)
    out["context_ids"] = torch.arange(first_context, first_context + n_ctx).repeat_interleave(
        ctx_len
    )
    return out


def write_shard(
    store: Path,
    index: int,
    tensors: dict[str, torch.Tensor],
    n_tokens: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write one shard atomically, then its sidecar (which marks it complete); `extra` goes
    into the sidecar too (e.g. the shard's sink summary)."""
    path = store / shard_name(index)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": KIND})
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    record = {
        "index": index,
        "file": path.name,
        "n_tokens": n_tokens,
        "bytes": size,
        "sha256": digest,
        "rank": world().rank,
        **(extra or {}),
    }
    write_json_atomic(sidecar_path(store, index), record)


def _manifest(
    identity: dict[str, Any], records: dict[int, dict[str, Any]], complete: bool
) -> dict[str, Any]:
    shards = [records[i] for i in sorted(records)]
    sinks = [r["sinks"] for r in shards if "sinks" in r]
    return {
        "kind": KIND,
        "aimri_version": __version__,
        "complete": complete,
        "identity": identity,
        "n_tokens": sum(r["n_tokens"] for r in shards),
        "shards": [{k: r[k] for k in ("file", "n_tokens", "bytes", "sha256")} for r in shards],
        "sinks": merge_summaries(sinks) if sinks and len(sinks) == len(shards) else None,
    }


def write_manifest(out: Path, identity: dict[str, Any], records: dict[int, dict[str, Any]]) -> None:
    expected = sorted(records)
    if expected != list(range(len(expected))):
        missing = sorted(set(range(max(expected) + 1)) - set(expected))
        raise AimriError(
            f"activation store '{out}' is missing shards {missing[:10]}: a rank failed; run the "
            "same command again to fill them in"
        )
    write_json_atomic(out / MANIFEST, _manifest(identity, records, complete=True))
