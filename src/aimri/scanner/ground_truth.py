"""The scan's ground-truth stage: does dictionary training work at all, here, today?

Before trusting a dictionary of a real model, train the same kind of dictionary on a toy model
of superposition whose features are known, and report how many it recovers. Takes seconds.
Not here: the toy itself (`aimri.dicts.toy`), training (`aimri.dicts.train`).
"""

from __future__ import annotations

import shutil
from typing import Any

import torch

from aimri.config import OptimConfig, TrainConfig
from aimri.dicts.formats import load_dictionary
from aimri.dicts.toy import SITE, make_toy_store, recovery
from aimri.dicts.train import train
from aimri.scanner.layout import ScanRun

N_FEATURES, D, K = 256, 64, 8


def ground_truth_stage(run: ScanRun) -> dict[str, Any]:
    root, cfg = run.layout.toy, run.cfg
    shutil.rmtree(root, ignore_errors=True)  # seconds to redo; never a stale result
    toy = make_toy_store(
        root / "store", n_features=N_FEATURES, d=D, n_tokens=2**17, seed=cfg.corpus.seed
    )
    r = train(
        TrainConfig(
            store=toy.store,
            site=SITE,
            out=root / "sae",
            expansion=N_FEATURES // D,
            k=K,
            exclude_sinks=False,
            optim=OptimConfig(batch_size=1024),
        )
    )
    cos = recovery(load_dictionary(root / "sae"), toy.directions)
    shutil.rmtree(toy.store)  # the synthetic activations are not worth keeping
    hist = torch.histc(cos, bins=10, min=0.0, max=1.0)
    return {
        "n_features": N_FEATURES,
        "d": D,
        "k": K,
        "steps": r.steps,
        "mean_max_cosine": float(cos.mean()),
        "recovered_fraction": float((cos > 0.9).float().mean()),
        "fvu": r.fvu,
        "cosine_histogram": {
            "edges": [i / 10 for i in range(11)],
            "counts": [int(c) for c in hist],
        },
    }
