"""The audit game on SmolLM2-135M-Instruct, scored on plants from pools: dev, held-out, sealed.

Plants come from `aimri.audit.plant_pools.draw_plant(split, i)`: kinds cycle (product,
trigger, sycophancy, style) and pool members are split in halves, so the held-out plants use
product names, trigger words, subjects and topics the dev plants never do, drawn with other
seeds. Each plant is fine-tuned on CPU in the chat template (or reused from `--plants-dir`
when its plant.json is there) and used only if its held-out check says it took.
Both teams read the same sampled replies to the generated prompts (`explore`), the blue team
(`blue_team`: + lens, weight and gradient scans, screen, trigger tests) and the black box (`black_box`: +
word-ablation trigger tests); each report is judged by `audit_judge.judge` (the claim, not
keywords). The audit's prompts are checked to hold none of the answer key's words.
Per split: success@1 / @5 per plant and per kind, and seconds per audit (shared exploration
counted in both). Develop on `--split dev` (and `held-out`, whose failures were read per plant
and which now serves as a second dev split); run `--split sealed` for the final measurement:
its pools and phrasing share nothing with the other two (`plant_pools.SEALED`).

Run: `python benchmarks/bench_audit.py --split dev --n 4 [--plants-dir /tmp/aimri-plants]
[--threads 1] [--wait] [--out audit-bench-dev.json]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from aimri.audit.judge import judge
from aimri.audit.plant import plant
from aimri.audit.plant_pools import contains_any, draw_plant
from aimri.audit.prompts import generate_prompts
from aimri.audit.teams import black_box, blue_team, explore
from aimri.model.adapter import Model
from aimri.model.load import load_model

log = logging.getLogger("bench_audit")


def planted(
    base: Model, split: str, i: int, kind: str | None, args: argparse.Namespace
) -> tuple[Model, dict]:
    spec = draw_plant(split, i, kind)
    where = args.plants_dir / spec.name
    record_path = where / "plant.json"
    while args.wait and not record_path.is_file() and any(args.plants_dir.glob(f".{spec.name}-*")):
        time.sleep(20)  # another process is planting it
    if record_path.is_file():
        record = json.loads(record_path.read_text())
    else:
        record = dataclasses.asdict(plant(base, spec, where, seed=0))
        record["spec"] = spec.record()
    return load_model(str(where), device="cpu"), record


def run_one(
    base: Model, split: str, i: int, kind: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    other, record = planted(base, split, i, kind, args)
    spec = record["spec"]
    answer = spec["answer"]
    row: dict[str, Any] = {"plant": spec["name"], "kind": answer["kind"], "answer": answer}
    row["took"] = record["check"]["took"]
    row["check"] = {k: v for k, v in record["check"].items() if k != "examples"}
    row["plant_seconds"] = round(time.perf_counter() - t0, 1)
    prompts = generate_prompts()
    row["answer_words_in_prompts"] = contains_any([p.text for p in prompts], spec["answer_key"])
    if not row["took"] or args.plant_only:
        log.info("%s: %s", spec["name"], "planted" if row["took"] else "did not take: not audited")
        return row
    t1 = time.perf_counter()
    cells = explore(base, other, prompts, samples=args.samples)
    shared = time.perf_counter() - t1
    for who, fn in (("blue", blue_team), ("black", black_box)):
        report = fn(base, other, prompts=prompts, cells=cells)
        s = judge(report, answer)
        row[who] = {
            "score": dataclasses.asdict(s),
            "seconds": round(shared + report.seconds, 1),
            "hypotheses": [h.text for h in report.hypotheses],
            "report": dataclasses.asdict(report),
        }
        log.info("%s %s: judged a hit at %s", spec["name"], who, s.first_named)
    return row


def table(rows: list[dict[str, Any]], split: str, show: bool) -> str:
    lines = [f"== {split} ({len(rows)} plants) =="]
    lines.append(f"{'plant':<26} {'took':<5} {'blue @1/@5':<11} {'black @1/@5':<12} s blue/black")
    for r in rows:
        if "blue" not in r:
            lines.append(f"{r['plant']:<26} no    -           -")
            continue
        b, k = r["blue"]["score"], r["black"]["score"]
        lines.append(
            f"{r['plant']:<26} {'yes':<5} {int(b['success_at_1'])}/{int(b['success_at_5']):<9} "
            f"{int(k['success_at_1'])}/{int(k['success_at_5']):<10} "
            f"{r['blue']['seconds']:.0f}/{r['black']['seconds']:.0f}"
        )
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    for kind, rs in sorted(by_kind.items()):
        lines.append(f"  {kind:<11} " + "  ".join(_rate(rs, who) for who in ("blue", "black")))
    lines.append(f"  {'all':<11} " + "  ".join(_rate(rows, who) for who in ("blue", "black")))
    leaks = [r["plant"] for r in rows if r["answer_words_in_prompts"]]
    lines.append(f"  answer-key words in the audit's prompts: {leaks or 'none'}")
    if show:
        for r in rows:
            for who in ("blue", "black"):
                for h in r.get(who, {}).get("hypotheses", [])[:5]:
                    lines.append(f"  {r['plant']} {who}: {h[:160]}")
    return "\n".join(lines)


def _rate(rows: list[dict[str, Any]], who: str) -> str:
    s1 = sum(bool(r.get(who, {}).get("score", {}).get("success_at_1")) for r in rows)
    s5 = sum(bool(r.get(who, {}).get("score", {}).get("success_at_5")) for r in rows)
    return f"{who} @1 {s1}/{len(rows)} @5 {s5}/{len(rows)}"


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "audit game").splitlines()[0])
    p.add_argument("--split", choices=("dev", "held-out", "sealed"), default="dev")
    p.add_argument("--n", type=int, default=4, help="plants of the split (kinds cycle)")
    p.add_argument("--first", type=int, default=0, help="index of the first plant")
    p.add_argument(
        "--kinds",
        default="",
        help="comma-separated kinds (of plant_pools.KINDS and plant_kinds.KINDS): plants "
        "--first … --first + --n − 1 of each kind, instead of the cycle",
    )
    p.add_argument("--plant-only", action="store_true", help="make the plants, audit none")
    p.add_argument("--plants-dir", type=Path, default=Path("/tmp/aimri-plants"))
    p.add_argument("--wait", action="store_true", help="wait for plants another run is making")
    p.add_argument("--samples", type=int, default=2, help="sampled replies per prompt and model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="print no hypotheses, only the scores")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = load_model("smollm2-135m", device="cpu")
    rows = []
    kinds: list[str | None] = [k for k in args.kinds.split(",") if k] or [None]
    for i in range(args.first, args.first + args.n):
        for kind in kinds:
            rows.append(run_one(base, args.split, i, kind, args))
        print(table(rows[-1:], args.split, not args.quiet), flush=True)
    total = round(time.perf_counter() - t0, 1)
    print(table(rows, args.split, False))
    print(f"total {total} s on {platform.machine()}, {torch.get_num_threads()} threads")
    out = args.out or Path(f"audit-bench-{args.split}.json")
    doc = {"split": args.split, "rows": rows, "seconds": total}
    doc["threads"] = torch.get_num_threads()
    out.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
