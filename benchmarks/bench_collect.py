"""Activation collection throughput against a bare forward pass, on the built-in model.

Same model, same contexts, same batch size, same process:
  bare_full   the transformers model's forward (with LM head), no hooks, inference mode
  bare_body   the decoder body only (no LM head), no hooks, inference mode
  aimri       `aimri.collect`: read every requested site, stop after the last one, convert,
              write shards with checksums to disk
  transformer_lens  TransformerLens `run_with_cache(names_filter=...)` on the same weights, if
              installed (it comes with the dev extra's sae-lens); the cache stays in memory
Prints tokens/s and the ratios aimri/bare. Target (foundation issue): aimri >= 0.9 x bare_full.
Run: `python benchmarks/bench_collect.py [--tokens 16384] [--sites 'blocks.*.hook_resid_post']`.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

import aimri
from aimri.corpus.contexts import take_contexts


def bare(model: aimri.Model, contexts: torch.Tensor, batch: int, body_only: bool) -> float:
    module = model.hf.base_model if body_only else model.hf
    t = time.perf_counter()
    with torch.inference_mode():
        for x in contexts.split(batch):
            module(input_ids=x.to(model.device), use_cache=False)
    return contexts.numel() / (time.perf_counter() - t)


def transformer_lens(
    model: aimri.Model, contexts: torch.Tensor, batch: int, sites: list[str]
) -> float | None:
    """TransformerLens `run_with_cache` with a names filter, on the same weights (if installed)."""
    try:
        import transformer_lens.loading_from_pretrained as loading  # type: ignore[import-not-found]
        from transformer_lens import HookedTransformer  # type: ignore[import-not-found]
    except ImportError:
        return None
    local = model.hf.config._name_or_path  # the local HF folder aimri loaded (or cached)
    cfg = loading.get_pretrained_model_config(local, device="cpu", dtype=torch.float32)
    state = loading.get_pretrained_state_dict(local, cfg, model.hf)
    tl = HookedTransformer(cfg, model.tokenizer)
    tl.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False
    )
    names = set(sites)
    tl.run_with_cache(
        contexts[:batch], names_filter=lambda n: n in names, return_type=None
    )  # warm-up
    t = time.perf_counter()
    with torch.inference_mode():
        for x in contexts.split(batch):
            tl.run_with_cache(x, names_filter=lambda n: n in names, return_type=None)
    return contexts.numel() / (time.perf_counter() - t)


def ours(model: aimri.Model, corpus: aimri.CorpusConfig, sites: list[str], batch: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = aimri.CollectConfig(
            out=Path(d) / "store", corpus=corpus, sites=tuple(sites), batch_size=batch
        )
        return aimri.collect(cfg, model=model).tokens_per_second


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sites", nargs="+", default=["blocks.*.hook_resid_post"])
    args = ap.parse_args()

    model = aimri.load_model(args.model)
    corpus = aimri.CorpusConfig(max_tokens=args.tokens, ctx_len=args.ctx_len)
    contexts = take_contexts(model.tokenizer, corpus)
    bare(model, contexts[: args.batch], args.batch, body_only=False)  # warm-up
    sites = model.expand_sites(args.sites)
    rows = {
        "bare_full": bare(model, contexts, args.batch, body_only=False),
        "bare_body": bare(model, contexts, args.batch, body_only=True),
        "aimri": ours(model, corpus, sites, args.batch),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = transformer_lens(model, contexts, args.batch, sites)
    if peer is not None:
        rows["transformer_lens"] = peer
    print(
        f"# {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · threads {torch.get_num_threads()}"
    )
    print(
        f"# model {args.model} · {contexts.numel():,} tokens · batch {args.batch}x{args.ctx_len} · {len(sites)} sites: {args.sites}"
    )
    for name, tps in rows.items():
        print(f"{name:<10} {tps:>10,.0f} tokens/s")
    print(f"ratio aimri/bare_full = {rows['aimri'] / rows['bare_full']:.2f} (target >= 0.90)")
    print(f"ratio aimri/bare_body = {rows['aimri'] / rows['bare_body']:.2f}")
    if "transformer_lens" in rows:
        print(
            f"ratio aimri/transformer_lens = {rows['aimri'] / rows['transformer_lens']:.2f} (TL keeps the cache in memory, aimri writes it to disk)"
        )
    else:
        print("transformer_lens: not installed (pip install transformer-lens to include it)")


if __name__ == "__main__":
    main()
