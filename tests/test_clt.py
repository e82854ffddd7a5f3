"""Cross-layer transcoders: they train on a tiny model's layers from one pass (TopK, BatchTopK
across layers, JumpReLU), resume exactly, save in circuit-tracer's layout and load back to the
same reconstructions, and the sparse and dense code paths agree."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from aimri import AimriError
from aimri.config import CollectConfig, CorpusConfig, ModelConfig, OptimConfig, TrainConfig
from aimri.dicts.clt import CLTConfig, CrossLayerTranscoder
from aimri.dicts.clt_formats import is_clt_dir, load_clt, save_clt
from aimri.dicts.clt_train import train_clt
from aimri.dicts.transcoder_set import SITE_IN, SITE_OUT
from aimri.store.reader import ActivationStore

N_LAYERS = 3


@pytest.fixture(scope="module")
def store(tiny_model, tiny_model_dir, tmp_path_factory):
    from aimri import collect

    path = tmp_path_factory.mktemp("clt") / "store"
    collect(
        CollectConfig(
            out=path,
            model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
            corpus=CorpusConfig(max_tokens=32 * 64, ctx_len=32),
            sites=(SITE_IN, SITE_OUT),
            dtype="float32",
        ),
        model=tiny_model("llama"),
    )
    return path


def clt_train_config(store, out, arch: Any = "topk", steps=30, **kw) -> TrainConfig:
    optim = OptimConfig(batch_size=256, tokens=steps * 256, lr=1e-2)
    kw = {"expansion": 2, "k": 4, **kw}
    return TrainConfig(
        store=store, site=SITE_IN, site_out=SITE_OUT, out=out, optim=optim, cross_layer=True,
        architecture=arch, **kw,
    )  # fmt: skip


def held_out(store) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, N, D] inputs and outputs of every layer (the store's first 512 ordinary tokens)."""
    s = ActivationStore(store)
    sites = [f"blocks.{i}.ln2.hook_normalized" for i in range(N_LAYERS)]
    sites += [f"blocks.{i}.hook_mlp_out" for i in range(N_LAYERS)]
    xs = next(s.joint_batches(sites, 512, seed=123, exclude_sinks=True))
    return torch.stack(xs[:N_LAYERS]).float(), torch.stack(xs[N_LAYERS:]).float()


def fvu(recon: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (recon - y).pow(2).sum(-1).mean(-1) / (y - y.mean(1, keepdim=True)).pow(2).sum(-1).mean(
        -1
    )


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_a_clt_trains_saves_and_reconstructs_every_layer(store, tmp_path, arch):
    torch.manual_seed(0)
    (r,) = train_clt(clt_train_config(store, tmp_path / "clt", arch))
    assert r.steps == 30 and r.path == tmp_path / "clt"
    assert is_clt_dir(r.path)
    clt = load_clt(r.path)
    x, y = held_out(store)
    codes = clt.encode_all(x)
    recon = clt.decode(codes).detach()
    f = fvu(recon, y)
    assert bool((f < 0.75).all()), f"held-out FVU per layer {f.tolist()}"
    # The generic reconstruction attribution uses agrees with the training decoder.
    torch.testing.assert_close(clt.reconstruct(x, codes), recon, atol=1e-4, rtol=1e-4)
    # An untrained CLT of the same shape explains far less.
    fresh = CrossLayerTranscoder(clt.cfg).eval()
    assert bool((fvu(fresh.decode(fresh.encode_all(x)).detach(), y) > f).all())
    l0 = sum(float(c.l0()) for c in codes)
    if arch == "jumprelu":  # sparsity from the L0 penalty; thresholds learn (straight-through)
        assert 0 < l0 < 0.5 * N_LAYERS * clt.cfg.d_sae
        theta = clt.state_for_save()["threshold"]
        assert float((theta - 0.1).abs().max()) > 1e-3
    else:  # batchtopk: k per layer on average, more or fewer at a given token
        assert 0 < l0 <= 4 * N_LAYERS * (2.5 if arch == "batchtopk" else 1.0)


def test_sparse_and_dense_code_paths_agree_with_gradients(store):
    cfg = CLTConfig(n_layers=N_LAYERS, d_model=32, d_sae=64, k=4)
    x, y = held_out(store)
    grads = []
    for sparse in (True, False):
        clt = CrossLayerTranscoder(cfg, sparse_kernels=sparse, seed=3)
        out = clt(x, y)
        (out.mse.sum()).backward()
        grads.append((out.recon.detach(), clt.W_enc[1].grad, [w.grad for w in clt.W_dec]))
    (ra, ea, da), (rb, eb, db) = grads
    torch.testing.assert_close(ra, rb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ea, eb, atol=1e-4, rtol=1e-3)
    for a, b in zip(da, db, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_each_latent_writes_only_its_own_and_later_layers(store):
    cfg = CLTConfig(n_layers=N_LAYERS, d_model=32, d_sae=64, k=4)
    clt = CrossLayerTranscoder(cfg, seed=1).eval()
    x, _ = held_out(store)
    codes = clt.encode_all(x)
    base = clt.decode(codes).detach()
    with torch.no_grad():
        clt.W_dec[1].mul_(2)  # layer 1's latents: changes layers 1 and 2 only
    moved = (clt.decode(codes).detach() - base).abs().amax((1, 2))
    assert float(moved[0]) == 0 and bool((moved[1:] > 0).all())
    assert [len(w.shape) and w.shape[1] for w in clt.W_dec] == [3, 2, 1]


def test_resumed_training_equals_uninterrupted(store, tmp_path, monkeypatch):
    train_clt(clt_train_config(store, tmp_path / "whole", checkpoint_every=10))
    import aimri.dicts.clt_train as mod

    real = mod._step

    def die_at_17(state, *a, **kw):
        if state.step == 17:
            raise KeyboardInterrupt
        return real(state, *a, **kw)

    monkeypatch.setattr(mod, "_step", die_at_17)
    with pytest.raises(KeyboardInterrupt):
        train_clt(clt_train_config(store, tmp_path / "cut", checkpoint_every=10))
    monkeypatch.setattr(mod, "_step", real)
    (r,) = train_clt(clt_train_config(store, tmp_path / "cut", checkpoint_every=10))
    assert r.resumed_from_step == 10 and r.steps == 30
    a, b = load_clt(tmp_path / "whole"), load_clt(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in rows]
    assert steps == sorted(set(steps))
    assert not (tmp_path / "cut" / "checkpoint").exists()  # removed once finished
    with pytest.raises(AimriError, match="another configuration"):
        train_clt(clt_train_config(store, tmp_path / "cut", checkpoint_every=10, k=3))
    (again,) = train_clt(clt_train_config(store, tmp_path / "cut", checkpoint_every=10))
    assert again.resumed_from_step == again.steps == 30 and again.fvu != again.fvu  # nothing
    kept = clt_train_config(store, tmp_path / "kept", steps=5, keep_checkpoint=True)
    train_clt(kept)
    assert (tmp_path / "kept" / "checkpoint" / "state.json").is_file()


def test_the_files_are_circuit_tracers_layout_and_load_back(tmp_path):
    cfg = CLTConfig(architecture="jumprelu", n_layers=N_LAYERS, d_model=8, d_sae=12)
    clt = CrossLayerTranscoder(cfg, seed=2)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    save_clt(clt, tmp_path / "c", model_name="tiny")
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_dec_2.safetensors",
                     "W_enc_0.safetensors", "W_enc_1.safetensors", "W_enc_2.safetensors",
                     "aimri.json", "config.yaml"]  # fmt: skip
    from safetensors.torch import load_file

    enc1 = load_file(tmp_path / "c" / "W_enc_1.safetensors")
    assert sorted(enc1) == ["W_enc_1", "b_dec_1", "b_enc_1", "threshold_1"]
    assert tuple(enc1["W_enc_1"].shape) == (12, 8)
    dec0 = load_file(tmp_path / "c" / "W_dec_0.safetensors")["W_dec_0"]
    assert tuple(dec0.shape) == (12, 3, 8) and torch.equal(dec0, clt.W_dec[0].detach())
    text = (tmp_path / "c" / "config.yaml").read_text()
    assert 'model_kind: "cross_layer_transcoder"' in text
    assert 'feature_input_hook: "mlp.hook_in"' in text
    back = load_clt(tmp_path / "c")
    x = torch.randn(N_LAYERS, 20, 8)
    torch.testing.assert_close(
        back.decode(back.encode_all(x)), clt.eval().decode(clt.encode_all(x))
    )
    # Without our record (circuit-tracer's own files) it loads the same JumpReLU.
    (tmp_path / "c" / "aimri.json").unlink()
    bare = load_clt(tmp_path / "c")
    torch.testing.assert_close(bare.decode(bare.encode_all(x)), clt.decode(clt.encode_all(x)))
    # A damaged file is named.
    save_clt(clt, tmp_path / "d")
    (tmp_path / "d" / "W_dec_2.safetensors").write_bytes(b"junk")
    with pytest.raises(AimriError, match="W_dec_2"):
        load_clt(tmp_path / "d")


def test_bad_requests_are_refused(store, tmp_path):
    with pytest.raises(AimriError, match="globs"):
        train_clt(TrainConfig(store=store, site="blocks.0.ln2.hook_normalized",
                              site_out="blocks.0.hook_mlp_out", out=tmp_path / "x",
                              cross_layer=True))  # fmt: skip
    with pytest.raises(AimriError, match="relu"):
        train_clt(clt_train_config(store, tmp_path / "y", "relu"))
    with pytest.raises(AimriError, match="not a cross-layer transcoder"):
        load_clt(tmp_path)


def test_a_clt_folder_is_named_where_a_dictionary_or_set_is_expected(tmp_path):
    from aimri.dicts.formats import load_dictionary
    from aimri.dicts.transcoder_set import load_transcoder_set, load_transcoders

    clt = CrossLayerTranscoder(CLTConfig(n_layers=N_LAYERS, d_model=8, d_sae=12, k=2))
    save_clt(clt, tmp_path / "clt")
    with pytest.raises(AimriError, match="cross-layer transcoder"):
        load_dictionary(tmp_path / "clt")
    with pytest.raises(AimriError, match="cross-layer transcoder"):
        load_transcoder_set(tmp_path / "clt")
    assert isinstance(load_transcoders(tmp_path / "clt", n_layers=N_LAYERS), CrossLayerTranscoder)
    with pytest.raises(AimriError, match="covers 3 layers"):
        load_transcoders(tmp_path / "clt", n_layers=4)


def test_the_train_command_makes_a_clt(store, tmp_path, capsys):
    from aimri.cli import main

    out = tmp_path / "cli-clt"
    args = ["train", "--store", str(store), "--site", SITE_IN, "--site-out", SITE_OUT]
    args += ["--out", str(out), "--cross-layer", "--expansion", "2", "--k", "4"]
    args += ["--optim.batch-size", "256", "--optim.tokens", "2560"]
    assert main(args) == 0
    assert "trained 10 steps" in capsys.readouterr().out
    clt = load_clt(out)
    assert (clt.n_layers, clt.cfg.d_sae, clt.cfg.k) == (N_LAYERS, 64, 4)


@pytest.mark.slow
def test_data_parallel_clt_training_matches_one_process(store, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    train_clt(clt_train_config(store, tmp_path / "one", steps=10))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "aimri.cli", "train",
        "--store", str(store), "--site", SITE_IN, "--site-out", SITE_OUT,
        "--out", str(tmp_path / "two"), "--cross-layer", "--expansion", "2", "--k", "4",
        "--optim.batch-size", "256", "--optim.tokens", str(10 * 256), "--optim.lr", "1e-2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained 10 steps") == 1
    a, b = load_clt(tmp_path / "one"), load_clt(tmp_path / "two")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, atol=2e-4, rtol=1e-3, msg=name)
