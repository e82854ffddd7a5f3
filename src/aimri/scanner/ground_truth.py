"""The scan's ground-truth stage: does dictionary training work at all, here, today?

Before trusting a dictionary of a real model, train the same kind of dictionary on a toy model
of superposition whose features are known, and report how many it recovers. Takes seconds.
Not here: the toy itself (`aimri.dicts.toy`), training (`aimri.dicts.train`).
"""

from __future__ import annotations

import shutil
from typing import TypedDict

import torch

from aimri.config import OptimConfig, TrainConfig
from aimri.dicts.formats import load_dictionary
from aimri.dicts.toy import SITE, make_toy_store, recovery
from aimri.dicts.train import train
from aimri.report.internals import ground_truth_view
from aimri.report.view import View
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import Method, Stage

N_FEATURES, D, K = 256, 64, 8


class CosineHistogram(TypedDict):
    edges: list[float]
    counts: list[int]


class GroundTruthResult(TypedDict):
    n_features: int
    d: int
    k: int
    steps: int
    mean_max_cosine: float
    recovered_fraction: float
    """Share of planted features some latent matches at cosine > 0.9."""
    fvu: float
    cosine_histogram: CosineHistogram


def ground_truth_stage(run: ScanRun) -> GroundTruthResult:
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


def _findings(gt: GroundTruthResult) -> list[Finding]:
    if gt["recovered_fraction"] >= 0.9:
        return []
    return [
        Finding(
            id="ground-truth-failed",
            title="Dictionary training did not recover a toy model's known features",
            severity="warning",
            summary=f"Only {100 * gt['recovered_fraction']:.0f}% of planted features were "
            "recovered: treat this run's dictionaries with suspicion.",
            evidence=gt,
        )
    ]


GROUND_TRUTH = Stage[GroundTruthResult](
    "ground_truth",
    ground_truth_stage,
    findings=_findings,
    checked=lambda r: f"the training code on a toy model with {r['n_features']} known features",
    sure=lambda r: (
        f"The dictionary trainer recovers {100 * r['recovered_fraction']:.0f}% of a toy model's "
        "known features, so a failure to find structure is not simply the trainer."
    ),
    method=lambda r, c: Method(
        "dictionary trainer on known features",
        "toy model of superposition, TopK SAE",
        f"{r['n_features']} features in {r['d']} dims, k {r['k']}, {r['steps']} steps",
    ),
    data=lambda r, _: "synthetic sparse features, seeded (no text)",
    view=View("ground_truth.html.j2", ground_truth_view, part="last"),
)
