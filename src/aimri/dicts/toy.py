"""A toy model of superposition: ground truth for dictionary training.

`n_features` sparse features (each fires independently with probability `p_fire`, with a
magnitude uniform in [0, 1)) are packed into `d` < n_features dimensions along random unit
directions. A dictionary that learns what is there recovers those directions; the mean, over
planted features, of the best cosine with any decoder row measures it. The data is written as a
regular activation store, so the real training loop is what gets checked.
Not here: training itself (`train.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.store.collect import write_manifest, write_shard
from aimri.store.manifest import read_sidecars

SITE = "toy.hook_x"


@dataclass(frozen=True)
class Toy:
    directions: Tensor
    """[n_features, d] the planted unit directions."""
    store: Path


def make_toy_store(
    path: Path,
    *,
    n_features: int = 256,
    d: int = 64,
    p_fire: float = 0.03,
    n_tokens: int = 2**18,
    seed: int = 0,
) -> Toy:
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=g)
    directions /= directions.norm(dim=-1, keepdim=True)
    shard_tokens = 2**16
    identity = {
        "model": {
            "spec": "toy-superposition",
            "n_features": n_features,
            "p_fire": p_fire,
            "seed": seed,
        },
        "sites": {SITE: d},
        "dtype": "float32",
        "ctx_len": 64,
        "corpus": {"source": "synthetic"},
        "special_tokens": {},
        "shard_contexts": shard_tokens // 64,
    }
    for index in range(max(1, n_tokens // shard_tokens)):
        fires = torch.rand(shard_tokens, n_features, generator=g) < p_fire
        feats = torch.rand(shard_tokens, n_features, generator=g) * fires
        tensors = {
            SITE: feats @ directions,
            "tokens": torch.zeros(shard_tokens, dtype=torch.int32),
            "positions": torch.arange(64, dtype=torch.int32).repeat(shard_tokens // 64),
            "context_ids": torch.arange(shard_tokens // 64).repeat_interleave(64)
            + index * (shard_tokens // 64),
        }
        write_shard(path, index, tensors, shard_tokens)
    write_manifest(path, identity, read_sidecars(path))
    return Toy(directions, path)


def recovery(d: Dictionary, directions: Tensor) -> Tensor:
    """[n_features] best cosine between each planted direction and any decoder row."""
    W = d.W_dec.detach().float()
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (directions @ W.T).max(dim=-1).values
