"""The scan's dictionary recipes, chosen by measurement: SAE and transcoder variants trained in
ONE read of the built-in corpus at the standard depth's budgets, each evaluated on the
held-out split (other topics, other wording).

- SAE variants (layer 15's residual stream, 4,608 latents unless the variant says otherwise):
  held-out FVU on ordinary tokens, the spliced model's CE increase and KL, dead latents.
- Transcoder variants (MLP input → MLP output at a few layers): held-out FVU per layer and its
  mean, dead latents.
Every variant sees the same tokens in the same order (one mixer seed), so differences are the
settings', not the data's.

Run: `python benchmarks/bench_recipe.py --out /tmp/recipe [--only sae|tc] [--sae-tokens 245760]
[--tc-tokens 81920] [--tc-layers 2 8 15 22 28] [--threads 2]`. Writes `recipe.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aimri.config import CorpusConfig, EvalConfig, OptimConfig, TrainConfig
from aimri.corpus.contexts import special_tokens
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import dictionary_config_for
from aimri.dicts.trainer import StreamTrainer, Trainer
from aimri.model.load import load_model
from aimri.model.precision import read_dtype
from aimri.store.shared_read import ReadBatch, shared_read
from aimri.store.sinks import find_sinks, special_ids

SAE_SITE = "blocks.15.hook_resid_post"
SAE_BASE = {"batch": 1024, "lr": 1.5e-3, "k": 32, "expansion": 8, "dead_after": 262_144}
SAE_VARIANTS: dict[str, dict] = {
    "scan today (batch 1024, lr 1.5e-3)": {},
    "batch 512": {"batch": 512},
    "batch 512, lr 2.2e-3": {"batch": 512, "lr": 2.2e-3},
    "batch 256, lr 1.1e-3": {"batch": 256, "lr": 1.1e-3},
    "dead after 16k": {"dead_after": 16_384},
    "decay 40%": {"decay": 0.4},
    "k 48": {"k": 48},
}
TC_BASE = {
    "batch": 512,
    "lr": 2e-3,
    "k": 16,
    "expansion": 4,
    "skip": False,
    "dead_after": 262_144,
}
TC_VARIANTS: dict[str, dict] = {
    "scan today (x4, k 16, batch 512, lr 2e-3)": {},
    "skip": {"skip": True},
    "skip, batch 256": {"skip": True, "batch": 256},
    "skip, lr 4e-3": {"skip": True, "lr": 4e-3},
    "skip, k 32": {"skip": True, "k": 32},
    "skip, x8 k 32": {"skip": True, "expansion": 8, "k": 32},
    "skip, dead after 16k": {"skip": True, "dead_after": 16_384},
}


@dataclass
class Rows:
    """A consumer that keeps the ordinary tokens (sinks left out) of a few sites, in memory."""

    name: str
    sites: tuple[str, ...]
    n_tokens: int
    special: list[int]
    kept: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seen: int = 0

    @property
    def wants(self) -> bool:
        return self.seen < self.n_tokens

    def consume(self, batch: ReadBatch) -> None:
        parts = [batch.acts[s] for s in self.sites]
        keep = ~find_sinks(batch.tokens, batch.positions, parts, self.special).sink
        for s, a in zip(self.sites, parts, strict=True):
            self.kept.setdefault(s, []).append(a[keep].float())
        self.seen += len(batch.tokens)

    def get(self, site: str) -> torch.Tensor:
        return torch.cat(self.kept[site])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", choices=("sae", "tc"), default=None)
    p.add_argument("--sae-tokens", type=int, default=245_760)
    p.add_argument("--tc-tokens", type=int, default=81_920)
    p.add_argument("--tc-layers", type=int, nargs="+", default=[2, 8, 15, 22, 28])
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m", device="cpu")
    reader = model.at_dtype(read_dtype("auto", model.device))
    special = special_ids(model.tokenizer, [special_tokens(model.tokenizer, True).separator])
    trainers: list[tuple[str, str, StreamTrainer]] = []
    if args.only != "tc":
        for i, (name, kw) in enumerate(SAE_VARIANTS.items()):
            s = {**SAE_BASE, **kw}
            cfg = _train_cfg(SAE_SITE, None, args.out / f"sae-{i}", s, args.sae_tokens)
            trainers.append(("sae", name, _trainer(f"sae {i}", [cfg], model, special)))
    if args.only != "sae":
        for i, (name, kw) in enumerate(TC_VARIANTS.items()):
            s = {**TC_BASE, **kw}
            cfgs = [
                _train_cfg(
                    f"blocks.{layer}.ln2.hook_normalized",
                    f"blocks.{layer}.hook_mlp_out",
                    args.out / f"tc-{i}" / f"layer_{layer}",
                    s,
                    args.tc_tokens,
                )
                for layer in args.tc_layers
            ]
            trainers.append(("tc", name, _trainer(f"tc {i}", cfgs, model, special)))
    t = time.perf_counter()
    budget = max(args.sae_tokens if args.only != "tc" else 0, args.tc_tokens)
    r = shared_read(reader, CorpusConfig(max_tokens=int(budget * 1.1)), [t for *_, t in trainers])
    seconds = {tr.name: tr.finish() for *_, tr in trainers}
    print(f"# one read of {r.n_tokens:,} tokens ({r.dtype}): {time.perf_counter() - t:.0f} s")
    held_out = CorpusConfig(source="builtin-held-out", max_tokens=args.eval_tokens, seed=1)
    rows = []
    tc_eval = _tc_eval_rows(model, args, special, held_out) if args.only != "sae" else None
    for kind, name, tr in trainers:
        row = {"kind": kind, "name": name, "train_seconds": round(seconds[tr.name], 1)}
        if kind == "sae":
            row |= _sae_row(model, tr.trainer.cfgs[0].out, held_out)
        else:
            assert tc_eval is not None
            row |= _tc_row(tr, tc_eval)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "recipe.json").write_text(json.dumps(rows, indent=1))


def _train_cfg(site: str, site_out: str | None, out: Path, s: dict, tokens: int) -> TrainConfig:
    return TrainConfig(
        site=site,
        site_out=site_out,
        out=out,
        k=s["k"],
        expansion=s["expansion"],
        skip=s.get("skip", False),
        optim=OptimConfig(
            batch_size=s["batch"],
            tokens=tokens * 127 // 128,
            lr=s["lr"],
            dead_after_tokens=s["dead_after"],
            decay_frac=s.get("decay", 0.2),
        ),
        device="cpu",
        overwrite=True,
    )


def _trainer(name: str, cfgs: list[TrainConfig], model, special) -> StreamTrainer:
    widths = {x: model.site_width(x) for c in cfgs for x in (c.site, c.site_out) if x}
    dicts = [dictionary_config_for(c, widths) for c in cfgs]
    steps = cfgs[0].optim.tokens // cfgs[0].optim.batch_size
    return StreamTrainer(name, Trainer(cfgs, dicts, steps), special, seed=0)


def _sae_row(model, path: Path, held_out: CorpusConfig) -> dict:
    m = evaluate(EvalConfig(dictionary=path, corpus=held_out), model=model).metrics
    perf = m["model_performance_preservation"]
    return {
        "fvu": round(m["reconstruction_quality"]["fvu"], 4),
        "ce_increase": round(perf["ce_loss_with_sae"] - perf["ce_loss_without_sae"], 4),
        "kl": round(m["model_behavior_preservation"]["kl_div_with_sae"], 4),
        "dead": round(m["misc_metrics"]["frac_dead"], 4),
        "l0": round(m["sparsity"]["l0"], 1),
    }


def _tc_eval_rows(model, args, special, held_out: CorpusConfig) -> Rows:
    sites = tuple(
        s
        for layer in args.tc_layers
        for s in (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
    )
    rows = Rows("held-out", sites, held_out.max_tokens, list(special))
    shared_read(model, held_out, [rows])  # float32: the evaluation reads the model as it is
    return rows


@torch.no_grad()
def _tc_row(tr: StreamTrainer, rows: Rows) -> dict:
    fvus, dead = {}, []
    for cfg in tr.trainer.cfgs:
        d = load_dictionary(cfg.out)
        assert cfg.site_out is not None
        x, y = rows.get(cfg.site), rows.get(cfg.site_out)
        out = d(x, y)
        fvus[cfg.site.split(".")[1]] = round(float(out.fvu), 4)
        fired = torch.zeros(d.cfg.d_sae, dtype=torch.bool)
        idx = out.codes.idx
        if idx is not None:
            fired[idx[out.codes.vals > 0]] = True
        dead.append(1 - float(fired.float().mean()))
    return {
        "fvu_mean": round(sum(fvus.values()) / len(fvus), 4),
        "fvu_by_layer": fvus,
        "unfired_on_held_out": round(sum(dead) / len(dead), 4),
    }


if __name__ == "__main__":
    main()
