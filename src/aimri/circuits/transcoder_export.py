"""Export per-layer transcoders in circuit-tracer's layout, so its `attribute` runs on ours.

```
<out>/config.yaml            model_kind: transcoder_set, model_name, feature_input_hook,
                             feature_output_hook, scan (+ aimri_* fields circuit-tracer ignores)
<out>/layer_<L>.safetensors  W_enc [F, D]  b_enc [F]  W_dec [F, D]  b_dec [D]
                             (+ activation_function.threshold [F] for JumpReLU)
                             (+ W_skip [D, D], applied as x @ W_skipᵀ)
```
This is the layout circuit-tracer 0.5.0 writes to its transcoder cache and reads back with
`load_transcoders_from_cache`; since an absolute path joined to its cache directory is that path,
`ReplacementModel.from_pretrained(model, "/abs/out")` and its CLI's `--transcoder_set /abs/out`
load it too. Its loader picks the activation from the file alone: JumpReLU when the file has
`activation_function.threshold`, ReLU otherwise. So relu, jumprelu and batchtopk (which runs at
inference as a JumpReLU with its learned threshold ≥ 0: `pre · [pre > θ]` either way) export
exactly. TopK does not: circuit-tracer would run it as ReLU; see `export_transcoders`.

Hooks. Our transcoders read `blocks.L.ln2.hook_normalized`, the output of the pre-MLP norm with
its weight applied, and predict `blocks.L.hook_mlp_out`. circuit-tracer's TransformerLens
`ln2.hook_normalized` is *before* the norm weight (TL multiplies by `w` after the hook, and
circuit-tracer loads with `fold_ln=False`), and its nnsight backend has no such hook for Llama.
Its `mlp.hook_in` / `mlp.hook_out` are the MLP's input and output on both backends (for nnsight
Llama: `post_attention_layernorm` output and `mlp` output), so we export to those and nothing
needs folding. `hook_resid_mid` inputs export as `hook_resid_mid`.
Not here: running circuit-tracer (benchmarks/bench_circuits.py), our own attribution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from aimri._io import atomic_path, write_bytes_atomic
from aimri.dicts.dictionary import Transcoder
from aimri.errors import AimriError
from aimri.model.sites import parse_site

CONFIG = "config.yaml"
INPUT_HOOKS = {"ln2.hook_normalized": "mlp.hook_in", "hook_resid_mid": "hook_resid_mid"}
"""Our input site kind → circuit-tracer's feature_input_hook (relative to a block)."""
OUTPUT_HOOKS = {"hook_mlp_out": "mlp.hook_out"}
"""Our output site kind → circuit-tracer's feature_output_hook."""
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")


def export_transcoders(
    transcoders: Sequence[Transcoder],
    out_dir: str | Path,
    *,
    model_name: str,
    allow_topk: bool = False,
) -> Path:
    """Write `transcoders` (item L reads and writes layer L, as `load_transcoder_set` returns
    them) to `out_dir` in circuit-tracer's layout; returns `out_dir`.

    Every file is written atomically, config.yaml last (circuit-tracer treats a folder with
    config.yaml as complete); layer files of an earlier, longer export there are removed.
    `model_name` is recorded as circuit-tracer's `model_name` (its CLI's default `--model`).

    TopK has no circuit-tracer loader: its files would be read as ReLU, a different graph. It is
    refused unless `allow_topk`; then config.yaml records `aimri_activation: topk` and
    `aimri_k`, and whoever loads it must set each transcoder's `activation_function` to
    `relu(topk_k(x))` (k largest pre-activations per token kept, then ReLU), as
    benchmarks/bench_circuits.py does. circuit-tracer's own `TopK` keeps negative values, and a
    JumpReLU threshold cannot be exact, since TopK's cut-off differs from token to token.
    """
    out = Path(out_dir)
    if not transcoders:
        raise AimriError("no transcoders to export: pass one transcoder per layer, 0 to L-1")
    hooks = [_hooks(tc, layer) for layer, tc in enumerate(transcoders)]
    if len(set(hooks)) != 1:
        raise AimriError(
            f"transcoders read or write different kinds of site ({sorted(set(hooks))}): "
            "circuit-tracer has one feature_input_hook and one feature_output_hook per set; "
            "export a set trained with one --site/--site-out pair"
        )
    archs = {tc.cfg.architecture for tc in transcoders}
    widths = {(tc.cfg.d_in, tc.cfg.d_sae) for tc in transcoders}
    if len(archs) != 1 or len(widths) != 1:
        raise AimriError(
            f"transcoders differ in architecture {sorted(archs)} or (d_in, d_sae) "
            f"{sorted(widths)}: circuit-tracer needs one width for the whole set; export "
            "a set from one training"
        )
    arch = archs.pop()
    if arch == "topk" and not allow_topk:
        raise AimriError(
            "TopK transcoders cannot be exported exactly: circuit-tracer 0.5.0 loads a "
            "layer file as ReLU (or JumpReLU if it has a threshold) and has no TopK loader, "
            "so it would compute a different graph; pass allow_topk=True and set each loaded "
            "transcoder's activation_function to relu(topk(x, k)), or train with "
            "--architecture jumprelu, batchtopk or relu"
        )
    config = {
        "model_kind": "transcoder_set",
        "model_name": model_name,
        "feature_input_hook": hooks[0][0],
        "feature_output_hook": hooks[0][1],
        "scan": f"aimri:{model_name}:{out.name}",
        "aimri_activation": arch,
        **({"aimri_k": transcoders[0].cfg.k} if arch == "topk" else {}),
        "aimri_sites": [transcoders[0].cfg.site, transcoders[0].cfg.site_out],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)  # incomplete until the layers are written
    for stale in out.iterdir():
        m = _LAYER_FILE.match(stale.name)
        if m and int(m.group(1)) >= len(transcoders):
            stale.unlink()
    for layer, tc in enumerate(transcoders):
        with atomic_path(out / f"layer_{layer}.safetensors") as tmp:
            save_file(layer_tensors(tc), str(tmp))
    write_bytes_atomic(out / CONFIG, _yaml(config).encode())
    return out


def layer_tensors(tc: Transcoder) -> dict[str, torch.Tensor]:
    """One transcoder's tensors under circuit-tracer's names and shapes (float32, CPU)."""
    cfg = tc.cfg
    if cfg.d_in != cfg.out_width:
        raise AimriError(
            f"transcoder of {cfg.site} maps width {cfg.d_in} to {cfg.out_width}: "
            "circuit-tracer's transcoders read and write the model width (d_model); only "
            "MLP transcoders (ln2.hook_normalized → hook_mlp_out) can be exported"
        )

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().to("cpu", torch.float32).contiguous()

    tensors = {
        "W_enc": t(tc.W_enc),
        "b_enc": t(tc.b_enc),
        "W_dec": t(tc.W_dec),
        "b_dec": t(tc.b_dec),
    }
    if cfg.architecture in ("jumprelu", "batchtopk"):
        threshold = tc.activation.state_for_save()["threshold"]
        if cfg.architecture == "batchtopk" and bool((threshold < 0).any()):
            raise AimriError(
                f"transcoder of {cfg.site}: its BatchTopK threshold is negative, so it keeps "
                "negative pre-activations as 0 while a JumpReLU would keep them; it was not "
                "trained far enough to have a usable threshold: train it longer"
            )
        tensors["activation_function.threshold"] = t(threshold)
    if tc.W_skip is not None:
        tensors["W_skip"] = t(tc.W_skip.T)  # ours: x @ W_skip; circuit-tracer: x @ W_skipᵀ
    return tensors


def _hooks(tc: Transcoder, layer: int) -> tuple[str, str]:
    cfg = tc.cfg
    if not cfg.transcoder or not cfg.site or not cfg.site_out:
        raise AimriError(
            f"dictionary {layer} ({cfg.site or 'no site'}) is not a transcoder with both "
            "sites recorded: circuit-tracer needs per-layer transcoders of known input and "
            "output sites; train them with --site and --site-out"
        )
    site_in, site_out = parse_site(cfg.site), parse_site(cfg.site_out)
    if site_in.layer != layer or site_out.layer != layer:
        raise AimriError(
            f"item {layer} of the transcoders is the transcoder of {cfg.site} → {cfg.site_out}: "
            "item L must read and write layer L; load the set with load_transcoder_set"
        )
    hook_in, hook_out = INPUT_HOOKS.get(site_in.kind), OUTPUT_HOOKS.get(site_out.kind)
    if hook_in is None or hook_out is None:
        raise AimriError(
            f"transcoder {cfg.site} → {cfg.site_out} cannot be exported: circuit-tracer "
            f"replaces MLPs, reading one of {', '.join(INPUT_HOOKS)} and writing "
            f"{', '.join(OUTPUT_HOOKS)}"
        )
    return hook_in, hook_out


def _yaml(mapping: dict[str, object]) -> str:
    """A flat mapping as YAML: JSON scalars and flow lists are valid YAML values."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in mapping.items())
