"""Tokens → quality for the scan's SAE: several SAEs trained in ONE read of the built-in corpus
(each its own token budget and settings, stepped as the batches stream past), each evaluated
on the held-out split (other topics, other wording): FVU on ordinary tokens, the spliced
model's CE increase and KL, dead latents, and the interpretable fraction (the `tokens`
explainer scored by simulation on held-out text, r ≥ 0.5) beside a random sparse dictionary of
the same width and k. Writes a JSON of the rows and an SVG plot of the curve.

Run: `python benchmarks/bench_tokens.py --out /tmp/curve [--budgets 32768 81920 163840 262144]
[--variants] [--features 128] [--threads 2]`. `--variants` adds, at the largest budget, the
settings the choice was made between (learning rate ×2 and ×4, dead-latent revival after 32k
tokens instead of 262k); variants get no interpretable fraction (it costs a minute each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from aimri.config import CorpusConfig, EvalConfig, FeaturesConfig, OptimConfig, TrainConfig
from aimri.corpus.contexts import special_tokens
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary, save_dictionary
from aimri.dicts.train import dictionary_config_for, learning_rate
from aimri.dicts.trainer import StreamTrainer, Trainer
from aimri.features.pipeline import describe
from aimri.model.load import load_model
from aimri.model.precision import read_dtype
from aimri.store.shared_read import shared_read
from aimri.store.sinks import special_ids

SITE = "blocks.15.hook_resid_post"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", type=int, nargs="+", default=[32_768, 81_920, 163_840, 262_144])
    p.add_argument("--variants", action="store_true")
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m", device="cpu")
    reader = model.at_dtype(read_dtype("auto", model.device))
    special = special_ids(model.tokenizer, [special_tokens(model.tokenizer, True).separator])
    width = model.site_width(SITE)
    specs = [(f"{b:,} tokens", b, {}) for b in args.budgets]
    if args.variants:
        top = max(args.budgets)
        base_lr = learning_rate(TrainConfig(site=SITE, out=Path("x")), 8 * width, 10**6, 10**7)
        specs += [
            (f"{top:,}, lr x2", top, {"lr": 2 * base_lr}),
            (f"{top:,}, lr x4", top, {"lr": 4 * base_lr}),
            (f"{top:,}, lr x2, dead after 32k", top, {"lr": 2 * base_lr, "dead_after": 32_768}),
        ]
    trainers = []
    for i, (name, tokens, kw) in enumerate(specs):
        cfg = TrainConfig(
            site=SITE,
            out=args.out / f"sae-{i}",
            k=kw.get("k", 32),
            expansion=kw.get("expansion", 8),
            optim=OptimConfig(
                batch_size=1024,
                tokens=tokens * 127 // 128,
                lr=kw.get("lr"),
                dead_after_tokens=kw.get("dead_after", 262_144),
            ),
            device="cpu",
            overwrite=True,
        )
        d = dictionary_config_for(cfg, {SITE: width})
        trainers.append(
            StreamTrainer(name, Trainer([cfg], [d], cfg.optim.tokens // 1024), special, seed=0)
        )
    t = time.perf_counter()
    corpus = CorpusConfig(max_tokens=int(max(args.budgets) * 1.1))
    r = shared_read(reader, corpus, trainers, batch_size=16)
    train_s = {tr.name: tr.finish() for tr in trainers}
    print(
        f"# one read of {r.n_tokens:,} tokens ({r.dtype}) fed {len(trainers)} SAEs in "
        f"{time.perf_counter() - t:.0f} s",
        flush=True,
    )
    held_out = CorpusConfig(source="builtin-held-out", max_tokens=args.eval_tokens, seed=1)
    rows = []
    for (name, tokens, kw), tr in zip(specs, trainers, strict=True):
        rows.append(_row(model, tr.trainer.cfgs[0].out, name, tokens, kw, held_out, args))
        rows[-1]["train_seconds"] = round(train_s[name], 1)
        print(json.dumps(rows[-1]), flush=True)
    base_cfg = load_dictionary(trainers[0].trainer.cfgs[0].out).cfg
    rows.append(_random_row(model, base_cfg, held_out, args))
    print(json.dumps(rows[-1]), flush=True)
    (args.out / "curve.json").write_text(json.dumps(rows, indent=1))
    (args.out / "curve.svg").write_text(_svg([r for r in rows if not r["variant"] and r["tokens"]]))


def _row(model, path, name, tokens, kw, held_out, args) -> dict:
    ev = evaluate(EvalConfig(dictionary=path, corpus=held_out), model=model)
    m = ev.metrics
    perf = m["model_performance_preservation"]
    return {
        "name": name,
        "tokens": tokens,
        "variant": bool(kw),
        "fvu": round(m["reconstruction_quality"]["fvu"], 4),
        "ce_increase": round(perf["ce_loss_with_sae"] - perf["ce_loss_without_sae"], 4),
        "kl": round(m["model_behavior_preservation"]["kl_div_with_sae"], 4),
        "dead": round(m["misc_metrics"]["frac_dead"], 4),
        "l0": round(m["sparsity"]["l0"], 1),
        "interpretable": "" if kw else _interpretable(model, path, held_out, args),
    }


def _random_row(model, cfg, held_out, args) -> dict:
    """A random sparse dictionary of the same width and k, as built before training (random
    unit-norm decoder, encoder its transpose, zero biases): what the readout gives for free."""
    d = build_dictionary(cfg, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        save_dictionary(d, Path(tmp) / "rand")
        return {
            "name": "random sparse dictionary",
            "tokens": 0,
            "variant": True,
            "interpretable": _interpretable(model, Path(tmp) / "rand", held_out, args),
        }


def _interpretable(model, path, held_out, args) -> str:
    d_sae = load_dictionary(path).cfg.d_sae
    sample = torch.randperm(d_sae, generator=torch.Generator().manual_seed(0))[: args.features]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FeaturesConfig(
            dictionary=path,
            out=Path(tmp) / "c.sqlite",
            corpus=dataclasses.replace(held_out, max_tokens=32_768, seed=3),
            explainers=("tokens",),
            scorers=("simulation",),
            n_baseline=32,
        )
        r = describe(cfg, model=model, features=sorted(sample.tolist()))
    return "; ".join(
        f"{row.basis.split(' ')[0]} {row.frac_above:.0%} [{row.ci_low:.0%}-{row.ci_high:.0%}]"
        for row in r.summary
    )


def _svg(rows: list[dict]) -> str:
    """A small plot: held-out FVU and KL against training tokens (log x)."""
    import math

    W, H, L, B = 520, 300, 60, 40
    xs = [math.log2(r["tokens"]) for r in rows]
    x0, x1 = min(xs) - 0.3, max(xs) + 0.3
    X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)  # noqa: E731
    Y = lambda v: H - B - v / 1.0 * (H - B - 20)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">'
    ]
    parts.append(f'<line x1="{L}" y1="{H - B}" x2="{W - 10}" y2="{H - B}" stroke="#333"/>')
    parts.append(f'<line x1="{L}" y1="20" x2="{L}" y2="{H - B}" stroke="#333"/>')
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{L - 6}" y="{Y(v) + 4}" text-anchor="end">{v:g}</text>')
    for r, x in zip(rows, xs, strict=True):
        parts.append(
            f'<text x="{X(x)}" y="{H - B + 16}" text-anchor="middle">{r["tokens"] // 1024}k</text>'
        )
    for key, colour in (("fvu", "#1f77b4"), ("kl", "#d62728")):
        pts = " ".join(f"{X(x)},{Y(min(1.0, r[key]))}" for r, x in zip(rows, xs, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(
            f'<text x="{W - 12}" y="{Y(min(1.0, rows[-1][key])) - 6}" text-anchor="end" fill="{colour}">held-out {key.upper()}</text>'
        )
    parts.append(
        f'<text x="{(W + L) / 2}" y="{H - 6}" text-anchor="middle">distinct training tokens (one pass), SAE at {SITE}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


if __name__ == "__main__":
    main()
