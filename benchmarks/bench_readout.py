"""The readout: FVU, the spliced model's cost and the interpretable fraction of a scan's SAE, on
the text it trained on (dev: the built-in corpus), on the built-in held-out split (other topics,
other wording, another seed) and on outside prose the project never used (`--outside FILE`, a
.txt/.jsonl file; e.g. the 300 news articles of gensim's `lee_background.cor`, one per line).

For a scan's run directory: the scan's SAE is evaluated (FVU, spliced CE and KL) and its
features, the site's residual coordinates ("neurons"), random directions and a random sparse
dictionary of the same width and k (untrained TopK) are described, labelled by the `tokens`
explainer and scored by simulation; sinks are left out (`--sinks-in` adds the run with them
kept in). Prints one table; nothing is written into the run.

Run: `python benchmarks/bench_readout.py --run runs/<name> [--tokens 32768] [--threads 2]
[--split all|dev|held-out|outside] [--outside FILE]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from aimri.config import CorpusConfig, EvalConfig, FeaturesConfig, ModelConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary, save_dictionary
from aimri.features.pipeline import describe
from aimri.model.load import load_model

SPLITS = {
    "dev (the scan's text)": ("builtin", 0),
    "held-out (builtin-held-out)": ("builtin-held-out", 0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a scan's run directory")
    p.add_argument("--tokens", type=int, default=32_768, help="tokens per split for features")
    p.add_argument("--features", type=int, default=256, help="dictionary features sampled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", choices=("all", "dev", "held-out", "outside"), default="all")
    p.add_argument("--outside", type=Path, help="outside prose (.txt paragraphs or .jsonl)")
    p.add_argument("--sinks-in", action="store_true", help="also measure with sinks kept in")
    args = p.parse_args()
    splits = dict(SPLITS)
    if args.outside:
        splits[f"outside ({args.outside.name})"] = (str(args.outside), 0)
    torch.set_num_threads(args.threads)
    run = json.loads((args.run / "run.json").read_text())  # written when the scan starts
    dict_path = next((args.run / "dicts").glob("*/cfg.json")).parent
    d_sae = load_dictionary(dict_path).cfg.d_sae
    model = load_model(ModelConfig(spec=run["config"]["model"]["spec"], device="cpu"))
    sample = torch.randperm(d_sae, generator=torch.Generator().manual_seed(0))[: args.features]
    rows = []
    for split, (source, seed) in splits.items():
        if args.split != "all" and not split.startswith(args.split):
            continue
        for exclude in (True, False) if args.sinks_in else (True,):
            rows += _one(
                model, dict_path, sample.sort().values.tolist(), split, source, seed, exclude, args
            )
    print(f"{'split':<38} {'sinks':<5} {'measure':<28} {'value':>26}")
    for r in rows:
        print(f"{r[0]:<38} {r[1]:<5} {r[2]:<28} {r[3]:>26}")


def _one(
    model, dict_path, sample, split, source, seed, exclude, args
) -> list[tuple[str, str, str, str]]:
    t0 = time.perf_counter()
    sinks = "out" if exclude else "in"
    corpus = CorpusConfig(source=source, max_tokens=8192, seed=seed + 1)
    ev = evaluate(
        EvalConfig(dictionary=Path(tempfile.mkdtemp()) / "x", corpus=corpus, exclude_sinks=exclude),
        model=model,
        dictionary=load_dictionary(dict_path),
    )
    m = ev.metrics
    out = [
        (split, sinks, "FVU (SAE)", f"{m['reconstruction_quality']['fvu']:.3f}"),
        (split, sinks, "FVU (PCA, same L0)", f"{ev.baselines['pca']['reconstruction_quality']['fvu']:.3f}"),
        (split, sinks, "CE increase, nats (SAE)", f"{m['model_performance_preservation']['ce_loss_with_sae'] - m['model_performance_preservation']['ce_loss_without_sae']:.3f}"),
        (split, sinks, "KL spliced (SAE)", f"{m['model_behavior_preservation']['kl_div_with_sae']:.3f}"),
    ]  # fmt: skip
    random_dict = Path(tempfile.mkdtemp()) / "random-sparse"
    save_dictionary(build_dictionary(load_dictionary(dict_path).cfg, seed=1), random_dict)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FeaturesConfig(
            dictionary=dict_path,
            out=Path(tmp) / "c.sqlite",
            corpus=CorpusConfig(source=source, max_tokens=args.tokens, seed=seed),
            explainers=("tokens",),
            scorers=("simulation",),
            n_baseline=64,
            exclude_sinks=exclude,
        )
        r = describe(cfg, model=model, features=sample)
        rand = describe(
            dataclasses.replace(
                cfg, dictionary=random_dict, out=Path(tmp) / "r.sqlite", baselines=False
            ),
            model=model,
            features=sample,
        )
    for row in [*r.summary, *(x for x in rand.summary if x.basis.startswith("sae"))]:
        kind = row.basis.split(" ")[0]
        if row in rand.summary:
            kind = "random sparse dictionary (same width, k)"
        out.append(
            (split, sinks, f"simulation r≥0.5: {kind}",
             f"{row.frac_above:.0%} [{row.ci_low:.0%}-{row.ci_high:.0%}] r̄={row.mean:.2f} shuf {row.frac_above_baseline:.0%}")
        )  # fmt: skip
    print(f"# {split}, sinks {sinks}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
