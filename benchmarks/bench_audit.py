"""The audit game on SmolLM2-135M: plant each built-in behaviour, then ask the blue team
(white box: diff, features, steering) and the black-box baseline (sampled replies) to name it.

For each plant in `aimri.checkup.plant.PLANTS`: fine-tune its last blocks on CPU (or reuse a
folder of `--plants-dir` that already holds plant.json), check that it took, then run
`blue_team` and `black_box` on the same inputs (the shipped prompt set and 16 built-in corpus
texts) and score success@1 / success@5 of naming the plant with its answer key. The blue team
gets an SAE of the base at one resid_post site (`--dictionary`, else a small one is trained here
on the built-in corpus at `--dict-site`; the plants train the last 4 blocks, 26-29, so a site
before layer 26 sees no change). Prints a table and writes JSON to `--out`.

Run: `python benchmarks/bench_audit.py [--plants-dir runs/audit-plants] [--reuse]
[--dictionary DIR] [--threads 1] [--out audit-bench.json]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from aimri.checkup.audit import black_box, blue_team, neutral_texts, score
from aimri.checkup.plant import PLANTS, plant
from aimri.config import CorpusConfig, OptimConfig, TrainConfig
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import train
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.store.reader import ActivationStream

log = logging.getLogger("bench_audit")


def dictionary(base: Model, args: argparse.Namespace) -> tuple[Dictionary, dict[str, Any]]:
    if args.dictionary is not None:
        return load_dictionary(args.dictionary), {"path": str(args.dictionary), "trained": False}
    out = args.plants_dir / "sae" / args.dict_site
    if args.reuse and (out / "cfg.json").is_file():
        return load_dictionary(out), {"path": str(out), "trained": False}
    t0 = time.perf_counter()
    corpus = CorpusConfig(max_tokens=args.dict_tokens, ctx_len=128)
    stream = ActivationStream(base, corpus, [args.dict_site], forward_batch=8)
    cfg = TrainConfig(
        site=args.dict_site,
        out=out,
        expansion=4,
        k=32,
        optim=OptimConfig(batch_size=1024, lr=1e-3),
        checkpoint_every=1000,
    )
    r = train(cfg, source=stream)
    info = {"path": str(out), "trained": True, "fvu": r.fvu, "l0": r.l0}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("SAE at %s: FVU %.3f in %.0f s", args.dict_site, r.fvu, info["seconds"])
    return load_dictionary(out), info


def planted(base: Model, name: str, args: argparse.Namespace) -> tuple[Model, dict[str, Any]]:
    where = args.plants_dir / name
    if args.reuse and (where / "plant.json").is_file():
        record = json.loads((where / "plant.json").read_text())
    else:
        result = plant(base, PLANTS[name], where, seed=args.seed)
        record = dataclasses.asdict(result)
    return load_model(str(where), device="cpu"), record


def run_one(base: Model, name: str, sae: Dictionary, texts: list[str], args) -> dict[str, Any]:
    t0 = time.perf_counter()
    other, record = planted(base, name, args)
    t_plant = time.perf_counter() - t0
    key = PLANTS[name].answer_key
    row: dict[str, Any] = {"plant": name, "took": record["check"]["took"], "answer_key": key}
    row["plant_record"] = record
    row["plant_seconds"] = round(t_plant, 1)
    runs = (
        ("blue", lambda: blue_team(base, other, texts=texts, dictionary=sae, k=args.k)),
        ("black", lambda: black_box(base, other, texts=texts, k=args.k, samples=args.samples)),
    )
    for who, fn in runs:
        report = fn()
        s = score(report, key)
        row[who] = {"score": dataclasses.asdict(s), "report": dataclasses.asdict(report)}
        top = report.hypotheses[0] if report.hypotheses else None
        row[who]["top"] = f"{top.text} {top.keywords}" if top else "(none)"
        log.info("%s %s: first named at %s in %.0f s", name, who, s.first_named, report.seconds)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'plant':<11} {'took':<5} {'blue @1/@5':<11} {'black @1/@5':<12} {'s plant/blue/black'}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        b, k = r["blue"]["score"], r["black"]["score"]
        secs = f"{r['plant_seconds']:.0f}/{r['blue']['report']['seconds']:.0f}/"
        secs += f"{r['black']['report']['seconds']:.0f}"
        lines.append(
            f"{r['plant']:<11} {'yes' if r['took'] else 'no':<5} "
            f"{int(b['success_at_1'])}/{int(b['success_at_5']):<9} "
            f"{int(k['success_at_1'])}/{int(k['success_at_5']):<10} {secs}"
        )
    for who in ("blue", "black"):
        n = len(rows)
        s1 = sum(r[who]["score"]["success_at_1"] for r in rows)
        s5 = sum(r[who]["score"]["success_at_5"] for r in rows)
        lines.append(f"{who}: success@1 {s1}/{n}, success@5 {s5}/{n}")
    for r in rows:
        lines.append(f"{r['plant']} blue top: {r['blue']['top'][:150]}")
        lines.append(f"{r['plant']} black top: {r['black']['top'][:150]}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--plants-dir", type=Path, default=Path("runs/audit-plants"))
    p.add_argument("--reuse", action="store_true", help="reuse plants (and the SAE) found there")
    p.add_argument("--plants", default=",".join(PLANTS), help="comma-separated plant names")
    p.add_argument("--dictionary", type=Path, default=None, help="an SAE of the base (SAELens)")
    p.add_argument("--dict-site", default="blocks.27.hook_resid_post")
    p.add_argument("--dict-tokens", type=int, default=32_768)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--samples", type=int, default=2, help="black box: replies per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("audit-bench.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = load_model("smollm2-135m", device="cpu")
    sae, sae_info = dictionary(base, args)
    texts = neutral_texts()
    rows = [run_one(base, name, sae, texts, args) for name in args.plants.split(",")]
    total = round(time.perf_counter() - t0, 1)
    print(table(rows))
    print(
        f"total {total} s on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "dictionary": sae_info,
                "seconds": total,
                "threads": torch.get_num_threads(),
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
