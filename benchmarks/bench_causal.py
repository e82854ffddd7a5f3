"""The causal check's cost per edit: the full two passes (`behaviour_metric`) against replaying
the blocks before the edited one (`BehaviourRunner`), on the built-in model and the first
concept's behaviour prompts, at a few layers; the metric must agree.

Run: `python benchmarks/bench_causal.py [--threads 1] [--layers 15 18 23]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from aimri.checkup.causal import BehaviourRunner, behaviour_batch, behaviour_metric
from aimri.checkup.concepts import builtin_concepts
from aimri.config import ModelConfig
from aimri.model.load import load_model
from aimri.steer.edits import AddDirection


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, nargs="+", default=[15, 18, 23])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(ModelConfig(device="cpu"))
    batch = behaviour_batch(model, builtin_concepts()[0].behaviour)
    runner = BehaviourRunner(model, batch)
    t = time.perf_counter()
    runner.metric({})
    print(f"reference run (recorded once): {time.perf_counter() - t:.2f} s")
    g = torch.Generator().manual_seed(0)
    for layer in args.layers:
        u = torch.randn(model.info.d_model, generator=g)
        patches = AddDirection(f"blocks.{layer}.hook_resid_post", u, 100.0).patches(model)
        t = time.perf_counter()
        full = behaviour_metric(model, batch, patches)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        fast = runner.metric(patches)
        t_fast = time.perf_counter() - t
        print(
            f"layer {layer}: full {t_full:.2f} s, replayed {t_fast:.2f} s "
            f"({t_full / t_fast:.1f}x); metric {full:.5f} vs {fast:.5f}"
        )


if __name__ == "__main__":
    main()
