"""Attention sinks and massive activations: a planted massive token is found, recorded and left
out, so that it dominates no metric (training batches, FVU, feature examples)."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

import aimri
from aimri.config import (
    CollectConfig,
    CorpusConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from aimri.corpus.contexts import take_contexts
from aimri.dicts.evaluate import evaluate
from aimri.dicts.train import train
from aimri.features.basis import RandomBasis
from aimri.features.pipeline import site_mean
from aimri.features.sources import StoreContexts
from aimri.features.stats import feature_statistics
from aimri.store.collect import collect
from aimri.store.reader import ActivationStore
from aimri.store.sinks import find_sinks, model_special_ids

SITE = "blocks.1.hook_resid_post"
CORPUS = CorpusConfig(max_tokens=32 * 40, ctx_len=32)


@pytest.fixture(scope="module")
def planted(tiny_model_dir, tmp_path_factory):
    """A tiny llama whose most frequent ordinary token has its embedding scaled 300×: a massive
    activation in every residual site wherever that token occurs."""
    root = tmp_path_factory.mktemp("planted-sink")
    src = tiny_model_dir("llama")
    shutil.copytree(src, root / "model")
    model = aimri.load_model(str(src), device="cpu")
    ids = take_contexts(model.tokenizer, CORPUS)
    special = set(model_special_ids(model.tokenizer))
    counts = Counter(t for t in ids[:, 1:].reshape(-1).tolist() if t not in special)
    token = counts.most_common(1)[0][0]
    weights = load_file(str(root / "model" / "model.safetensors"))
    weights["model.embed_tokens.weight"][token] *= 300.0
    save_file(weights, str(root / "model" / "model.safetensors"), metadata={"format": "pt"})
    m = aimri.load_model(str(root / "model"), device="cpu")
    cfg = CollectConfig(
        out=root / "store", model=ModelConfig(spec=str(root / "model"), device="cpu"),
        corpus=CORPUS, sites=("blocks.*.hook_resid_post",), dtype="float32", shard_contexts=8,
    )  # fmt: skip
    collect(cfg, model=m)
    n_planted = int((ids[:, 1:] == token).sum())
    return m, ActivationStore(cfg.out), token, n_planted, root


def test_the_planted_token_is_found_and_recorded_at_every_residual_site(planted):
    _, store, token, n_planted, _ = planted
    sinks = store.manifest["sinks"]
    assert sinks["n_identity"] >= 40  # position 0 of every context, at least
    for site in store.sites:
        s = sinks["sites"][site]
        assert s["massive_tokens"][0][0] == token, site
        assert s["n_massive"] == n_planted, site
        assert s["threshold"] > s["median_norm"] * 4.9


def test_training_batches_leave_the_sinks_out(planted):
    _, store, _, n_planted, _ = planted
    kept = torch.cat(list(store.batches(SITE, batch_size=1, shuffle=False, exclude_sinks=True)))
    every = torch.cat(list(store.batches(SITE, batch_size=1, shuffle=False)))
    assert len(kept) == len(every) - store.manifest["sinks"]["n_identity"] - n_planted
    norms = kept.norm(dim=-1)
    assert float(norms.max()) < 5 * float(norms.median())
    assert float(every.norm(dim=-1).max()) > 10 * float(norms.median())


def test_fvu_is_on_ordinary_tokens_with_the_sinks_beside(planted):
    m, store, _, n_planted, root = planted
    out = root / "sae"
    optim = OptimConfig(batch_size=64, tokens=64 * 40)
    train(TrainConfig(store=store.path, site=SITE, out=out, expansion=2, k=4, optim=optim))
    spec = ModelConfig(spec=str(root / "model"), device="cpu")
    ev = evaluate(EvalConfig(dictionary=out, model=spec, corpus=CORPUS, baselines=True), model=m)
    sinks = ev.metrics["sinks"]
    assert sinks["n_tokens"] >= n_planted + 40
    # The metrics are computed on tokens of ordinary size: the mean norm is near the median...
    x = torch.cat(list(store.batches(SITE, batch_size=1, shuffle=False, exclude_sinks=True)))
    assert ev.metrics["shrinkage"]["l2_norm_in"] < 2 * float(x.norm(dim=-1).median())
    # ...while FVU with the sinks in would be another number, ruled by a few tokens.
    assert sinks["fvu_all_tokens"] != pytest.approx(ev.metrics["reconstruction_quality"]["fvu"])
    # PCA is fitted on the same ordinary tokens, so its FVU is a fair bar (below random's).
    fvu = {k: v["reconstruction_quality"]["fvu"] for k, v in ev.baselines.items()}
    assert fvu["pca"] < fvu["random"]


def test_no_random_direction_fires_on_the_planted_token(planted):
    m, store, token, _, _ = planted
    source = StoreContexts(store, SITE)
    basis = RandomBasis(SITE, site_mean(source), n_features=16)
    fs = feature_statistics(basis, m, source)
    text = m.tokenizer.decode([token])
    for f in fs.features:
        for e in f.of_kind("top"):
            peak = e.acts.index(e.max_act)
            assert e.tokens[peak] != text or e.max_act == 0
    # With sinks kept in, every random direction's top example is the planted token.
    kept = StoreContexts(store, SITE, exclude_sinks=False)
    fs_kept = feature_statistics(basis, m, kept)
    peaks = [
        e.tokens[e.acts.index(e.max_act)] for f in fs_kept.features for e in f.of_kind("top")[:1]
    ]
    assert peaks.count(text) >= len(peaks) // 3  # the half whose sign points its way


def test_the_rule_on_hand_made_norms():
    tokens = torch.tensor([5, 7, 7, 9, 7, 3] * 20)
    positions = torch.arange(len(tokens)) % 6
    acts = torch.ones(len(tokens), 4) + 0.01 * torch.randn(
        len(tokens), 4, generator=torch.Generator().manual_seed(0)
    )
    acts[3] *= 40.0  # one massive token (position 3)
    mask = find_sinks(tokens, positions, [acts], special=[9])
    assert mask.sink[0] and mask.by_identity[0]  # position 0
    assert mask.sink[3] and mask.by_identity[3]  # token 9 is special
    assert not mask.sink[1] and not mask.sink[2]
    acts2 = acts.clone()
    acts2[8] *= 40.0  # a massive ordinary token: found by its norm alone
    mask2 = find_sinks(tokens, positions, [acts2], special=[])
    assert mask2.sink[8] and not mask2.by_identity[8]
    assert int(mask2.sink.sum()) == 20 + 1 + 1  # position 0 ×20, token at 3 (×40), token at 8
