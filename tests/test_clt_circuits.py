"""Attribution through a cross-layer transcoder: the frozen replacement model sums each
feature's writes into every later layer. Its logits are exact; every edge (cross-layer ones
too) and every all-path effect equals the intervention in the replacement model; the edges
into a logit add up to it; a CLT without cross-layer decoders gives the per-layer graph; and
`aimri circuit` traces through a CLT folder."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from aimri.circuits.attribute import (
    AttributionSettings,
    NodeIndex,
    Targets,
    attribute,
    logit_vectors,
    sweep,
)
from aimri.circuits.replacement import Replacement, build_replacement
from aimri.dicts.clt import CLTConfig, CrossLayerTranscoder
from aimri.dicts.clt_formats import save_clt
from tests.test_circuits import PROMPT, _target_value, _without, ids_of, transcoders_for


def random_clt(model, arch: Any = "topk", seed=0, d_sae=64, k=4) -> CrossLayerTranscoder:
    cfg = CLTConfig(
        architecture=arch, n_layers=model.info.n_layers, d_model=model.info.d_model,
        d_sae=d_sae, k=k,
    )  # fmt: skip
    clt = CrossLayerTranscoder(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in clt.b_enc:
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
        clt.b_dec.copy_(torch.randn(clt.b_dec.shape, generator=g) * 0.1)
        if arch == "jumprelu":
            for i in range(cfg.n_layers):
                clt.jump_at(i).log_threshold.fill_(0.3)
    return clt.eval()


def clt_from_per_layer(tcs) -> CrossLayerTranscoder:
    """A CLT equal to per-layer transcoders: own-layer blocks copied, cross-layer ones zero."""
    first = tcs[0].cfg
    cfg = CLTConfig(n_layers=len(tcs), d_model=first.d_in, d_sae=first.d_sae, k=first.k)
    clt = CrossLayerTranscoder(cfg)
    with torch.no_grad():
        for layer, tc in enumerate(tcs):
            clt.W_enc[layer].copy_(tc.W_enc)
            clt.b_enc[layer].copy_(tc.b_enc)
            clt.W_dec[layer].zero_()
            clt.W_dec[layer][:, 0].copy_(tc.W_dec)
            clt.b_dec[layer].copy_(tc.b_dec)
    return clt.eval()


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_the_clt_replacement_reproduces_the_logits_and_its_errors_are_the_residual(
    tiny_model, arch
):
    model = tiny_model("llama")
    clt = random_clt(model, arch)
    ids = ids_of(model)
    rep = build_replacement(model, clt, ids)
    torch.testing.assert_close(rep.forward(), rep.logits, atol=2e-5, rtol=1e-4)
    # Error = true MLP output − the CLT's own reconstruction (its training decoder).
    L = model.info.n_layers
    read = [f"blocks.{i}.ln2.hook_normalized" for i in range(L)]
    read += [f"blocks.{i}.hook_mlp_out" for i in range(L)]
    acts = model.run(ids[None], read=read, logits=False).acts
    x = torch.stack([acts[s][0] for s in read[:L]]).float()
    y = torch.stack([acts[s][0] for s in read[L:]]).float()
    with torch.no_grad():
        recon = clt.decode(clt.encode_all(x))
    torch.testing.assert_close(rep.error, y - recon, atol=1e-5, rtol=1e-4)
    assert float(rep.error.abs().max()) > 0


def _linear_value(rep: Replacement, target: Targets, clamp: tuple[int, int, int] | None) -> float:
    assert isinstance(rep.transcoders, CrossLayerTranscoder)
    """The target in the replacement model whose active features follow their pre-activations
    linearly (what `through_features` assumes), with feature `clamp` held at 0."""
    st = rep.transcoders
    resid, vals, seen = rep.embed, {}, {}
    for layer in range(rep.n_layers):
        resid = resid + rep.attn[layer](rep.ln1[layer](resid))
        seen[layer] = resid
        x = rep.ln2[layer](resid)
        idx = rep.feat_idx[layer]
        enc = st.encoder(layer).detach()
        b = st.b_enc[layer].detach()[idx]
        v = (torch.einsum("pd,pkd->pk", x, enc[idx]) + b) * (rep.feat_val[layer] > 0)
        if clamp is not None and clamp[0] == layer:
            v = v.clone()
            v[clamp[1], clamp[2]] = 0
        vals[layer] = v
        resid = resid + rep.mlp_out(layer, x, vals)
    if target.layer == rep.n_layers:
        logits = rep.final_norm(resid)[-1]
        return float(logits @ target.vecs[0])
    x = rep.ln2[target.layer](seen[target.layer])[int(target.pos[0])]
    return float(target.vecs[0] @ x)


def test_every_edge_and_all_path_effect_equals_the_intervention(tiny_model):
    model = tiny_model("llama")
    clt = random_clt(model)
    rep = build_replacement(model, clt, ids_of(model))
    index = NodeIndex(rep, 1)
    K = rep.feat_val.shape[-1]
    g = torch.Generator().manual_seed(0)
    logit = int(rep.logits[-1].argmax())
    targets: list[tuple[tuple, Targets]] = [
        (("logit", logit), logit_vectors(rep, torch.tensor([logit])))
    ]
    for i in torch.randint(index.n_features, (8,), generator=g).tolist():
        layer, pos, slot = index.features_lps[i].tolist()
        if layer == 2:  # the last layer: its sources write through 0 and 1, cross-layer
            latent = int(rep.feat_idx[layer, pos, slot])
            vec = clt.encoder(layer).detach()[latent][None]
            targets.append(
                (("feature", layer, pos, latent), Targets(layer, torch.tensor([pos]), vec))
            )
    assert len(targets) >= 2
    for target, t in targets:
        edges, _ = sweep(rep, t)
        total, _ = sweep(rep, t, through_features=True)
        base = _target_value(rep, target)
        base_linear = _linear_value(rep, t, None)
        assert base_linear == pytest.approx(base, abs=1e-4)  # the linear model is the same there
        for j, p, s in index.features_lps.tolist():
            if j >= edges.shape[1] or p >= edges.shape[2]:
                continue
            measured = base - _target_value(_without(rep, "feature", (j, p, s)), target)
            assert measured == pytest.approx(float(edges[0, j, p, s]), abs=1e-5, rel=1e-3)
            measured = base_linear - _linear_value(rep, t, (j, p, s))
            assert measured == pytest.approx(float(total[0, j, p, s]), abs=1e-4, rel=1e-3)
        j, p = 0, int(edges.shape[2]) - 1
        measured = base - _target_value(_without(rep, "error", (j, p)), target)
        assert measured == pytest.approx(float(edges[0, j, p, K]), abs=1e-5, rel=1e-3)


def test_the_edges_into_a_logit_add_up_to_it(tiny_model):
    """Completeness: the demeaned logit = Σ direct edges of features, errors and tokens + what
    the constants (biases) alone give."""
    model = tiny_model("llama")
    rep = build_replacement(model, random_clt(model, seed=4), ids_of(model))
    logit = int(rep.logits[-1].argmax())
    edges, tok = sweep(rep, logit_vectors(rep, torch.tensor([logit])))
    nothing = dataclasses.replace(
        rep,
        feat_val=torch.zeros_like(rep.feat_val),
        error=torch.zeros_like(rep.error),
        embed=torch.zeros_like(rep.embed),
    )
    bias_only = _target_value(nothing, ("logit", logit))
    whole = _target_value(rep, ("logit", logit))
    total = float(edges.sum() + tok.sum()) + bias_only
    assert total == pytest.approx(whole, abs=1e-4, rel=1e-4)
    assert float(edges[0, 0, :, :-1].abs().sum()) > 0  # layer 0's features reach the logit


def test_a_clt_without_cross_layer_decoders_gives_the_per_layer_graph(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    settings = AttributionSettings(progress=False)
    ours = attribute(model, clt_from_per_layer(tcs), PROMPT, settings)
    theirs = attribute(model, tcs, PROMPT, settings)
    assert torch.equal(ours.features, theirs.features)
    torch.testing.assert_close(ours.influence, theirs.influence, atol=1e-7, rtol=1e-5)
    assert torch.equal(ours.node_mask, theirs.node_mask)
    assert torch.equal(ours.edges, theirs.edges)
    torch.testing.assert_close(ours.weights, theirs.weights, atol=1e-6, rtol=1e-5)
    assert ours.scores == pytest.approx(theirs.scores)


def test_cross_layer_writes_change_the_graph_and_validation_runs(tiny_model):
    from aimri.circuits.validate import validate

    model = tiny_model("llama")
    clt = clt_from_per_layer(transcoders_for(model))
    base = attribute(model, clt, PROMPT, AttributionSettings(progress=False))
    with torch.no_grad():
        clt.W_dec[0][:, 1:].normal_(0, 0.3)  # layer 0's features now also write layers 1-2
    graph = attribute(model, clt, PROMPT, AttributionSettings(progress=False))
    assert not torch.allclose(graph.influence, base.influence)
    rep = build_replacement(model, clt, graph.input_ids, freeze_bos=graph.bos_frozen)
    check = validate(model, rep, graph, n_edges=6, n_nodes=3)
    assert 0 < check.n <= 9
    for item in check.items:
        assert item.measured == item.measured  # a number, not NaN


def test_the_circuit_command_traces_through_a_clt_folder(tiny_model, tiny_model_dir, tmp_path):
    from aimri.circuits.run import trace
    from aimri.config import CircuitConfig, ModelConfig

    model = tiny_model("llama")
    save_clt(random_clt(model, "jumprelu"), tmp_path / "clt", model_name="tiny")
    cfg = CircuitConfig(
        prompt=PROMPT,
        transcoders=tmp_path / "clt",
        out=tmp_path / "graphs",
        model=ModelConfig(spec=str(tiny_model_dir("llama"))),
    )
    r = trace(cfg, model=model)
    assert r.record["graph"]["nodes"] and r.record["validation"]["n"] > 0
    assert 0 <= r.record["scores"]["replacement"] <= 1
    assert r.record["qk"] and r.record["qk"][0]["query"]


def test_a_frozen_bos_holds_every_layers_writes_and_the_logits_stay_exact(tiny_model):
    model = tiny_model("llama")
    clt = random_clt(model, seed=6)
    ids = torch.cat([torch.tensor([model.tokenizer.bos_token_id]), ids_of(model)])
    rep = build_replacement(model, clt, ids, freeze_bos=True)
    assert not rep.feat_val[:, 0].any() and not rep.error[:, 0].any()
    assert bool(rep.frozen_out[:, 0].abs().sum(-1).gt(0).all())
    torch.testing.assert_close(rep.forward(), rep.logits, atol=2e-5, rtol=1e-4)
    graph = attribute(model, clt, "<|bos|>" + PROMPT, AttributionSettings(progress=False))
    assert graph.bos_frozen and int(graph.features[:, 1].min()) >= 1
