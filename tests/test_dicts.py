"""Dictionaries: sparse kernels equal the dense reference, files round-trip, training recovers
planted features, resumes exactly, and refuses bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aimri import AimriError
from aimri.config import DictConfig, OptimConfig, TrainConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.formats import load_dictionary, save_dictionary
from aimri.dicts.sparse import (
    dense_decode,
    gather_dot,
    scatter_rows,
    sparse_decode,
)
from aimri.dicts.toy import SITE, make_toy_store, recovery
from aimri.dicts.train import train

ARCHS = ("topk", "batchtopk", "jumprelu", "relu")


def test_sparse_kernels_match_dense_reference():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (40, 6), generator=g)
    vals = torch.rand(40, 6, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v, w: sparse_decode(idx, v, w), (vals, W))
    grad = torch.randn(40, 12, generator=g, dtype=torch.float64)
    a = torch.autograd.grad((sparse_decode(idx, vals, W) * grad).sum(), (vals, W))
    b = torch.autograd.grad((dense_decode(idx, vals, W) * grad).sum(), (vals, W))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    rows = torch.randn(40, 12, generator=g, dtype=torch.float64)
    dense = torch.zeros(40, 50, dtype=torch.float64).scatter_add(1, idx, vals.detach())
    torch.testing.assert_close(scatter_rows(idx, vals.detach(), rows, 50), dense.T @ rows)
    torch.testing.assert_close(
        gather_dot(idx, W.detach(), rows), torch.einsum("nkd,nd->nk", W.detach()[idx], rows)
    )


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_and_dense_paths_agree_on_loss_and_gradients(arch, transcoder):
    cfg = DictConfig(
        architecture=arch,
        d_in=24,
        d_sae=96,
        k=5,
        transcoder=transcoder,
        skip=transcoder,
        d_out=16 if transcoder else None,
    )
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(1))
    y = torch.randn(64, 16) if transcoder else None
    dead = torch.arange(96) % 3 == 0
    results = []
    for sparse in (True, False):
        d = build_dictionary(cfg, sparse_kernels=sparse, seed=3)
        with torch.no_grad():
            d.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        out = d(x, y, dead=dead)
        (out.fvu + out.aux).backward()
        results.append(
            (out.recon.detach(), {n: p.grad for n, p in d.named_parameters() if p.grad is not None})
        )
    (r1, g1), (r2, g2) = results
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g2.keys() and "W_enc" in g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("transcoder", [False, True])
def test_save_load_round_trip(arch, transcoder, tmp_path):
    cfg = DictConfig(
        architecture=arch,
        d_in=16,
        d_sae=64,
        k=4,
        transcoder=transcoder,
        skip=transcoder,
        d_out=12 if transcoder else None,
        site="blocks.1.hook_resid_post",
    )
    d = build_dictionary(cfg).eval()
    with torch.no_grad():
        d.b_enc.normal_()
        d.b_dec.normal_()
        if arch == "batchtopk":
            d.activation.threshold.fill_(0.3)  # type: ignore[union-attr]
    save_dictionary(d, tmp_path)
    e = load_dictionary(tmp_path)
    x = torch.randn(32, 16)
    torch.testing.assert_close(
        e.decode(e.encode(x), x), d.decode(d.encode(x), x), atol=1e-5, rtol=1e-5
    )
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert (
        raw["d_in"] == 16
        and raw["d_sae"] == 64
        and raw["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    )


def test_bad_dictionary_files_are_refused(tmp_path):
    d = build_dictionary(DictConfig(d_in=8, d_sae=32, k=2))
    save_dictionary(d, tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    save_file(
        {**tensors, "W_dec": tensors["W_dec"][:, :5].contiguous()},
        str(tmp_path / "sae_weights.safetensors"),
    )
    with pytest.raises(
        AimriError, match="tensor 'W_dec' has shape \\[32, 5\\], but cfg.json implies \\[32, 8\\]"
    ):
        load_dictionary(tmp_path)
    del tensors["b_enc"]
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(AimriError, match="lacks tensor 'b_enc'"):
        load_dictionary(tmp_path)
    with pytest.raises(AimriError, match="not a dictionary folder"):
        load_dictionary(tmp_path / "nope")
    with pytest.raises(
        AimriError, match="unknown architecture 'gated'.*topk, batchtopk, jumprelu, relu"
    ):
        DictConfig(architecture="gated", d_in=8, d_sae=32)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_store(tmp_path_factory.mktemp("toy") / "store", n_tokens=2**17)


def toy_config(toy, out, **kw) -> TrainConfig:
    base = {"store": toy.store, "site": SITE, "out": out, "expansion": 4, "k": 8, "exclude_sinks": False,
            "optim": OptimConfig(batch_size=1024), "checkpoint_every": 40}  # fmt: skip
    return TrainConfig(**(base | kw))


def test_topk_training_recovers_planted_features(toy, tmp_path):
    r = train(toy_config(toy, tmp_path / "sae"))
    d = load_dictionary(tmp_path / "sae")
    rec = recovery(d, toy.directions)
    assert rec.mean() >= 0.9, f"mean max cosine {rec.mean():.3f}"
    assert r.dead_fraction < 0.1 and r.l0 == pytest.approx(8.0)
    # The saved dictionary reads unscaled activations: its FVU on raw data matches training's.
    from aimri import ActivationStore

    x = ActivationStore(toy.store).load(SITE, 0)[:4096]
    assert d(x).fvu.item() == pytest.approx(r.fvu, abs=0.05)
    rows = [
        json.loads(line) for line in (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["step"] == r.steps and rows[0]["fvu"] > rows[-1]["fvu"]


def test_a_completed_run_drops_its_checkpoint_and_a_rerun_trains_nothing(toy, tmp_path):
    tokens = OptimConfig(batch_size=1024, tokens=45 * 1024)
    cfg = toy_config(toy, tmp_path / "sae", optim=tokens)
    first = train(cfg)
    assert not (tmp_path / "sae" / "checkpoint").exists(), "removed once training completed"
    weights = (tmp_path / "sae" / "sae_weights.safetensors").read_bytes()
    again = train(cfg)
    assert again.resumed_from_step == again.steps == first.steps and math.isnan(again.fvu)
    assert (tmp_path / "sae" / "sae_weights.safetensors").read_bytes() == weights
    with pytest.raises(AimriError, match="finished dictionary trained with another configuration"):
        train(toy_config(toy, tmp_path / "sae", optim=tokens, k=4))
    kept = train(toy_config(toy, tmp_path / "kept", optim=tokens, keep_checkpoint=True))
    state = json.loads((tmp_path / "kept" / "checkpoint" / "state.json").read_text())
    assert state["step"] == kept.steps


def test_resumed_training_equals_uninterrupted(toy, tmp_path, monkeypatch):
    cfg = toy_config(toy, tmp_path / "whole", optim=OptimConfig(batch_size=1024, tokens=100 * 1024))
    train(cfg)
    import aimri.dicts.trainer as train_mod

    cut = toy_config(toy, tmp_path / "cut", optim=OptimConfig(batch_size=1024, tokens=100 * 1024))
    real_step = train_mod._step

    def die_at_61(state, *a, **kw):
        if state.step == 61:
            raise KeyboardInterrupt
        return real_step(state, *a, **kw)

    monkeypatch.setattr(train_mod, "_step", die_at_61)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    monkeypatch.setattr(train_mod, "_step", real_step)
    r = train(cut)
    assert r.resumed_from_step == 40 and r.steps == 100
    a, b = load_dictionary(tmp_path / "whole"), load_dictionary(tmp_path / "cut")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)), "no metric row is duplicated by the resume"
    with pytest.raises(AimriError, match="another configuration"):
        train(toy_config(toy, tmp_path / "cut", k=4))


def test_nan_activations_stop_training_and_keep_the_checkpoint(toy, tmp_path, monkeypatch):
    import aimri.dicts.trainer as train_mod

    real = train_mod._scaled_share

    def poison(x, y, state, w):
        x, y = real(x, y, state, w)
        return (x * float("nan"), y) if state.step == 50 else (x, y)

    monkeypatch.setattr(train_mod, "_scaled_share", poison)
    with pytest.raises(AimriError, match="diverged at step 50.*last good checkpoint"):
        train(toy_config(toy, tmp_path / "nan"))
    state = json.loads((tmp_path / "nan" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 40


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_import_reconstructs_like_sparsify(tmp_path, transcode):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is a dev extra")
    torch.manual_seed(0)
    cfg = sparsify.SparseCoderConfig(
        num_latents=96, k=6, transcode=transcode, skip_connection=transcode
    )
    theirs = sparsify.SparseCoder(24, cfg)
    with torch.no_grad():  # non-trivial biases and skip: where careless converters go wrong
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    theirs.save_to_disk(tmp_path)
    ours = load_dictionary(tmp_path)
    x = torch.randn(50, 24)
    with torch.no_grad():
        expected = theirs(x).sae_out
        got = ours.decode(ours.encode(x), x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert ours.cfg.k == 6 and ours.cfg.transcoder == transcode


SAELENS_CASES = [
    ("TopKSAE", "TopKSAEConfig", {"k": 4}),
    ("StandardSAE", "StandardSAEConfig", {}),
    ("JumpReLUSAE", "JumpReLUSAEConfig", {}),
    ("Transcoder", "TranscoderConfig", {"d_out": 12, "apply_b_dec_to_input": False}),
    ("SkipTranscoder", "SkipTranscoderConfig", {"d_out": 12, "apply_b_dec_to_input": False}),
    (
        "JumpReLUSkipTranscoder",
        "JumpReLUSkipTranscoderConfig",
        {"d_out": 12, "apply_b_dec_to_input": False},
    ),
]


@pytest.mark.parametrize(("cls_name", "cfg_name", "kw"), SAELENS_CASES)
def test_round_trip_through_sae_lens(cls_name, cfg_name, kw, tmp_path):
    """theirs → ours → theirs, identical outputs at every hop (the installed sae-lens)."""
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is a dev extra")
    torch.manual_seed(0)
    theirs = getattr(sae_lens, cls_name)(getattr(sae_lens, cfg_name)(d_in=16, d_sae=64, **kw))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if hasattr(theirs, "threshold"):
            theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / "theirs"))
    ours = load_dictionary(tmp_path / "theirs")
    x = torch.randn(20, 16)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours.decode(ours.encode(x), x), expected, atol=1e-5, rtol=1e-5)
        save_dictionary(ours, tmp_path / "ours")
        again = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
        assert type(again).__name__ == cls_name
        torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=1e-5)


def test_matryoshka_makes_the_first_latents_reconstruct_alone(toy, tmp_path):
    from aimri import ActivationStore

    x = ActivationStore(toy.store).load(SITE, 1)[:4096]

    def prefix_fvu(path):
        d = load_dictionary(path)
        with torch.no_grad():
            recon = d.decode(d.encode(x).prefix(64), x)
        return float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    train(toy_config(toy, tmp_path / "plain"))
    train(toy_config(toy, tmp_path / "nested", matryoshka=(64, 128)))
    # 64 of 256 equally common features fit in the prefix: nesting lowers its error (0.67 vs 0.75).
    assert prefix_fvu(tmp_path / "nested") < 0.95 * prefix_fvu(tmp_path / "plain")
    with pytest.raises(AimriError, match="prefix sizes must increase"):
        train(toy_config(toy, tmp_path / "bad", matryoshka=(512,)))


def test_several_sites_from_one_pass_equal_training_each_alone(
    tiny_model, tiny_model_dir, tmp_path
):
    from aimri import CollectConfig, CorpusConfig, ModelConfig, collect
    from aimri.dicts.train import train_many

    sites = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")
    store = tmp_path / "store"
    model_cfg = ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu")
    collect(
        CollectConfig(
            out=store,
            model=model_cfg,
            corpus=CorpusConfig(max_tokens=32 * 64, ctx_len=32),
            sites=sites,
            dtype="float32",
        ),
        model=tiny_model("llama"),
    )
    optim = OptimConfig(batch_size=256, tokens=20 * 256)
    base = {"store": store, "expansion": 2, "k": 4, "optim": optim}
    joint = train_many(
        TrainConfig(site=sites[0], also_sites=sites[1:], out=tmp_path / "joint", **base)
    )
    assert [r.path for r in joint] == [tmp_path / "joint" / s for s in sites]
    for site in sites:
        train(TrainConfig(site=site, out=tmp_path / "alone" / site, **base))
        a, b = (
            load_dictionary(tmp_path / "joint" / site),
            load_dictionary(tmp_path / "alone" / site),
        )
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), (site, name)
    with pytest.raises(AimriError, match="call train_many"):
        train(TrainConfig(site=sites[0], also_sites=sites[1:], out=tmp_path / "x", **base))


def test_training_on_the_fly_from_a_model(tiny_model, tmp_path):
    from aimri import CorpusConfig
    from aimri.store.reader import ActivationStream

    m = tiny_model("llama")
    site = "blocks.1.hook_resid_post"
    stream = ActivationStream(
        m, CorpusConfig(max_tokens=32 * 48, ctx_len=32), [site], forward_batch=8
    )
    cfg = {
        "site": site,
        "expansion": 2,
        "k": 4,
        "optim": OptimConfig(batch_size=256, tokens=12 * 256),
        "checkpoint_every": 5,
    }
    r = train(TrainConfig(out=tmp_path / "a", **cfg), source=stream)
    assert r.steps == 12 and r.l0 == pytest.approx(4.0) and r.fvu < 1.0
    train(TrainConfig(out=tmp_path / "b", **cfg), source=stream)
    a, b = load_dictionary(tmp_path / "a"), load_dictionary(tmp_path / "b")
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    ), "deterministic"
    with pytest.raises(AimriError, match="no training data: pass --store"):
        train(TrainConfig(out=tmp_path / "c", **cfg))


def test_every_architecture_the_cli_offers_carries_its_facts():
    """An architecture is one Activation class plus one ACTIVATIONS line (and its name in
    config.Architecture, the CLI's choices): the two lists agree, and each class says how it is
    saved, under which SAELens name, and how it is trained."""
    import typing

    from aimri.config import Architecture
    from aimri.dicts.codes import ACTIVATIONS

    assert set(typing.get_args(Architecture)) == set(ACTIVATIONS)
    for name, kind in ACTIVATIONS.items():
        assert kind.saved_as in ACTIVATIONS and ACTIVATIONS[kind.saved_as].saved_as == kind.saved_as
        assert kind.saelens_name and kind.sparsity_coeff >= 0, name
