"""Attribution graphs: the replacement model is exact, and the graph predicts interventions."""

from __future__ import annotations

import dataclasses

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
from aimri.circuits.graph import graph_json, influence_of, row_normalised
from aimri.circuits.replacement import Replacement, build_replacement
from aimri.config import DictConfig
from aimri.dicts.dictionary import Transcoder, build_dictionary
from aimri.errors import AimriError

PROMPT = "The quick brown fox jumps over"


def transcoders_for(model, d_sae=64, k=4, skip=False) -> list[Transcoder]:
    D = model.info.d_model
    out = []
    for layer in range(model.info.n_layers):
        cfg = DictConfig(
            d_in=D,
            d_sae=d_sae,
            k=k,
            transcoder=True,
            skip=skip,
            site=f"blocks.{layer}.ln2.hook_normalized",
            site_out=f"blocks.{layer}.hook_mlp_out",
        )
        tc = build_dictionary(cfg, seed=layer)
        if skip:
            with torch.no_grad():
                tc.W_skip.normal_(0, 0.05)  # type: ignore[union-attr]
        out.append(tc)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def ids_of(model, text=PROMPT):
    return model.tokenizer(text, return_tensors="pt").input_ids[0]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gpt2"])
def test_replacement_reproduces_the_models_logits(tiny_model, family):
    model = tiny_model(family)
    rep = build_replacement(model, transcoders_for(model), ids_of(model))
    torch.testing.assert_close(rep.forward(), rep.logits, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox"])
def test_families_that_cannot_be_frozen_are_named(tiny_model, family):
    model = tiny_model(family)
    with pytest.raises(AimriError, match=family):
        build_replacement(model, transcoders_for(model), ids_of(model))


def _target_value(rep: Replacement, target: tuple) -> float:
    """The target's pre-activation (without bias) or demeaned logit in the frozen model."""
    kind = target[0]
    if kind == "logit":
        logits = rep.forward()[-1]
        return float(logits[target[1]] - logits.mean())
    _, layer, pos, latent = target
    seen = {}

    def capture(i, resid):
        seen[i] = resid
        return resid

    rep.forward(edit_resid=capture)
    x = rep.ln2[layer](seen[layer])[pos]
    return float(rep.transcoders.encoder(layer).detach()[latent] @ x)


def _without(rep: Replacement, kind: str, where: tuple) -> Replacement:
    if kind == "feature":
        layer, pos, slot = where
        vals = rep.feat_val.clone()
        vals[layer, pos, slot] = 0
        return dataclasses.replace(rep, feat_val=vals)
    if kind == "error":
        err = rep.error.clone()
        err[where] = 0
        return dataclasses.replace(rep, error=err)
    emb = rep.embed.clone()
    emb[where] = 0
    return dataclasses.replace(rep, embed=emb)


@pytest.mark.parametrize("skip", [False, True])
def test_every_edge_equals_the_intervention_in_the_replacement_model(tiny_model, skip):
    model = tiny_model("llama")
    rep = build_replacement(model, transcoders_for(model, skip=skip), ids_of(model))
    index = NodeIndex(rep, 1)
    K = rep.feat_val.shape[-1]
    g = torch.Generator().manual_seed(0)
    targets: list[tuple] = [("logit", int(rep.logits[-1].argmax()))]
    for i in torch.randint(index.n_features, (6,), generator=g).tolist():
        layer, pos, slot = index.features_lps[i].tolist()
        if layer > 0:
            targets.append(("feature", layer, pos, int(rep.feat_idx[layer, pos, slot])))
    for target in targets:
        if target[0] == "logit":
            t = logit_vectors(rep, torch.tensor([target[1]]))
        else:
            _, layer, pos, latent = target
            vec = rep.transcoders.encoder(layer).detach()[latent][None]
            t = Targets(layer, torch.tensor([pos]), vec)
        edges, tok = sweep(rep, t)
        base = _target_value(rep, target)
        top = edges.shape[1]
        P1 = edges.shape[2]
        for _ in range(5):
            j = int(torch.randint(top, (1,), generator=g))
            p = int(torch.randint(P1, (1,), generator=g))
            s = int(torch.randint(K + 1, (1,), generator=g))
            if s == K:
                changed = _without(rep, "error", (j, p))
            else:
                changed = _without(rep, "feature", (j, p, s))
            measured = base - _target_value(changed, target)
            assert measured == pytest.approx(float(edges[0, j, p, s]), abs=1e-5, rel=1e-3)
        p = int(torch.randint(P1, (1,), generator=g))
        measured = base - _target_value(_without(rep, "token", (p,)), target)
        assert measured == pytest.approx(float(tok[0, p]), abs=1e-5, rel=1e-3)


def _dense_adjacency(rep: Replacement, index: NodeIndex, logit_ids) -> torch.Tensor:
    A = torch.zeros(index.n_nodes, index.n_nodes)

    def put(targets, rows):
        e, tok = sweep(rep, targets)
        P1 = e.shape[2]
        cols = index.of_slot[: targets.layer, :P1]
        take = cols >= 0
        A[rows[:, None], cols[take][None, :]] = e[:, take]
        A[rows[:, None], (index.token_start + torch.arange(P1))[None, :]] = tok

    put(logit_vectors(rep, logit_ids), index.logit_start + torch.arange(len(logit_ids)))
    for i, (layer, pos, slot) in enumerate(index.features_lps.tolist()):
        vec = rep.transcoders.encoder(layer).detach()[rep.feat_idx[layer, pos, slot]][None]
        put(Targets(layer, torch.tensor([pos]), vec), torch.tensor([i]))
    return A


def test_streamed_influence_equals_the_dense_matrix_power_series(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    graph = attribute(model, tcs, PROMPT, AttributionSettings(progress=False))
    rep = build_replacement(model, tcs, ids_of(model))
    index = NodeIndex(rep, len(graph.logit_ids))
    A = _dense_adjacency(rep, index, graph.logit_ids)
    w = torch.zeros(index.n_nodes)
    w[index.logit_start :] = graph.logit_probs
    torch.testing.assert_close(
        graph.influence, influence_of(row_normalised(A), w), atol=1e-7, rtol=1e-4
    )
    swept = (graph.influence > 0) | (torch.arange(index.n_nodes) >= index.logit_start)
    assert graph.n_edges_total == int((A[swept] != 0).sum())
    # Kept edges carry the full matrix's weights.
    t, s = graph.edges.T
    torch.testing.assert_close(graph.weights, A[t, s])


def test_pruned_graph_keeps_tokens_logits_and_only_edges_between_kept_nodes(tiny_model):
    model = tiny_model("llama")
    graph = attribute(model, transcoders_for(model), PROMPT, AttributionSettings(progress=False))
    n_fixed = graph.n_pos + len(graph.logit_ids)
    assert graph.node_mask[-n_fixed:].all()
    assert graph.node_mask[graph.edges].all()
    assert 0 < len(graph.edges) <= graph.n_edges_total
    assert 0 <= graph.scores.replacement <= 1 and 0 <= graph.scores.completeness <= 1
    assert abs(float(graph.logit_probs.sum())) <= 1


def test_graph_json_follows_the_circuit_tracer_schema(tiny_model):
    model = tiny_model("llama")
    graph = attribute(model, transcoders_for(model), PROMPT, AttributionSettings(progress=False))
    data = graph_json(graph, slug="fox", scan="tiny", labels={(0, 1): "a label"})
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["prompt_tokens"] == graph.tokens
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    for link in data["links"]:
        assert link["source"] in ids and link["target"] in ids
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert {"embedding", "logit"} <= kinds
    need = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"}
    assert all(need <= set(n) for n in data["nodes"])
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1


def test_bad_input_is_named(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    quiet = AttributionSettings(progress=False)
    with pytest.raises(AimriError, match="one transcoder per layer"):
        attribute(model, tcs[:-1], PROMPT, quiet)
    wide = transcoders_for(model)
    wide[1] = build_dictionary(DictConfig(d_in=16, d_sae=8, k=2, transcoder=True))  # type: ignore[assignment]
    with pytest.raises(AimriError, match="transcoder 1 maps 16"):
        attribute(model, wide, PROMPT, quiet)
    with pytest.raises(AimriError, match="not one"):
        attribute(model, tcs, PROMPT, AttributionSettings(progress=False, target="two words"))
    with pytest.raises(AimriError, match="context"):
        attribute(model, tcs, "fox " * 300, quiet)
    with pytest.raises(AimriError, match="between 0 and 1"):
        AttributionSettings(node_threshold=1.5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_qk_parts_sum_to_the_attention_score_and_reproduce_the_pattern(tiny_model, family):
    from aimri.circuits.qk import qk_attribution

    model = tiny_model(family)
    tcs = transcoders_for(model)
    graph = attribute(model, tcs, PROMPT, AttributionSettings(progress=False))
    rep = build_replacement(model, tcs, graph.input_ids)
    target = logit_vectors(rep, graph.logit_ids[:1])
    result = qk_attribution(model, rep, graph, target, "logit", n_heads=3, n_parts=10_000)
    assert result.heads and not result.note
    for head in result.heads:
        assert head.key_pos != head.query_pos  # information moved between positions
        assert sum(p.weight for p in head.query) == pytest.approx(head.score, abs=1e-4)
        assert sum(p.weight for p in head.key) == pytest.approx(head.score, abs=1e-4)
    moved = [abs(h.moved) for h in result.heads]
    assert moved == sorted(moved, reverse=True)


def test_validation_reports_agreement_for_the_strongest_edges(tiny_model):
    from aimri.circuits.validate import validate

    model = tiny_model("llama")
    tcs = transcoders_for(model)
    graph = attribute(model, tcs, PROMPT, AttributionSettings(progress=False))
    rep = build_replacement(model, tcs, graph.input_ids, freeze_bos=graph.bos_frozen)
    check = validate(model, rep, graph, n_edges=6, n_nodes=3)
    assert 0 < check.n <= 9
    edge_items = [i for i in check.items if i.kind == "edge"]
    weights = {
        (graph.node_id(int(s)), graph.node_id(int(t))): float(w)
        for (t, s), w in zip(graph.edges, graph.weights, strict=True)
    }
    for item in edge_items:
        assert item.predicted_direct == pytest.approx(-weights[(item.source, item.target)])
    assert -1 <= check.pearson_direct <= 1
    assert 0 <= check.sign_agreement <= 1


def test_circuit_command_writes_graph_json(tiny_model, tiny_model_dir, tmp_path):
    from aimri.circuits.run import trace
    from aimri.config import CircuitConfig, ModelConfig
    from aimri.dicts.formats import save_dictionary
    from aimri.dicts.transcoder_set import layer_dir

    model = tiny_model("llama")
    for layer, tc in enumerate(transcoders_for(model)):
        save_dictionary(tc, layer_dir(tmp_path / "tcs", layer))
    cfg = CircuitConfig(
        prompt=PROMPT,
        transcoders=tmp_path / "tcs",
        out=tmp_path / "graphs",
        model=ModelConfig(spec=str(tiny_model_dir("llama"))),
    )
    r = trace(cfg, model=model)
    assert r.path == tmp_path / "graphs" / "the-quick-brown-fox-jumps-over.json"
    assert r.record["graph"]["nodes"] and r.record["validation"]["n"] > 0
    assert r.record["qk"] and r.record["qk"][0]["query"]


def test_bfloat16_sweeps_give_nearly_the_same_edges(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    ids = ids_of(model)
    rep = build_replacement(model, tcs, ids)
    target = logit_vectors(rep, rep.logits[-1].topk(2).indices)
    exact, exact_tok = sweep(rep, target)
    fast, fast_tok = sweep(rep.with_sweep_dtype(torch.bfloat16), target)
    scale = exact.abs().max()
    assert (fast - exact).abs().max() < 0.02 * scale
    assert (fast_tok - exact_tok).abs().max() < 0.02 * exact_tok.abs().max()
    assert not torch.equal(fast, exact)  # the products really ran in bfloat16


def test_a_frozen_bos_is_no_node_and_the_logits_stay_exact(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    bos = model.tokenizer.bos_token_id
    ids = torch.cat([torch.tensor([bos]), ids_of(model)])
    rep = build_replacement(model, tcs, ids, freeze_bos=True)
    assert not rep.feat_val[:, 0].any() and not rep.error[:, 0].any()
    torch.testing.assert_close(rep.forward(), rep.logits, atol=2e-5, rtol=1e-4)
    prompt = model.tokenizer.bos_token + PROMPT
    graph = attribute(model, tcs, prompt, AttributionSettings(progress=False))
    assert graph.bos_frozen and int(graph.input_ids[0]) == bos
    assert not (graph.features[:, 1] == 0).any()
    kept = attribute(model, tcs, prompt, AttributionSettings(progress=False, freeze_bos=False))
    assert not kept.bos_frozen and (kept.features[:, 1] == 0).any()
