"""Cross-layer transcoders on disk, in circuit-tracer's layout (ours is theirs, so export and
import are the same files):

```
<dir>/config.yaml             model_kind: cross_layer_transcoder, model_name,
                              feature_input_hook, feature_output_hook, scan
                              (+ aimri_* fields circuit-tracer ignores)
<dir>/W_enc_<i>.safetensors   W_enc_<i> [F, D]  b_enc_<i> [F]  b_dec_<i> [D]  (+ threshold_<i> [F])
<dir>/W_dec_<i>.safetensors   W_dec_<i> [F, L-i, D]: latent f of layer i → layers i..L-1
<dir>/aimri.json              our record: CLTConfig, sha256 of every file, training summary
```
circuit-tracer's `load_clt` reads it (JumpReLU when the files hold thresholds, ReLU
otherwise), so jumprelu and batchtopk (saved as its JumpReLU threshold) export exactly; TopK
is recorded as `aimri_activation: topk` with `aimri_k`, which circuit-tracer would run as
ReLU. A folder without aimri.json (circuit-tracer's own, or another tool's) loads as JumpReLU
with its thresholds, or as ReLU (JumpReLU at threshold 0) without. Hooks: `mlp.hook_in` is our
`ln2.hook_normalized`, `mlp.hook_out` our `hook_mlp_out` (see `circuits/transcoder_export.py`).
Not here: the CLT's maths (`clt.py`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aimri._io import (
    atomic_path,
    read_json,
    read_safetensors,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)
from aimri.dicts.clt import CLTConfig, CrossLayerTranscoder
from aimri.errors import AimriError

CONFIG = "config.yaml"
MODEL_KIND = "cross_layer_transcoder"
HOOKS_IN = {"ln2.hook_normalized": "mlp.hook_in", "hook_resid_mid": "hook_resid_mid"}
HOOKS_OUT = {"hook_mlp_out": "mlp.hook_out"}
_REDO = "train it again with `aimri train --cross-layer`, or copy it again from where it came from"
_FILE = re.compile(r"^W_(enc|dec)_(\d+)\.safetensors$")


def is_clt_dir(path: str | Path) -> bool:
    """A folder in circuit-tracer's CLT layout (config.yaml of model_kind
    cross_layer_transcoder, or W_enc_0/W_dec_0 files)."""
    path = Path(path)
    cfg = path / CONFIG
    if cfg.is_file():
        return _read_yaml(cfg).get("model_kind") == MODEL_KIND
    return (path / "W_enc_0.safetensors").is_file() and (path / "W_dec_0.safetensors").is_file()


def save_clt(
    clt: CrossLayerTranscoder,
    path: str | Path,
    *,
    model_name: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `clt` to `path` (file by file, atomically; config.yaml and aimri.json last)."""
    path = Path(path)
    cfg = clt.cfg
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).unlink(missing_ok=True)  # incomplete until every layer is written
    for stale in path.iterdir():
        m = _FILE.match(stale.name)
        if m and int(m.group(2)) >= cfg.n_layers:
            stale.unlink()
    thresholds = clt.state_for_save().get("threshold")
    for i in range(cfg.n_layers):
        enc = {
            f"W_enc_{i}": _t(clt.W_enc[i]),
            f"b_enc_{i}": _t(clt.b_enc[i]),
            f"b_dec_{i}": _t(clt.b_dec[i]),
        }
        if thresholds is not None:
            enc[f"threshold_{i}"] = _t(thresholds[i])
        _save(enc, path / f"W_enc_{i}.safetensors")
        _save({f"W_dec_{i}": _t(clt.W_dec[i])}, path / f"W_dec_{i}.safetensors")
    files = sorted(p.name for p in path.iterdir() if _FILE.match(p.name))
    architecture = "jumprelu" if cfg.architecture == "batchtopk" else cfg.architecture
    record = {
        "clt": dataclasses.asdict(dataclasses.replace(cfg, architecture=architecture)),
        "trained_as": cfg.architecture,
        "sha256": {f: sha256_file(path / f) for f in files},
        **(extra or {}),
    }
    write_json_atomic(path / "aimri.json", record)
    kind_in, kind_out = _kind(cfg.site), _kind(cfg.site_out)
    config = {
        "model_kind": MODEL_KIND,
        "model_name": model_name,
        "feature_input_hook": HOOKS_IN.get(kind_in, kind_in),
        "feature_output_hook": HOOKS_OUT.get(kind_out, kind_out),
        "scan": f"aimri:{model_name}:{path.name}",
        "aimri_activation": architecture,
        **({"aimri_k": cfg.k} if architecture == "topk" else {}),
        "aimri_sites": [cfg.site, cfg.site_out],
    }
    write_bytes_atomic(
        path / CONFIG, "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()).encode()
    )
    return path


def load_clt(path: str | Path, *, sparse_kernels: bool = True) -> CrossLayerTranscoder:
    """A CLT saved by aimri or by circuit-tracer (its `to_safetensors` layout)."""
    path = Path(path)
    if not (path / "W_enc_0.safetensors").is_file():
        raise AimriError(
            f"'{path}' is not a cross-layer transcoder: it has no W_enc_0.safetensors (circuit-"
            f"tracer's CLT layout); {_REDO}"
        )
    n_layers = sum(1 for p in path.iterdir() if re.match(r"^W_enc_\d+\.safetensors$", p.name))
    record = _record(path)
    enc = [read_safetensors(path / f"W_enc_{i}.safetensors", _REDO) for i in range(n_layers)]
    dec = [read_safetensors(path / f"W_dec_{i}.safetensors", _REDO) for i in range(n_layers)]
    cfg = _config(path, record, enc, n_layers)
    _check_shapes(path, cfg, enc, dec)
    clt = CrossLayerTranscoder(cfg, sparse_kernels=sparse_kernels)
    with torch.no_grad():
        for i in range(n_layers):
            clt.W_enc[i].copy_(enc[i][f"W_enc_{i}"])
            clt.b_enc[i].copy_(enc[i][f"b_enc_{i}"])
            clt.b_dec[i].copy_(enc[i][f"b_dec_{i}"])
            clt.W_dec[i].copy_(dec[i][f"W_dec_{i}"])
            if clt.jump is not None:
                theta = enc[i].get(f"threshold_{i}", torch.zeros(cfg.d_sae))
                clt.jump_at(i).log_threshold.copy_(theta.float().clamp_min(1e-30).log())
    return clt.eval()


def _record(path: Path) -> dict[str, Any] | None:
    ours = path / "aimri.json"
    if not ours.is_file():
        return None
    record = read_json(ours, "CLT record", fix=_REDO)
    if not isinstance(record, dict) or not isinstance(record.get("clt"), dict):
        raise AimriError(f"'{ours}' has no 'clt' object: the file is damaged; {_REDO}")
    for name, expected in (record.get("sha256") or {}).items():
        if not (path / name).is_file() or sha256_file(path / name) != expected:
            raise AimriError(
                f"'{path / name}' is missing or does not match the sha256 recorded in '{ours}': "
                f"the weights were changed or damaged after saving; {_REDO}"
            )
    return record


def _config(
    path: Path, record: dict[str, Any] | None, enc: list[dict[str, Any]], n_layers: int
) -> CLTConfig:
    if record is not None:
        try:
            return CLTConfig(**record["clt"])
        except TypeError as e:
            raise AimriError(
                f"'{path / 'aimri.json'}': its 'clt' object is damaged ({e}); {_REDO}"
            ) from e
    F, D = enc[0]["W_enc_0"].shape
    raw = _read_yaml(path / CONFIG) if (path / CONFIG).is_file() else {}
    hook_in = str(raw.get("feature_input_hook", "mlp.hook_in"))
    hook_out = str(raw.get("feature_output_hook", "mlp.hook_out"))
    kind_in = {v: k for k, v in HOOKS_IN.items()}.get(hook_in, hook_in)
    kind_out = {v: k for k, v in HOOKS_OUT.items()}.get(hook_out, hook_out)
    return CLTConfig(
        architecture="jumprelu",  # ReLU is JumpReLU at threshold 0
        n_layers=n_layers,
        d_model=int(D),
        d_sae=int(F),
        k=1,
        site=f"blocks.*.{kind_in}",
        site_out=f"blocks.*.{kind_out}",
    )


def _check_shapes(path: Path, cfg: CLTConfig, enc: list[dict], dec: list[dict]) -> None:
    L, F, D = cfg.n_layers, cfg.d_sae, cfg.d_model
    for i in range(L):
        expected = {
            f"W_enc_{i}": (enc[i], (F, D)),
            f"b_enc_{i}": (enc[i], (F,)),
            f"b_dec_{i}": (enc[i], (D,)),
            f"W_dec_{i}": (dec[i], (F, L - i, D)),
        }
        for name, (tensors, shape) in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = list(tensors[name].shape) if name in tensors else "nothing"
                raise AimriError(
                    f"'{path}': tensor '{name}' should be {list(shape)} for a CLT of {L} layers "
                    f"and {F} latents per layer, but the files hold {got}; {_REDO}"
                )
            if not bool(torch.isfinite(tensors[name]).all()):
                raise AimriError(f"'{path}': tensor '{name}' holds NaN or inf values; {_REDO}")


def _kind(site: str) -> str:
    """'blocks.*.ln2.hook_normalized' → 'ln2.hook_normalized'."""
    return site.split(".", 2)[2] if site.count(".") >= 2 else site


def _read_yaml(path: Path) -> dict[str, Any]:
    """A flat `key: value` YAML file (circuit-tracer's config.yaml), without a YAML parser."""
    out: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if ":" not in line or line.startswith((" ", "#")):
            continue
        key, value = line.split(":", 1)
        value = value.strip()
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip("'\"")
    return out


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32).contiguous()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
