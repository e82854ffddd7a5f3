"""The readout with attention sinks in and out: FVU and the interpretable fraction, on the text
the scan trained on (dev split) and on documents it never saw (held-out split, another seed).

For a scan's run directory: the scan's SAE is evaluated (FVU, spliced CE) and its features, the
site's neurons and random directions are described, labelled by the `tokens` explainer and
scored by simulation, once with sinks excluded (the default) and once with them kept in (only
position 0 out, as before). Prints one table; nothing is written into the run.

Run: `python benchmarks/bench_readout.py --run runs/<name> [--tokens 32768] [--threads 2]
[--split both|dev|held-out]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from aimri.config import CorpusConfig, EvalConfig, FeaturesConfig, ModelConfig
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary
from aimri.features.pipeline import describe
from aimri.model.load import load_model

SPLITS = {"dev (the scan's text, seed 0)": 0, "held-out (seed 101, never inspected)": 101}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a scan's run directory")
    p.add_argument("--tokens", type=int, default=32_768, help="tokens per split for features")
    p.add_argument("--features", type=int, default=256, help="dictionary features sampled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", choices=("both", "dev", "held-out"), default="both")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = json.loads((args.run / "run.json").read_text())  # written when the scan starts
    dict_path = next((args.run / "dicts").glob("*/cfg.json")).parent
    d_sae = load_dictionary(dict_path).cfg.d_sae
    model = load_model(ModelConfig(spec=run["config"]["model"]["spec"], device="cpu"))
    sample = torch.randperm(d_sae, generator=torch.Generator().manual_seed(0))[: args.features]
    rows = []
    for split, seed in SPLITS.items():
        if args.split != "both" and not split.startswith(args.split):
            continue
        for exclude in (True, False):
            rows += _one(
                model, dict_path, sample.sort().values.tolist(), split, seed, exclude, args
            )
    print(f"{'split':<38} {'sinks':<5} {'measure':<28} {'value':>26}")
    for r in rows:
        print(f"{r[0]:<38} {r[1]:<5} {r[2]:<28} {r[3]:>26}")


def _one(model, dict_path, sample, split, seed, exclude, args) -> list[tuple[str, str, str, str]]:
    t0 = time.perf_counter()
    sinks = "out" if exclude else "in"
    corpus = CorpusConfig(max_tokens=8192, seed=seed + 1)
    ev = evaluate(
        EvalConfig(dictionary=Path(tempfile.mkdtemp()) / "x", corpus=corpus, exclude_sinks=exclude),
        model=model,
        dictionary=load_dictionary(dict_path),
    )
    m = ev.metrics
    out = [
        (split, sinks, "FVU (SAE)", f"{m['reconstruction_quality']['fvu']:.3f}"),
        (split, sinks, "FVU (PCA, same L0)", f"{ev.baselines['pca']['reconstruction_quality']['fvu']:.3f}"),
        (split, sinks, "CE recovered (SAE)", f"{m['model_performance_preservation']['ce_loss_score']:.3f}"),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FeaturesConfig(
            dictionary=dict_path,
            out=Path(tmp) / "c.sqlite",
            corpus=CorpusConfig(max_tokens=args.tokens, seed=seed),
            explainers=("tokens",),
            scorers=("simulation",),
            n_baseline=64,
            exclude_sinks=exclude,
        )
        r = describe(cfg, model=model, features=sample)
    for row in r.summary:
        kind = row.basis.split(" ")[0]
        out.append(
            (split, sinks, f"simulation r≥0.5: {kind}",
             f"{row.frac_above:.0%} [{row.ci_low:.0%}-{row.ci_high:.0%}] r̄={row.mean:.2f} shuf {row.frac_above_baseline:.0%}")
        )  # fmt: skip
    print(f"# {split}, sinks {sinks}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
