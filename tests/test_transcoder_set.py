"""Transcoder sets: one transcoder per layer from one pass, each equal to training it alone; the
loader returns them in layer order and refuses incomplete or mixed sets."""

from __future__ import annotations

import shutil

import pytest
import torch

from aimri import AimriError
from aimri.config import CollectConfig, CorpusConfig, ModelConfig, OptimConfig, TrainConfig
from aimri.dicts.dictionary import Transcoder
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import train, train_many
from aimri.dicts.transcoder_set import (
    SITE_IN,
    SITE_OUT,
    load_transcoder_set,
    pair_by_layer,
    set_recipe,
)

N_LAYERS = 3  # the tiny models' depth


@pytest.fixture(scope="module")
def store(tiny_model, tiny_model_dir, tmp_path_factory):
    from aimri import collect

    path = tmp_path_factory.mktemp("tc") / "store"
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


def base(**kw):
    optim = OptimConfig(batch_size=256, tokens=24 * 256, lr=1e-2)
    return {"expansion": 2, "k": 4, "optim": optim, **kw}


@pytest.fixture(scope="module")
def trained_set(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("tc") / "set"
    results = train_many(
        TrainConfig(store=store, site=SITE_IN, site_out=SITE_OUT, out=out, **base())
    )
    return out, results


def test_all_layers_from_one_pass_equal_each_layer_trained_alone(store, trained_set, tmp_path):
    out, results = trained_set
    assert [r.path for r in results] == [out / f"layer_{i}" for i in range(N_LAYERS)]
    assert all(r.steps == 24 and r.fvu < 1.0 for r in results)
    for layer in range(N_LAYERS):
        site_in, site_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        alone = tmp_path / f"alone{layer}"
        train(TrainConfig(store=store, site=site_in, site_out=site_out, out=alone, **base()))
        a, b = load_dictionary(out / f"layer_{layer}"), load_dictionary(alone)
        assert (a.cfg.site, a.cfg.site_out) == (site_in, site_out)
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), (layer, name)


def test_the_loader_returns_the_set_in_layer_order(trained_set):
    out, _ = trained_set
    tcs = load_transcoder_set(out, n_layers=N_LAYERS)
    assert [type(t) for t in tcs] == [Transcoder] * N_LAYERS
    assert [t.cfg.site for t in tcs] == [f"blocks.{i}.ln2.hook_normalized" for i in range(3)]
    with pytest.raises(AimriError, match=r"layers 3-4 are missing"):
        load_transcoder_set(out, n_layers=5)


def test_the_loader_refuses_a_set_with_a_missing_layer(trained_set, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(trained_set[0], out)
    shutil.rmtree(out / "layer_1")
    with pytest.raises(AimriError, match=r"incomplete: layers 1 are missing \(it has 0, 2\)"):
        load_transcoder_set(out)


def test_the_loader_refuses_mixed_widths_and_misplaced_members(store, trained_set, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(trained_set[0], out)
    shutil.rmtree(out / "layer_2")
    wide = base(expansion=4)
    site_in, site_out = "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"
    train(TrainConfig(store=store, site=site_in, site_out=site_out, out=out / "layer_2", **wide))
    with pytest.raises(AimriError, match="inconsistent: layer 2 has"):
        load_transcoder_set(out)
    shutil.rmtree(out / "layer_2")
    shutil.copytree(out / "layer_1", out / "layer_2")
    with pytest.raises(AimriError, match="not of layer 2"):
        load_transcoder_set(out)
    with pytest.raises(AimriError, match="no layer_<L> folders"):
        load_transcoder_set(tmp_path)


def test_globs_pair_by_layer_and_refuse_what_cannot_pair(store, tmp_path):
    sites = [f"blocks.{i}.{k}" for i in range(3) for k in ("ln2.hook_normalized", "hook_mlp_out")]
    pairs = pair_by_layer(SITE_IN, SITE_OUT, sites)
    assert [(p.layer, p.site_in) for p in pairs] == [(i, sites[2 * i]) for i in range(3)]
    with pytest.raises(AimriError, match=r"cover different layers \(layers 0, 2"):
        pair_by_layer(SITE_IN, "blocks.1.hook_mlp_out", sites)
    with pytest.raises(AimriError, match="several sites in one layer"):
        pair_by_layer("blocks.*", SITE_OUT, sites)
    with pytest.raises(AimriError, match="also pass --site-out"):
        train_many(TrainConfig(store=store, site=SITE_IN, out=tmp_path / "x", **base()))
    with pytest.raises(AimriError, match="call train_many"):
        train(TrainConfig(store=store, site=SITE_IN, site_out=SITE_OUT, out=tmp_path / "x"))


def test_a_set_trains_on_the_fly_from_a_model(tiny_model, tmp_path):
    from aimri.store.reader import ActivationStream

    stream = ActivationStream(
        tiny_model("llama"), CorpusConfig(max_tokens=32 * 48, ctx_len=32), [SITE_IN, SITE_OUT]
    )
    cfg = TrainConfig(site=SITE_IN, site_out=SITE_OUT, out=tmp_path / "set", **base())
    results = train_many(cfg, source=stream)
    assert len(results) == N_LAYERS and all(r.fvu < 1.0 for r in results)
    assert len(load_transcoder_set(tmp_path / "set", n_layers=N_LAYERS)) == N_LAYERS


def test_the_cpu_recipe_trains_a_set(store, tmp_path):
    recipe = set_recipe(tmp_path / "set", store=store)
    assert recipe.tokens == 16_384 and recipe.train.optim.tokens == 3 * 16_256
    results = train_many(recipe.train)
    assert [r.steps for r in results] == [95] * N_LAYERS
    assert all(r.fvu < 1.0 for r in results)
    gpu = set_recipe(tmp_path / "g", gpu=True)
    assert gpu.tokens // gpu.train.optim.batch_size >= 512 and gpu.train.store is None
