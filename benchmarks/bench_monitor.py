"""Overhead of monitoring during generation: tokens/s of plain vs monitored greedy generation.

SmolLM2-135M-Instruct, greedy, `--prompts` prompts × `--tokens` new tokens in one batch. Settings:
- plain: `aimri.steer.generate`;
- probes: `monitored_generate` with 6 probe directions at `blocks.{layer}.hook_resid_post`;
- probes+sae: the same 6 plus a TopK SAE (width 4 × 576 = 2,304, k = 32) at that site watching
  16 features. The SAE is a random init built with `aimri.dicts` (its encode costs the same as
  a trained one's); the directions are random unit vectors.
Each watch's threshold is its 99th-percentile score over the prompts' own tokens (one plain
forward pass), so alerts fire (the alert path is timed) but rarely. Repeats run interleaved
(plain, probes, probes+sae, plain, ...) so a shared machine's drift hits all settings alike;
medians are reported, with the ratio to plain as the median of each repeat's ratio. Tokens per
CPU-second (process time; one thread) are reported beside tokens per second: on a shared CPU
they are far less disturbed by other jobs. The monitored texts are checked against plain ones.
Run: `python benchmarks/bench_monitor.py [--prompts 8] [--tokens 64] [--repeats 3]
[--layer 15] [--device cpu] [--threads 1] [--out results.json]`. One thread by default: on a
shared 2-core machine two threads oversubscribe the cores and decoding slows about tenfold.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from aimri._io import write_json_atomic
from aimri.config import DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.model.load import load_model
from aimri.steer.edits import feature_activation
from aimri.steer.generate import generate, prompt_ids, right_pad
from aimri.steer.monitor import Watch, monitored_generate

PROMPTS = [  # continuations (the instruct model ends a bare question at once); all reach 64 tokens
    "The lighthouse keeper walked down to the shore and found",
    "Once upon a time, in a small village by the sea,",
    "The main causes of the French Revolution were",
    "To learn the guitar, the first thing you should do is",
    "The water cycle begins when the sun",
    "Here is a list of the ten largest cities in Europe:",
    "Dear colleague, I would be grateful if you could",
    "A healthy breakfast for a busy morning can include",
]


def thresholds(model, site: str, watches_of, prompts: list[str]) -> list[float]:
    """Each score column's 99th percentile over the prompts' tokens (BOS and padding excluded)."""
    ids = [prompt_ids(model, p) for p in prompts]
    padded = right_pad(ids)
    acts = model.run(padded.ids.to(model.device), read=[site], logits=False).acts[site]
    keep = padded.mask.bool().clone()
    keep[:, 0] = False
    x = acts[keep.to(acts.device)].float()  # [tokens, d]
    return [float(torch.quantile(s, 0.99)) for s in watches_of(x)]


def build_watches(model, layer: int, seed: int) -> dict[str, list[Watch]]:
    site, d = f"blocks.{layer}.hook_resid_post", model.info.d_model
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(6, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    sae = build_dictionary(DictConfig(d_in=d, d_sae=4 * d, k=32, site=site), seed=seed)
    sae = sae.to(model.device)
    feats = torch.randperm(4 * d, generator=g)[:16].tolist()

    def scores(x: torch.Tensor) -> list[torch.Tensor]:
        out = [x @ v.to(x.device) for v in dirs]
        return out + [feature_activation(sae, x, f) for f in feats]

    thr = thresholds(model, site, scores, PROMPTS)
    probes = [Watch.of_direction(f"probe{i}", site, dirs[i], thr[i]) for i in range(6)]
    features = [
        Watch.of_feature(f"feature{f}", sae, f, max(thr[6 + j], 1e-6))  # > 0: only when active
        for j, f in enumerate(feats)
    ]
    return {"probes": probes, "probes+sae": probes + features}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m", device=args.device)
    prompts = (PROMPTS * (1 + args.prompts // len(PROMPTS)))[: args.prompts]
    settings = build_watches(model, args.layer, args.seed)
    kw = {"max_new_tokens": args.tokens, "batch_size": len(prompts)}
    load_before = os.getloadavg()

    def run(name: str):
        if name == "plain":
            return generate(model, prompts, **kw), 0
        r = monitored_generate(model, prompts, settings[name], **kw)
        return r.generations, len(r.alerts)

    names = ["plain", *settings]
    for name in names:  # warm-up: allocator, kernels, the tokenizer's caches
        run(name)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    texts: dict[str, list[str]] = {}
    alerts: dict[str, int] = {}
    new_tokens = 0
    for _ in range(args.repeats):
        for name in names:
            _sync(model)
            t0, c0 = time.perf_counter(), time.process_time()
            gens, alerts[name] = run(name)
            _sync(model)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            new_tokens = sum(len(g.new_ids) for g in gens)
            wall[name].append(new_tokens / dt)
            cpu[name].append(new_tokens / dc)
            texts[name] = [g.text for g in gens]
    info = {"model": model.info.spec, "device": args.device, "prompts": len(prompts),
            "max_new_tokens": args.tokens, "new_tokens": new_tokens, "repeats": args.repeats,
            "layer": args.layer, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.platform(), "cpus": os.cpu_count(),
            "load_before": load_before[0]}  # fmt: skip
    report(args, info, wall, cpu, texts, alerts)


def report(args, info, wall, cpu, texts, alerts) -> None:
    """Medians; ratio = the median of the per-repeat ratios to the plain run just before."""
    match = {n: texts[n] == texts["plain"] for n in texts}
    print(f"SmolLM2-135M, {info['prompts']} prompts x {args.tokens} new tokens, greedy, one "
          f"batch, {args.device}, {info['threads']} threads, median of {args.repeats}; "
          f"{info['new_tokens']} new tokens per run")  # fmt: skip
    print(f"{'setting':<12} {'tok/s':>7} {'ratio':>6} {'tok/cpu-s':>10} {'ratio':>6} "
          f"{'alerts':>6}  texts  wall tok/s per run")  # fmt: skip
    rows = {}
    for name in wall:
        r_wall = statistics.median(a / b for a, b in zip(wall[name], wall["plain"], strict=True))
        r_cpu = statistics.median(a / b for a, b in zip(cpu[name], cpu["plain"], strict=True))
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rows[name] = {"tokens_per_s": w, "ratio_to_plain": r_wall, "runs": wall[name],
                      "tokens_per_cpu_s": c, "cpu_ratio_to_plain": r_cpu, "cpu_runs": cpu[name],
                      "alerts": alerts[name], "texts_match_plain": match[name]}  # fmt: skip
        runs = " ".join(f"{r:.0f}" for r in wall[name])
        same = "same" if match[name] else "DIFFER"
        print(f"{name:<12} {w:>7.1f} {r_wall:>6.3f} {c:>10.1f} {r_cpu:>6.3f} "
              f"{alerts[name]:>6}  {same:<5}  {runs}")  # fmt: skip
    info["load_after"] = os.getloadavg()[0]
    print(f"load average before {info['load_before']:.2f}, after {info['load_after']:.2f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    if args.out:
        write_json_atomic(args.out, {**info, "settings": rows})
    if not all(match.values()):
        raise SystemExit("monitoring changed the generated text")


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
