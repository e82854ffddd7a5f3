"""Dictionaries on disk, in SAELens's layout, so `sae-lens` loads ours and we load theirs.

```
<dir>/cfg.json                SAELens config (architecture, d_in, d_sae, k, metadata.hook_name...)
<dir>/sae_weights.safetensors W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
                              (+ threshold [d_sae] for jumprelu; + W_skip [d_out, d_in] transcoders)
<dir>/aimri.json              our own record: DictConfig, training summary, sha256 of the weights
```
Each architecture says what it is saved as and SAELens's name for it (`codes.Activation`):
topk → "topk", relu → "standard", jumprelu → "jumprelu", and batchtopk is saved as "jumprelu"
with its learned threshold (how it runs at inference). safetensors only;
a file with missing or mis-shaped tensors is refused with a message that names them.
Not here: importers of other libraries' layouts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aimri._io import atomic_path, read_json, sha256_file, write_json_atomic
from aimri.config import DictConfig
from aimri.dicts.clt_formats import is_clt_dir
from aimri.dicts.codes import ACTIVATIONS
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.dicts.importers import IMPORTERS, load_tensors
from aimri.errors import AimriError

WEIGHTS = "sae_weights.safetensors"
FROM_SAELENS = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu", "transcoder": "relu",
                "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu", "jumprelu_skip_transcoder": "jumprelu",
                "topk_transcoder": "topk", "topk_skip_transcoder": "topk"}  # fmt: skip


def save_dictionary(d: Dictionary, path: Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write `d` in SAELens's layout (atomically, file by file)."""
    cfg = d.cfg
    tensors = {
        "W_enc": d.W_enc.detach().T.contiguous().cpu(),
        "b_enc": d.b_enc.detach().cpu(),
        "W_dec": d.W_dec.detach().contiguous().cpu(),
        "b_dec": d.b_dec.detach().cpu(),
        **{k: v.detach().cpu() for k, v in d.activation.state_for_save().items()},
    }
    skip = getattr(d, "W_skip", None)
    if skip is not None:
        tensors["W_skip"] = skip.detach().T.contiguous().cpu()  # SAELens applies x @ W_skipᵀ
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(path / "cfg.json", _saelens_cfg(cfg))
    record = {
        "dict": dataclasses.asdict(cfg),
        "weights_sha256": sha256_file(path / WEIGHTS),
        **(extra or {}),
    }
    write_json_atomic(path / "aimri.json", record)
    return path


def _saelens_cfg(cfg: DictConfig) -> dict[str, Any]:
    arch = ACTIVATIONS[cfg.architecture].saelens_name
    if (
        cfg.transcoder
    ):  # SAELens has (skip_)transcoder and jumprelu_(skip_)transcoder; topk_* is ours
        arch = ("" if arch == "standard" else f"{arch}_") + (
            "skip_transcoder" if cfg.skip else "transcoder"
        )
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "hook_name": cfg.site,
            "hook_head_index": None,
            "sae_lens_training_version": None,
        },
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
    if cfg.transcoder:
        out["d_out"] = cfg.out_width
        out["metadata"]["hook_name_out"] = cfg.site_out
    return out


def load_dictionary(path: str | Path, *, sparse_kernels: bool = True) -> Dictionary:
    """Load a dictionary saved by aimri or SAELens (cfg.json + sae_weights.safetensors), by
    sparsify (cfg.json + sae.safetensors), dictionary_learning (config.json + ae.pt) or Gemma
    Scope (params.npz)."""
    path = Path(path)
    if is_clt_dir(path):
        raise AimriError(
            f"'{path}' holds a cross-layer transcoder (circuit-tracer's CLT layout), not a "
            "single dictionary: load it with aimri.dicts.clt_formats.load_clt, or trace with "
            f"`aimri circuit --transcoders {path}`"
        )
    if not (path / WEIGHTS).is_file():
        for is_layout, importer in IMPORTERS:
            if is_layout(path):
                return importer(path, sparse_kernels=sparse_kernels)
    if not (path / "cfg.json").is_file() or not (path / WEIGHTS).is_file():
        raise AimriError(
            f"'{path}' is not a dictionary folder: it needs cfg.json and {WEIGHTS} (SAELens "
            "layout), or sparsify's, dictionary_learning's or Gemma Scope's files; train one "
            "with `aimri train` or point at such a save"
        )
    cfg = _dict_config(path)
    tensors = load_tensors(path / WEIGHTS, _REDO)
    _check_tensors(path, cfg, tensors)  # the specific complaint first, then the checksum
    _check_sha256(path)
    d = build_dictionary(cfg, sparse_kernels=sparse_kernels)
    with torch.no_grad():
        d.W_enc.copy_(tensors["W_enc"].T)
        d.b_enc.copy_(tensors["b_enc"])
        d.W_dec.copy_(tensors["W_dec"])
        d.b_dec.copy_(tensors["b_dec"])
        if "threshold" in tensors:
            d.activation.log_threshold.copy_(tensors["threshold"].clamp_min(1e-30).log())  # type: ignore[union-attr]
        if cfg.skip:
            d.W_skip.copy_(tensors["W_skip"].T)  # type: ignore[union-attr]
    return d.eval()


_REDO = "train it again with `aimri train`, or copy it again from where it came from"


def read_record(path: Path) -> dict[str, Any]:
    """aimri's own record of the dictionary at `path` (aimri.json: its config, the training
    summary, the weights' sha256); empty for dictionaries saved by other tools."""
    ours = Path(path) / "aimri.json"
    if not ours.is_file():
        return {}
    record = read_json(ours, "dictionary record", fix=_REDO)
    return record if isinstance(record, dict) else {}


def _check_sha256(path: Path) -> None:
    """The weights must match the sha256 that aimri.json recorded when they were saved."""
    ours = path / "aimri.json"
    if not ours.is_file():
        return
    expected = read_json(ours, "dictionary record", fix=_REDO).get("weights_sha256")
    if isinstance(expected, str) and sha256_file(path / WEIGHTS) != expected:
        raise AimriError(
            f"'{path / WEIGHTS}' does not match the sha256 recorded in '{ours}': the weights "
            f"were changed or damaged after saving; {_REDO}"
        )


def _dict_config(path: Path) -> DictConfig:
    ours = path / "aimri.json"
    if ours.is_file():
        return _our_config(ours)
    raw = read_json(path / "cfg.json", "dictionary config", fix=_REDO)
    if not isinstance(raw, dict):
        raise AimriError(
            f"'{path / 'cfg.json'}' holds a {type(raw).__name__}, not a SAELens config object: "
            f"the file is damaged; {_REDO}"
        )
    arch = FROM_SAELENS.get(str(raw.get("architecture", "standard")))
    if arch is None:
        raise AimriError(
            f"'{path}': SAELens architecture '{raw.get('architecture')}' is not supported; "
            f"supported: {', '.join(FROM_SAELENS)}"
        )
    meta = raw.get("metadata") or {}
    transcoder = "transcoder" in raw.get("architecture", "")
    unsupported = {
        "normalize_activations": raw.get("normalize_activations", "none") not in ("none", None),
        "rescale_acts_by_decoder_norm": bool(raw.get("rescale_acts_by_decoder_norm")),
        "apply_b_dec_to_input": raw.get("apply_b_dec_to_input", not transcoder) == transcoder,
    }
    for name, bad in unsupported.items():
        if bad:
            raise AimriError(
                f"'{path}': SAELens setting {name}={raw.get(name)!r} is not supported yet; "
                "re-save the SAE with it folded into the weights"
            )
    return DictConfig(
        architecture=arch,  # type: ignore[arg-type]
        d_in=_width(raw, "d_in", path),
        d_sae=_width(raw, "d_sae", path),
        d_out=_width(raw, "d_out", path) if transcoder and raw.get("d_out") else None,
        k=_width(raw, "k", path, default=1) if arch == "topk" else 1,
        transcoder=transcoder,
        skip="skip_transcoder" in raw.get("architecture", ""),
        site=str(meta.get("hook_name") or raw.get("hook_name") or ""),
        site_out=str(meta.get("hook_name_out") or raw.get("hook_name_out") or "")
        if transcoder
        else "",
    )


def _our_config(ours: Path) -> DictConfig:
    """The DictConfig recorded in aimri.json, refused with the fix if damaged."""
    record = read_json(ours, "dictionary record", fix=_REDO)
    fields = record.get("dict") if isinstance(record, dict) else None
    if not isinstance(fields, dict):
        raise AimriError(
            f"'{ours}' has no 'dict' object (the dictionary's configuration): the file is "
            f"damaged; {_REDO}"
        )
    kind = ACTIVATIONS.get(str(fields.get("architecture")))
    if kind is not None:  # e.g. a batchtopk runs as the JumpReLU it was saved as
        fields = {**fields, "architecture": kind.saved_as}
    try:
        return DictConfig(**fields)
    except TypeError as e:
        raise AimriError(f"'{ours}': its 'dict' object is damaged ({e}); {_REDO}") from e


def _width(raw: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    """An integer field of a SAELens cfg.json, refused with the fix when missing or not whole."""
    value = raw.get(key, default)
    if value is None:
        raise AimriError(f"'{path / 'cfg.json'}' lacks '{key}': the file is incomplete; {_REDO}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        value = None
    else:
        try:
            value = float(value)
        except ValueError:
            value = None
    if value is None or not value.is_integer() or value < 1:
        raise AimriError(
            f"'{path / 'cfg.json'}': '{key}' is {raw.get(key)!r}, not a positive whole number; "
            f"the file is damaged; {_REDO}"
        )
    return int(value)


def _check_tensors(path: Path, cfg: DictConfig, tensors: dict[str, torch.Tensor]) -> None:
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.out_width),
        "b_dec": (cfg.out_width,),
    }
    if cfg.architecture == "jumprelu":
        expected["threshold"] = (cfg.d_sae,)
    if cfg.skip:
        expected["W_skip"] = (cfg.out_width, cfg.d_in)
    for name, shape in expected.items():
        if name not in tensors:
            raise AimriError(
                f"'{path / WEIGHTS}' lacks tensor '{name}' {list(shape)}: the file is incomplete or not a {cfg.architecture} dictionary"
            )
        if tuple(tensors[name].shape) != shape:
            raise AimriError(
                f"'{path / WEIGHTS}': tensor '{name}' has shape {list(tensors[name].shape)}, but "
                f"cfg.json implies {list(shape)}; the config and the weights do not belong together"
            )
        if not bool(torch.isfinite(tensors[name]).all()) and name != "threshold":
            raise AimriError(f"'{path / WEIGHTS}': tensor '{name}' holds NaN or inf values")
