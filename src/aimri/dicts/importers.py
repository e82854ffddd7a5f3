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

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from aimri._io import read_json, read_safetensors
from aimri.config import DictConfig
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.errors import AimriError

SPARSIFY_WEIGHTS = "sae.safetensors"


def load_tensors(file: Path, fix: str) -> dict[str, Tensor]:
    """A safetensors file's tensors; a truncated or foreign file is an AimriError with `fix`."""
    return read_safetensors(file, fix)


def is_sparsify(path: Path) -> bool:
    return (path / SPARSIFY_WEIGHTS).is_file() and (path / "cfg.json").is_file()


def import_sparsify(path: Path, *, sparse_kernels: bool = True, site: str = "") -> Dictionary:
    raw: Any = read_json(path / "cfg.json", "sparsify config")
    if not isinstance(raw, dict) or not isinstance(raw.get("k"), int) or raw["k"] < 1:
        raise AimriError(
            f"'{path / 'cfg.json'}' is not a sparsify config (an object with an integer k): "
            "the file is damaged; copy it again from where the dictionary came from"
        )
    if raw.get("activation", "topk") != "topk":
        raise AimriError(
            f"'{path}': sparsify activation '{raw.get('activation')}' is not supported (only topk)"
        )
    t = load_tensors(path / SPARSIFY_WEIGHTS, "copy the dictionary again from its source")
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


DL_WEIGHTS = ("ae.safetensors", "ae.pt")
DL_FIX = "re-save it as dictionary_learning does: torch.save(ae.state_dict(), 'ae.pt')"
GEMMA_SCOPE_WEIGHTS = "params.npz"
GEMMA_SCOPE_FIX = "download params.npz again from the Gemma Scope release"


class _Layout(NamedTuple):
    """Where one dictionary_learning class keeps its tensors, and how it runs."""

    architecture: Literal["relu", "topk", "jumprelu"]
    keys: tuple[str, str, str, str]
    """State-dict names of W_enc, b_enc, W_dec, b_dec."""
    linear: bool
    """nn.Linear weights (encoder [F, D], decoder [D, F]), else W_enc [D, F] and W_dec [F, D]."""
    centred: bool
    """The encoder reads x − b_dec (as ours does), else x."""
    threshold: bool = False
    """A `threshold` per latent [F] or one for all [] (BatchTopK-family at inference)."""


_LINEAR = ("encoder.weight", "encoder.bias", "decoder.weight")
_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
DL_CLASSES: dict[str, _Layout] = {
    "AutoEncoder": _Layout("relu", (*_LINEAR, "bias"), linear=True, centred=True),
    "AutoEncoderNew": _Layout("relu", (*_LINEAR, "decoder.bias"), linear=True, centred=False),
    "AutoEncoderTopK": _Layout("topk", (*_LINEAR, "b_dec"), linear=True, centred=True),
    # BatchTopK-family forward at inference: relu(pre) · (relu(pre) > threshold), a JumpReLU.
    "BatchTopKSAE": _Layout("jumprelu", (*_LINEAR, "b_dec"), True, True, threshold=True),
    "MatryoshkaBatchTopKSAE": _Layout("jumprelu", _PARAMS, False, True, threshold=True),
    "JumpReluAutoEncoder": _Layout("jumprelu", _PARAMS, False, centred=False, threshold=True),
}
_DL_SITE = re.compile(r"(resid_post|resid_out|resid|mlp_out|mlp|attn_out|attn)_?layer_?(\d+)")
_DL_KIND = {"resid": "resid_post", "resid_out": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


class _Weights(NamedTuple):
    """A dictionary's tensors in our orientation (F latents, D input width)."""

    W_enc_FD: Tensor
    b_enc_F: Tensor
    W_dec_FD: Tensor
    b_dec_D: Tensor
    threshold_F: Tensor | None
    centred: bool
    """The encoder reads x − b_dec; if not, b_dec is folded into b_enc on build."""


def is_dictionary_learning(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / w).is_file() for w in DL_WEIGHTS)


def import_dictionary_learning(
    path: Path, *, sparse_kernels: bool = True, site: str = ""
) -> Dictionary:
    """A dictionary_learning save; `site` defaults to one derived from its submodule_name."""
    raw = read_json(path / "config.json", "dictionary_learning config")
    trainer = raw.get("trainer") if isinstance(raw, dict) else None
    trainer = trainer if isinstance(trainer, dict) else {}
    dict_class = trainer.get("dict_class")
    layout = DL_CLASSES.get(str(dict_class))
    if dict_class is None:
        raise AimriError(
            f"'{path / 'config.json'}' names no trainer.dict_class, so the layout of ae.pt is "
            'unknown; add "trainer": {"dict_class": "AutoEncoder"} (or the class it was '
            "trained as) to config.json"
        )
    if layout is None:
        raise AimriError(
            f"'{path / 'config.json'}': dictionary_learning class {dict_class!r} is not "
            f"supported (supported: {', '.join(DL_CLASSES)}); a gated SAE has no aimri "
            "equivalent: train one with `aimri train` instead"
        )
    file, t = _dl_tensors(path)
    W_enc, b_enc, W_dec, b_dec = layout.keys
    n_latents, d_in = _dims(t, W_enc, file, DL_FIX, latents_first=layout.linear)
    if layout.threshold and "threshold" in t and t["threshold"].dim() == 0:
        t["threshold"] = t["threshold"].expand(n_latents)  # BatchTopK: one threshold for all
    enc, dec = (n_latents, d_in), (d_in, n_latents)  # nn.Linear orientation
    if not layout.linear:
        enc, dec = dec, enc
    W_enc_t, W_dec_t = _get(t, W_enc, enc, file, DL_FIX), _get(t, W_dec, dec, file, DL_FIX)
    w = _Weights(
        W_enc_t if layout.linear else W_enc_t.T,
        _get(t, b_enc, (n_latents,), file, DL_FIX),
        W_dec_t.T if layout.linear else W_dec_t,
        _get(t, b_dec, (d_in,), file, DL_FIX),
        _get(t, "threshold", (n_latents,), file, DL_FIX) if layout.threshold else None,
        centred=layout.centred,
    )
    k = 1
    if layout.architecture == "topk":
        if trainer.get("k") is None and "k" not in t:
            raise AimriError(f"'{path}': a TopK dictionary without k in config.json or {file.name}")
        k = int(trainer["k"] if trainer.get("k") is not None else t["k"])
    site = site or _dl_site(str(trainer.get("submodule_name") or ""))
    return _build(layout.architecture, w, k=k, site=site, sparse_kernels=sparse_kernels)


def _dl_tensors(path: Path) -> tuple[Path, dict[str, Tensor]]:
    """ae.safetensors if present, else ae.pt through torch's tensors-only loader."""
    if (path / DL_WEIGHTS[0]).is_file():
        return path / DL_WEIGHTS[0], load_tensors(path / DL_WEIGHTS[0], DL_FIX)
    file = path / DL_WEIGHTS[1]
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise AimriError(
            f"'{file}' was refused: it is not a plain state_dict of tensors, and aimri never "
            f"unpickles arbitrary objects ({str(e).splitlines()[0][:120]}); {DL_FIX}, or save "
            "the tensors as ae.safetensors"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise AimriError(f"'{file}' is not a state_dict (a dict of tensors); {DL_FIX}")
    return file, dict(state)


def _dl_site(submodule: str) -> str:
    """dictionary_learning's submodule names (`resid_post_layer_3`) → our sites; else ''."""
    m = _DL_SITE.fullmatch(submodule)
    return f"blocks.{m[2]}.hook_{_DL_KIND.get(m[1], m[1])}" if m else ""


def is_gemma_scope(path: Path) -> bool:
    return (path / GEMMA_SCOPE_WEIGHTS).is_file()


def import_gemma_scope(path: Path, *, sparse_kernels: bool = True, site: str = "") -> Dictionary:
    """A Gemma Scope JumpReLU SAE; its folder names no site, so `site` stays '' unless given."""
    file = path / GEMMA_SCOPE_WEIGHTS
    try:
        with np.load(file, allow_pickle=False) as npz:
            t = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except (ValueError, OSError) as e:  # object arrays are refused: they would need unpickling
        raise AimriError(
            f"'{file}' could not be read as plain arrays ({e}); {GEMMA_SCOPE_FIX}"
        ) from e
    n_latents, d_in = _dims(t, "W_enc", file, GEMMA_SCOPE_FIX, latents_first=False)
    w = _Weights(
        _get(t, "W_enc", (d_in, n_latents), file, GEMMA_SCOPE_FIX).T,
        _get(t, "b_enc", (n_latents,), file, GEMMA_SCOPE_FIX),
        _get(t, "W_dec", (n_latents, d_in), file, GEMMA_SCOPE_FIX),
        _get(t, "b_dec", (d_in,), file, GEMMA_SCOPE_FIX),
        _get(t, "threshold", (n_latents,), file, GEMMA_SCOPE_FIX),
        centred=False,  # pre = x @ W_enc + b_enc: b_dec only on the way out
    )
    return _build("jumprelu", w, k=1, site=site, sparse_kernels=sparse_kernels)


def _dims(
    t: dict[str, Tensor], key: str, file: Path, fix: str, *, latents_first: bool
) -> tuple[int, int]:
    """(F, D) read off the encoder matrix, against which every other tensor is checked."""
    if key not in t or t[key].dim() != 2:
        found = "missing" if key not in t else f"of shape {list(t[key].shape)}"
        raise AimriError(f"'{file}': encoder matrix '{key}' is {found}, expected 2-D; {fix}")
    a, b = t[key].shape
    return (int(a), int(b)) if latents_first else (int(b), int(a))


def _get(t: dict[str, Tensor], key: str, shape: tuple[int, ...], file: Path, fix: str) -> Tensor:
    if key not in t:
        raise AimriError(f"'{file}' lacks tensor '{key}' {list(shape)}: it is incomplete; {fix}")
    x = t[key]
    if tuple(x.shape) != shape:
        raise AimriError(
            f"'{file}': tensor '{key}' has shape {list(x.shape)}, but the encoder implies "
            f"{list(shape)} (d_in, d_sae); the tensors do not belong together; {fix}"
        )
    x = x.float()
    if bool(x.isnan().any()) or (key != "threshold" and not bool(x.isfinite().all())):
        raise AimriError(f"'{file}': tensor '{key}' holds NaN or inf values; {fix}")
    return x


def _build(
    architecture: Literal["relu", "topk", "jumprelu"],
    w: _Weights,
    *,
    k: int,
    site: str,
    sparse_kernels: bool,
) -> Dictionary:
    n_latents, d_in = w.W_enc_FD.shape
    cfg = DictConfig(architecture=architecture, d_in=d_in, d_sae=n_latents, k=k, site=site)
    b_enc = w.b_enc_F
    if not w.centred:  # ours reads x − b_dec: adding W_enc b_dec back gives the same pre
        b_enc = (b_enc.double() + w.W_enc_FD.double() @ w.b_dec_D.double()).float()
    d = build_dictionary(cfg, sparse_kernels=sparse_kernels)
    with torch.no_grad():
        d.W_enc.copy_(w.W_enc_FD)
        d.b_enc.copy_(b_enc)
        d.W_dec.copy_(w.W_dec_FD)
        d.b_dec.copy_(w.b_dec_D)
        if w.threshold_F is not None:  # a threshold ≤ 0 acts as relu, as θ = 1e-30 does
            d.activation.log_threshold.copy_(w.threshold_F.clamp_min(1e-30).log())  # type: ignore[union-attr]
    return d.eval()


IMPORTERS: tuple[tuple[Callable[[Path], bool], Callable[..., Dictionary]], ...] = (
    (is_sparsify, import_sparsify),
    (is_dictionary_learning, import_dictionary_learning),
    (is_gemma_scope, import_gemma_scope),
)
"""(detect the layout in a folder, import it), tried in order by `formats.load_dictionary`."""
