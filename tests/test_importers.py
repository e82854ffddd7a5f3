"""Importers of other libraries' layouts reconstruct exactly as those libraries do.

Each dictionary is built with the original library's own classes, saved the way that library
saves it, loaded through `load_dictionary`, and our reconstructions are compared with the
library's forward (and its own loader where it has one). Biases are non-zero and the layouts
are not square, so a transposed matrix, a mixed-up bias or a b_dec not folded fails the test.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from aimri import AimriError
from aimri.dicts.formats import load_dictionary

D, F, K = 16, 64, 5


def _dictionary_learning(module: str) -> ModuleType:
    """A module of dictionary_learning (dev dependency, installed with --no-deps: see the
    Makefile). Its package __init__ imports the activation buffer, which needs nnsight; the
    dictionary and trainer modules need only torch and einops, so the package is registered
    without running its __init__."""
    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None:
            pytest.fail("dictionary-learning is a dev dependency: run `make install-dev`")
        sys.modules["dictionary_learning"] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"dictionary_learning.{module}")


def _trainer(dict_class: str):
    """A dictionary_learning trainer holding a fresh dictionary of `dict_class`, or None for
    classes no trainer writes a config for (AutoEncoderNew: StandardTrainer records
    'AutoEncoder')."""
    tr = _dictionary_learning("trainers")
    common = {"steps": 5000, "activation_dim": D, "dict_size": F, "layer": 3, "lm_name": "toy"}
    common |= {"device": "cpu", "submodule_name": "resid_post_layer_3"}
    if dict_class == "AutoEncoder":  # the April-update trainer: decoder norms not fixed to 1
        return tr.standard.StandardTrainerAprilUpdate(**common)
    if dict_class == "AutoEncoderTopK":
        return tr.TopKTrainer(k=K, **common)
    if dict_class == "BatchTopKSAE":
        return tr.BatchTopKTrainer(k=K, **common)
    if dict_class == "MatryoshkaBatchTopKSAE":
        mod = _dictionary_learning("trainers.matryoshka_batch_top_k")
        return mod.MatryoshkaBatchTopKTrainer(k=K, group_fractions=[0.25, 0.75], **common)
    if dict_class == "JumpReluAutoEncoder":
        return tr.JumpReluTrainer(**common)
    return None


def _save_like_dictionary_learning(dict_class: str, path: Path) -> torch.nn.Module:
    """Random weights in the library's class, saved as its `training.trainSAE` saves them:
    config.json {"trainer": trainer.config} and torch.save of the CPU state_dict as ae.pt."""
    trainer = _trainer(dict_class)
    if trainer is not None:
        ae, config = trainer.ae, {"trainer": trainer.config}
    else:
        ae = _dictionary_learning("dictionary").AutoEncoderNew(D, F)
        config = {"trainer": {"dict_class": dict_class, "layer": 3, "submodule_name": "x"}}
    with torch.no_grad():  # non-trivial biases and norms: where careless converters go wrong
        for p in ae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if dict_class == "JumpReluAutoEncoder":
            ae.threshold.copy_(torch.rand(F) * 2)
        elif "BatchTopK" in dict_class:  # calibrated at inference: one threshold for all
            ae.threshold.fill_(0.8)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=4))
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, path / "ae.pt")
    return ae.eval()


def _their_loader(dict_class: str):
    """The library's own `from_pretrained` for the class (as its utils.load_dictionary calls it)."""
    mods = {"AutoEncoderTopK": "trainers.top_k", "BatchTopKSAE": "trainers.batch_top_k"}
    mods |= {"MatryoshkaBatchTopKSAE": "trainers.matryoshka_batch_top_k"}
    return getattr(_dictionary_learning(mods.get(dict_class, "dictionary")), dict_class)


DL_CLASSES = [
    ("AutoEncoder", "relu"),
    ("AutoEncoderNew", "relu"),
    ("AutoEncoderTopK", "topk"),
    ("BatchTopKSAE", "jumprelu"),
    ("MatryoshkaBatchTopKSAE", "jumprelu"),
    ("JumpReluAutoEncoder", "jumprelu"),
]


@pytest.mark.parametrize(("dict_class", "arch"), DL_CLASSES)
def test_dictionary_learning_import_reconstructs_like_dictionary_learning(
    dict_class, arch, tmp_path
):
    torch.manual_seed(0)
    theirs = _save_like_dictionary_learning(dict_class, tmp_path)
    reloaded = _their_loader(dict_class).from_pretrained(str(tmp_path / "ae.pt")).eval()
    ours = load_dictionary(tmp_path)
    x = torch.randn(200, D) * 2
    with torch.no_grad():
        expected, codes = theirs(x), theirs.encode(x)
        got = ours.decode(ours.encode(x), x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, reloaded(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode(x).to_dense(F), codes, atol=1e-5, rtol=1e-5)
    assert (codes > 0).any() and (codes == 0).any(), "the test must exercise the sparsity"
    assert ours.cfg.architecture == arch and ours.cfg.d_in == D and ours.cfg.d_sae == F
    assert ours.cfg.k == (K if arch == "topk" else 1)
    if dict_class != "AutoEncoderNew":
        assert ours.cfg.site == "blocks.3.hook_resid_post"


def test_dictionary_learning_jumprelu_needs_b_dec_folded(tmp_path):
    """Its JumpReLU encoder reads x, not x − b_dec: without the fold the output differs."""
    torch.manual_seed(1)
    theirs = _save_like_dictionary_learning("JumpReluAutoEncoder", tmp_path)
    ours = load_dictionary(tmp_path)
    x = torch.randn(200, D) * 2
    with torch.no_grad():
        ours.b_enc.copy_(theirs.b_enc)  # what a careless converter would do
        off = (ours.decode(ours.encode(x), x) - theirs(x)).abs().max().item()
    assert off > 1e-2


def test_dictionary_learning_reads_ae_safetensors_before_ae_pt(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    theirs = _save_like_dictionary_learning("AutoEncoder", tmp_path)
    save_file(
        {k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "ae.safetensors"
    )
    (tmp_path / "ae.pt").write_bytes(b"not a torch file")  # would be refused if read
    x = torch.randn(50, D)
    with torch.no_grad():
        ours = load_dictionary(tmp_path)
        torch.testing.assert_close(ours.decode(ours.encode(x), x), theirs(x), atol=1e-5, rtol=1e-5)


def test_dictionary_learning_refusals(tmp_path):
    torch.manual_seed(2)
    theirs = _save_like_dictionary_learning("AutoEncoderTopK", tmp_path / "ok")
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    bad = tmp_path / "transposed"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    torch.save(state | {"decoder.weight": state["decoder.weight"].T.clone()}, bad / "ae.pt")
    with pytest.raises(AimriError, match=r"ae\.pt': tensor 'decoder\.weight' has shape \[64, 16\]"):
        load_dictionary(bad)
    torch.save({k: v for k, v in state.items() if k != "b_dec"}, bad / "ae.pt")
    with pytest.raises(AimriError, match=r"lacks tensor 'b_dec' \[16\].*torch\.save"):
        load_dictionary(bad)
    torch.save(theirs, bad / "ae.pt")  # the whole module, pickled: never unpickled by us
    with pytest.raises(AimriError, match="never unpickles"):
        load_dictionary(bad)
    (bad / "config.json").write_text(json.dumps({"trainer": {"dict_class": "GatedAutoEncoder"}}))
    with pytest.raises(AimriError, match="'GatedAutoEncoder' is not supported"):
        load_dictionary(bad)


def _gemma_scope_params(seed: int) -> dict[str, np.ndarray]:
    """Random weights in Gemma Scope's params.npz layout (float32, as released)."""
    g = np.random.default_rng(seed)
    return {
        "W_enc": g.normal(size=(D, F)).astype(np.float32) * 0.5,
        "b_enc": g.normal(size=F).astype(np.float32) * 0.3,
        "W_dec": g.normal(size=(F, D)).astype(np.float32) * 0.5,
        "b_dec": g.normal(size=D).astype(np.float32),
        "threshold": g.uniform(0.2, 2.0, size=F).astype(np.float32),
    }


def _sae_lens_gemma_scope(path: Path, monkeypatch: pytest.MonkeyPatch):
    """SAELens's own Gemma Scope loading (`gemma_2_sae_huggingface_loader` through
    `SAE.from_pretrained_with_cfg_and_sparsity`), with the Hugging Face download pointed at
    our local params.npz and the width overridden to the toy's."""
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders

    def local_download(repo_id, filename, subfolder=None, **kw):
        assert filename == "params.npz"
        return str(path / filename)

    def converter(**kw):
        kw["cfg_overrides"] = {**kw["cfg_overrides"], "d_in": D, "d_sae": F}
        return loaders.gemma_2_sae_huggingface_loader(**kw)

    monkeypatch.setattr(loaders, "hf_hub_download", local_download)
    sae, _, _ = SAE.from_pretrained_with_cfg_and_sparsity(
        "gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_59", converter=converter
    )
    return sae.eval()


def test_gemma_scope_import_reconstructs_like_sae_lens(tmp_path, monkeypatch):
    params = _gemma_scope_params(0)
    np.savez(tmp_path / "params.npz", **params)
    theirs = _sae_lens_gemma_scope(tmp_path, monkeypatch)
    ours = load_dictionary(tmp_path)
    x = torch.randn(200, D, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        expected = theirs(x)
        got = ours.decode(ours.encode(x), x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The Gemma Scope tutorial's formula, in numpy: pre = x W_enc + b_enc (no b_dec subtracted),
    # acts = (pre > threshold) · relu(pre), recon = acts W_dec + b_dec.
    pre = x.numpy() @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * np.maximum(pre, 0)
    np.testing.assert_allclose(got.numpy(), acts @ params["W_dec"] + params["b_dec"], atol=1e-4)
    gated = (pre > 0) & (pre <= params["threshold"])
    assert gated.any() and (acts > 0).any(), "the test must exercise the jump, not just relu"
    assert ours.cfg.architecture == "jumprelu" and ours.cfg.site == ""
    torch.testing.assert_close(
        ours.activation.log_threshold.exp(), torch.from_numpy(params["threshold"])
    )
    with torch.no_grad():  # b_dec not folded into b_enc, as a careless converter would load it
        ours.b_enc.copy_(torch.from_numpy(params["b_enc"]))
        assert (ours.decode(ours.encode(x), x) - expected).abs().max().item() > 1e-2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"W_dec": "T"},
            r"tensor 'W_dec' has shape \[16, 64\], but the encoder implies \[64, 16\]",
        ),
        ({"b_dec": np.zeros(F, np.float32)}, r"tensor 'b_dec' has shape \[64\]"),
        ({"threshold": None}, r"lacks tensor 'threshold' \[64\].*Gemma Scope release"),
        ({"W_enc": np.zeros(D, np.float32)}, r"encoder matrix 'W_enc' is of shape \[16\]"),
    ],
)
def test_gemma_scope_refuses_mis_shaped_or_missing_tensors(tmp_path, edit, message):
    params = _gemma_scope_params(1)
    for name, value in edit.items():
        if value is None:
            del params[name]
        else:
            params[name] = params[name].T.copy() if isinstance(value, str) else value
    np.savez(tmp_path / "params.npz", **params)
    with pytest.raises(AimriError, match=f"params\\.npz'.*{message}"):
        load_dictionary(tmp_path)


def test_gemma_scope_refuses_object_arrays(tmp_path):
    """Reading them would unpickle: np.load(allow_pickle=False) refuses, and so do we."""
    params: dict[str, np.ndarray] = dict(_gemma_scope_params(2))
    params["threshold"] = np.array([{"not": "a tensor"}], dtype=object)
    np.savez(tmp_path / "params.npz", **params)  # type: ignore[arg-type]
    with pytest.raises(AimriError, match=r"params\.npz' could not be read as plain arrays"):
        load_dictionary(tmp_path)
