"""The scan's read at bf16 against float32: throughput, and agreement of activations and logits.

Same model weights, same contexts (the built-in chat corpus), same batch size, same process:
  fp32        the model as loaded (float32), reading the scan's sites
  bf16        `Model.at_dtype(torch.bfloat16)`, the precision `--read-dtype auto` picks on a
              CPU with AVX-512 BF16 / AMX
  fp32+autocast  float32 weights under `torch.autocast("cpu", torch.bfloat16)`
Agreement, per site and for the logits, on the same tokens (sinks and specials left out of the
activation figures, as in training): FVU of the low-precision activations against float32
(1 - R²), and the logits' KL(fp32 ‖ low) and top-1 agreement.
Run: `python benchmarks/bench_read.py [--tokens 8192] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch

import aimri
from aimri.config import CorpusConfig
from aimri.corpus.contexts import special_tokens, take_contexts
from aimri.store.sinks import find_sinks, special_ids

SITES = ["blocks.15.hook_resid_post", "blocks.29.hook_resid_post", "blocks.*.ln2.hook_normalized"]


def timed_read(model: aimri.Model, ctx: torch.Tensor, sites: list[str], batch: int, autocast: bool):
    acts: dict[str, list[torch.Tensor]] = {}
    t = time.perf_counter()
    guard = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), guard:
        for x in ctx.split(batch):
            out = model.run(x, read=sites, logits=False).acts
            for s, a in out.items():
                acts.setdefault(s, []).append(a.float().reshape(-1, a.shape[-1]))
    seconds = time.perf_counter() - t
    return ctx.numel() / seconds, {s: torch.cat(v) for s, v in acts.items()}


def logits(model: aimri.Model, ctx: torch.Tensor, batch: int, autocast: bool) -> torch.Tensor:
    guard = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.inference_mode(), guard:
        out = [model.run(x).logits for x in ctx.split(batch)]
    return torch.cat([o.float() for o in out if o is not None])


def fvu(low: torch.Tensor, ref: torch.Tensor) -> float:
    return float((low - ref).pow(2).sum() / (ref - ref.mean(0)).pow(2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = aimri.load_model("smollm2-135m", device="cpu")
    bf16 = fp32.at_dtype(torch.bfloat16)
    corpus = CorpusConfig(max_tokens=args.tokens, seed=7)
    ctx = take_contexts(fp32.tokenizer, corpus)
    sites = fp32.expand_sites(SITES)
    special = special_ids(fp32.tokenizer, [special_tokens(fp32.tokenizer, True).separator])
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {ctx.numel()} tokens, batch {args.batch}, {len(sites)} sites"
    )
    timed_read(bf16, ctx[: args.batch], sites, args.batch, False)  # warm-up
    runs = {
        "fp32": timed_read(fp32, ctx, sites, args.batch, False),
        "bf16": timed_read(bf16, ctx, sites, args.batch, False),
        "fp32+autocast": timed_read(fp32, ctx, sites, args.batch, True),
    }
    ref_tps, ref = runs["fp32"]
    tokens = ctx.reshape(-1)
    positions = torch.arange(ctx.shape[1]).repeat(ctx.shape[0])
    keep = ~find_sinks(tokens, positions, [ref["blocks.15.hook_resid_post"]], special).sink
    ref_logits = logits(fp32, ctx[:8], args.batch, False).log_softmax(-1)
    print(
        f"{'read':14} {'tok/s':>8} {'× fp32':>7} {'FVU max':>9} {'FVU L15':>9} {'KL':>8} {'top-1':>6}"
    )
    for name, (tps, acts) in runs.items():
        per_site = [fvu(acts[s][keep], ref[s][keep]) for s in sites]
        low = (
            ref_logits
            if name == "fp32"
            else logits(
                bf16 if name == "bf16" else fp32, ctx[:8], args.batch, name != "bf16"
            ).log_softmax(-1)
        )
        kl = float((ref_logits.exp() * (ref_logits - low)).sum(-1).mean())
        top1 = float((ref_logits.argmax(-1) == low.argmax(-1)).float().mean())
        l15 = fvu(acts["blocks.15.hook_resid_post"][keep], ref["blocks.15.hook_resid_post"][keep])
        print(
            f"{name:14} {tps:8.0f} {tps / ref_tps:7.2f} {max(per_site):9.5f} {l15:9.5f} "
            f"{kl:8.5f} {top1:6.3f}"
        )


if __name__ == "__main__":
    main()
