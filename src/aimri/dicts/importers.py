"""Importers: other libraries' dictionary layouts → aimri dictionaries.

- sparsify (EleutherAI): `cfg.json` + `sae.safetensors` with `encoder.weight` [F, D],
  `encoder.bias` [F], `W_dec` [F, D], `b_dec` [D], optional `W_skip` [D_out, D_in] applied as
  x @ W_skipᵀ. An SAE centres its input by b_dec; a transcoder (`transcode`) does not. The
  activation is TopK on relu(pre), which selects what TopK on pre then relu selects.
- dictionary_learning (Marks et al.): `config.json` ({"trainer": {"dict_class", "k", "layer",
  "submodule_name"...}}) + `ae.pt` (a torch.save'd state_dict, read with the tensors-only loader)
  or `ae.safetensors`. Classes and what they become are in `DL_CLASSES`.
- Gemma Scope (Google DeepMind): `params.npz` with `W_enc` [D, F], `b_enc` [F], `W_dec` [F, D],
  `b_dec` [D], `threshold` [F]; codes (pre > threshold)·relu(pre) with pre = x @ W_enc + b_enc.
A layout whose encoder reads x, not x − b_dec, is folded: b_enc' = b_enc + W_enc b_dec gives the
same pre-activations from our centred input. Each importer is checked against the original
library's own reconstructions in the tests. Never unpickles. Not here: SAELens's layout (native,
see `formats.py`).
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import Any, Literal, NamedTuple

import numpy as np

import torch
from safetensors.torch import load_file

from aimri._io import read_json
from aimri.config import DictConfig
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.errors import AimriError

SPARSIFY_WEIGHTS = "sae.safetensors"


def is_sparsify(path: Path) -> bool:
    return (path / SPARSIFY_WEIGHTS).is_file() and (path / "cfg.json").is_file()


def import_sparsify(path: Path, *, sparse_kernels: bool = True, site: str = "") -> Dictionary:
    raw: dict[str, Any] = read_json(path / "cfg.json", "sparsify config")
    if raw.get("activation", "topk") != "topk":
        raise AimriError(
            f"'{path}': sparsify activation '{raw.get('activation')}' is not supported (only topk)"
        )
    t = load_file(str(path / SPARSIFY_WEIGHTS))
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in t]
    if missing:
        raise AimriError(
            f"'{path / SPARSIFY_WEIGHTS}' lacks {missing}: not a complete sparsify dictionary"
        )
    n_latents, d_in = t["encoder.weight"].shape
    if t["W_dec"].shape[0] != n_latents:
        raise AimriError(
            f"'{path}': W_dec has shape {list(t['W_dec'].shape)}, expected [{n_latents}, d_out]"
        )
    transcoder = bool(raw.get("transcode", False))
    skip = "W_skip" in t
    cfg = DictConfig(
        architecture="topk",
        d_in=int(d_in),
        d_sae=int(n_latents),
        d_out=int(t["W_dec"].shape[1]) if transcoder else None,
        k=int(raw["k"]),
        transcoder=transcoder or skip,
        skip=skip,
        site=site,
    )
    d = build_dictionary(cfg, sparse_kernels=sparse_kernels)
    with torch.no_grad():
        d.W_enc.copy_(t["encoder.weight"])
        d.b_enc.copy_(t["encoder.bias"])
        d.W_dec.copy_(t["W_dec"])
        d.b_dec.copy_(t["b_dec"])
        if skip:
            d.W_skip.copy_(t["W_skip"].T)  # type: ignore[union-attr]
    return d.eval()
