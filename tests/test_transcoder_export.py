"""Export to circuit-tracer's transcoder layout: the files hold our weights under its names and
shapes; what it cannot run exactly is refused; and circuit-tracer's own loader, reading the
export, encodes (and decodes) as our transcoders do.

The last check needs circuit-tracer: importable here, or in the Python named by
$AIMRI_CT_PYTHON (a separate venv, see benchmarks/requirements-circuits.txt); else it skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aimri import AimriError
from aimri.circuits.transcoder_export import export_transcoders
from aimri.config import DictConfig
from aimri.dicts.dictionary import Transcoder

D, F, N_LAYERS = 8, 24, 3


def make_set(arch: str = "relu", *, skip: bool = False, n: int = N_LAYERS) -> list[Transcoder]:
    out = []
    for layer in range(n):
        cfg = DictConfig(
            architecture=arch,  # type: ignore[arg-type]
            d_in=D,
            d_sae=F,
            k=4,
            transcoder=True,
            skip=skip,
            site=f"blocks.{layer}.ln2.hook_normalized",
            site_out=f"blocks.{layer}.hook_mlp_out",
        )
        tc = Transcoder(cfg, seed=layer)
        g = torch.Generator().manual_seed(100 + layer)
        with torch.no_grad():
            for p in tc.parameters():  # every tensor distinct, so a mix-up shows
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if arch == "jumprelu":
                tc.activation.log_threshold.copy_(torch.rand(F, generator=g).log())  # type: ignore[union-attr]
        out.append(tc.eval())
    return out


def read_config(path: Path) -> dict:
    """config.yaml as written: one `key: <JSON value>` per line (valid YAML)."""
    lines = (path / "config.yaml").read_text().splitlines()
    config = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in lines)}
    if importlib.util.find_spec("yaml") is not None:
        import yaml

        assert yaml.safe_load((path / "config.yaml").read_text()) == config
    return config


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_export_holds_our_weights_under_circuit_tracers_names_and_shapes(tmp_path, arch):
    tcs = make_set(arch, skip=True)
    out = export_transcoders(tcs, tmp_path / "ct", model_name="tiny-llama")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        *[f"layer_{i}.safetensors" for i in range(N_LAYERS)],
    ]
    config = read_config(out)
    assert config["model_kind"] == "transcoder_set"
    assert config["model_name"] == "tiny-llama"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == (
        "mlp.hook_in",
        "mlp.hook_out",
    )
    for layer, tc in enumerate(tcs):
        t = load_file(str(out / f"layer_{layer}.safetensors"))
        expected = {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"}
        expected |= {"activation_function.threshold"} if arch == "jumprelu" else set()
        assert set(t) == expected
        assert t["W_enc"].shape == (F, D) and t["W_dec"].shape == (F, D)
        assert t["b_enc"].shape == (F,) and t["b_dec"].shape == (D,)
        assert torch.equal(t["W_enc"], tc.W_enc.detach())
        assert torch.equal(t["W_dec"], tc.W_dec.detach())
        assert torch.equal(t["b_enc"], tc.b_enc.detach())
        assert torch.equal(t["b_dec"], tc.b_dec.detach())
        x = torch.randn(5, D)
        assert tc.W_skip is not None
        torch.testing.assert_close(x @ t["W_skip"].T, x @ tc.W_skip.detach())  # its x @ W_skipᵀ
        if arch == "jumprelu":
            theta = tc.activation.log_threshold.detach().exp()  # type: ignore[union-attr]
            torch.testing.assert_close(t["activation_function.threshold"], theta)


def test_a_shorter_export_removes_the_extra_layers_of_a_longer_one(tmp_path):
    export_transcoders(make_set(n=3), tmp_path, model_name="m")
    export_transcoders(make_set(n=2), tmp_path, model_name="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
    ]


def test_topk_is_refused_unless_allowed_and_then_recorded(tmp_path):
    with pytest.raises(AimriError, match="TopK"):
        export_transcoders(make_set("topk"), tmp_path / "a", model_name="m")
    assert not (tmp_path / "a" / "config.yaml").exists()
    out = export_transcoders(make_set("topk"), tmp_path / "b", model_name="m", allow_topk=True)
    config = read_config(out)
    assert (config["aimri_activation"], config["aimri_k"]) == ("topk", 4)
    assert "activation_function.threshold" not in load_file(str(out / "layer_0.safetensors"))


def test_what_circuit_tracer_cannot_hold_is_refused(tmp_path):
    tcs = make_set()
    with pytest.raises(AimriError, match="item L must read and write layer L"):
        export_transcoders(tcs[::-1], tmp_path, model_name="m")
    with pytest.raises(AimriError, match="no transcoders"):
        export_transcoders([], tmp_path, model_name="m")
    resid = DictConfig(
        architecture="relu",
        d_in=D,
        d_sae=F,
        k=4,
        transcoder=True,
        site="blocks.0.hook_resid_pre",
        site_out="blocks.0.hook_mlp_out",
    )
    with pytest.raises(AimriError, match="cannot be exported"):
        export_transcoders([Transcoder(resid)], tmp_path, model_name="m")
    wide = DictConfig(
        architecture="relu",
        d_in=D,
        d_sae=F,
        d_out=2 * D,
        k=4,
        transcoder=True,
        site="blocks.0.ln2.hook_normalized",
        site_out="blocks.0.hook_mlp_out",
    )
    with pytest.raises(AimriError, match="model width"):
        export_transcoders([Transcoder(wide)], tmp_path, model_name="m")
    assert not (tmp_path / "config.yaml").exists()


# Runs in circuit-tracer's Python: loads the export with its own loader and encodes/decodes.
CT_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file, save_file
    from circuit_tracer.utils.caching import load_transcoders_from_cache
    out, io = sys.argv[1], sys.argv[2]
    ts, config = load_transcoders_from_cache(out.rsplit("/", 1)[1], cache_dir=out.rsplit("/", 1)[0],
                                             device=torch.device("cpu"), lazy_decoder=False)
    if config.get("aimri_activation") == "topk":
        k = int(config["aimri_k"])
        def relu_topk(x):
            idx = x.topk(k, dim=-1).indices
            return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx)).relu()
        for t in ts:
            t.activation_function = relu_topk
    x = load_file(io)["x"]
    res = {"hooks": torch.tensor([ts.feature_input_hook == "mlp.hook_in",
                                  ts.feature_output_hook == "mlp.hook_out"])}
    for layer, t in enumerate(ts):
        with torch.no_grad():
            res[f"codes_{layer}"] = t.encode(x[layer]).contiguous()
            res[f"recon_{layer}"] = t(x[layer]).contiguous()
    save_file(res, io)
    """
)


def circuit_tracer_python() -> str | None:
    if importlib.util.find_spec("circuit_tracer") is not None:
        return sys.executable
    return os.environ.get("AIMRI_CT_PYTHON") or None


@pytest.mark.parametrize("arch,skip", [("relu", False), ("jumprelu", True), ("topk", True)])
def test_circuit_tracers_loader_encodes_as_we_do(tmp_path, arch, skip):
    python = circuit_tracer_python()
    if python is None:
        pytest.skip("circuit-tracer not installed here and $AIMRI_CT_PYTHON not set")
    tcs = make_set(arch, skip=skip)
    out = export_transcoders(tcs, tmp_path / "export", model_name="m", allow_topk=True)
    x = torch.randn(N_LAYERS, 16, D)
    io = tmp_path / "io.safetensors"
    save_file({"x": x}, str(io))
    subprocess.run([python, "-c", CT_SCRIPT, str(out), str(io)], check=True, timeout=300)
    res = load_file(str(io))
    assert bool(res["hooks"].all())
    for layer, tc in enumerate(tcs):
        with torch.no_grad():
            ours = tc(x[layer])
        codes = ours.codes.to_dense(F)
        assert int((codes != 0).sum()) > 0
        torch.testing.assert_close(res[f"codes_{layer}"], codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res[f"recon_{layer}"], ours.recon, atol=1e-5, rtol=1e-5)


# Runs in circuit-tracer's Python: loads our CLT with its `load_clt` and reconstructs; then
# writes a CLT of its own (`to_safetensors`) with its reconstructions, for us to load.
CT_CLT_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file, save_file
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt
    ours, theirs, io = sys.argv[1], sys.argv[2], sys.argv[3]
    x = load_file(io)["x"]
    clt = load_clt(ours, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                   device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    res = {}
    with torch.no_grad():
        res["codes"] = clt.encode(x).contiguous()
        res["recon"] = clt(x).contiguous()
        L, N, D = x.shape
        own = CrossLayerTranscoder(L, clt.d_transcoder, D, activation_function="jump_relu",
                                   lazy_decoder=False, device=torch.device("cpu"),
                                   dtype=torch.float32)
        g = torch.Generator().manual_seed(5)
        for p in own.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        own.activation_function.threshold.copy_(torch.rand(own.activation_function.threshold.shape, generator=g))
        own.to_safetensors(theirs)
        res["their_recon"] = own(x).contiguous()
    save_file(res, io)
    """
)


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_circuit_tracer_reads_our_clts_and_we_read_theirs(tmp_path, arch):
    python = circuit_tracer_python()
    if python is None:
        pytest.skip("circuit-tracer not installed here and $AIMRI_CT_PYTHON not set")
    from aimri.dicts.clt import CLTConfig, CrossLayerTranscoder
    from aimri.dicts.clt_formats import load_clt, save_clt

    cfg = CLTConfig(architecture=arch, n_layers=N_LAYERS, d_model=D, d_sae=F, k=4)
    clt = CrossLayerTranscoder(cfg, seed=1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        clt.threshold.fill_(0.3)  # batchtopk's inference threshold (unused by jumprelu)
    save_clt(clt.eval(), tmp_path / "ours", model_name="m")
    x = torch.randn(N_LAYERS, 16, D)
    io = tmp_path / "io.safetensors"
    save_file({"x": x}, str(io))
    subprocess.run(
        [python, "-c", CT_CLT_SCRIPT, str(tmp_path / "ours"), str(tmp_path / "theirs"), str(io)],
        check=True,
        timeout=300,
    )
    res = load_file(str(io))
    with torch.no_grad():
        codes = clt.encode_all(x)
        dense = torch.stack([c.to_dense(F) for c in codes])
        assert int((dense != 0).sum()) > 0
        torch.testing.assert_close(res["codes"], dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["recon"], clt.decode(codes), atol=1e-4, rtol=1e-4)
        theirs = load_clt(tmp_path / "theirs")
        torch.testing.assert_close(
            theirs.decode(theirs.encode_all(x)), res["their_recon"], atol=1e-4, rtol=1e-4
        )


# Runs in circuit-tracer's Python: its attribution graph of the tiny model through our CLT.
CT_CLT_GRAPH_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, sys.argv[4])
    from bench_circuits import ct_node_names, ct_tl_model
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    hf_dir, clt_dir, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tok_cfg = json.load(open(hf_dir + "/tokenizer_config.json"))  # saved by a newer transformers
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    json.dump(tok_cfg, open(hf_dir + "/tokenizer_config.json", "w"))
    clt = load_clt(clt_dir, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                   device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    model, diff = ct_tl_model(hf_dir, clt, ids)
    model.zero_positions = slice(0, 0)  # BOS features and error are nodes on both sides
    graph = attribute(torch.tensor(ids), model, max_n_logits=10, desired_logit_prob=0.95,
                      batch_size=256, max_feature_nodes=None)
    node_mask, edge_mask, _ = prune_graph(graph, 0.8, 0.98)
    names = ct_node_names(graph)
    t, s = edge_mask.nonzero().T
    w = graph.adjacency_matrix[t, s]
    print(json.dumps({"diff": diff, "nodes": [names[i] for i in node_mask.nonzero().flatten().tolist()],
                      "edges": [[names[a], names[b], float(v)] for a, b, v in
                                zip(t.tolist(), s.tolist(), w.tolist())]}))
    """
)


def test_circuit_tracer_traces_our_clt_to_the_same_graph(tmp_path, tiny_model, tiny_model_dir):
    python = circuit_tracer_python()
    if python is None:
        pytest.skip("circuit-tracer not installed here and $AIMRI_CT_PYTHON not set")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        from bench_circuits import aimri_node_names  # pyright: ignore[reportMissingImports]
    finally:
        sys.path.pop(0)
    from aimri.circuits.attribute import AttributionSettings, attribute, tokenize
    from aimri.dicts.clt_formats import save_clt
    from tests.test_clt_circuits import random_clt

    model = tiny_model("llama")
    clt = random_clt(model, "jumprelu")
    with torch.no_grad():
        for layer in range(clt.n_layers):
            clt.jump_at(layer).log_threshold.fill_(-2.0)  # more features active
    save_clt(clt, tmp_path / "clt", model_name="tiny")
    prompt = "<|bos|>The quick brown fox jumps over"  # circuit-tracer starts with BOS
    ids = tokenize(model, prompt).tolist()
    assert ids[0] == model.tokenizer.bos_token_id
    settings = AttributionSettings(progress=False, freeze_bos=False)
    graph = attribute(model, clt, prompt, settings)
    assert graph.n_features > 0
    names = aimri_node_names(graph)
    ours_nodes = {names[i] for i in graph.node_mask.nonzero().flatten().tolist()}
    ours = {
        (names[t], names[s]): w
        for (t, s), w in zip(graph.edges.tolist(), graph.weights.tolist(), strict=True)
    }
    bench = str(Path(__file__).parents[1] / "benchmarks")
    hf_dir = shutil.copytree(tiny_model_dir("llama"), tmp_path / "hf")
    args = [python, "-c", CT_CLT_GRAPH_SCRIPT, str(hf_dir), str(tmp_path / "clt")]
    out = subprocess.run(
        [*args, json.dumps(ids), bench], check=True, timeout=600, capture_output=True, text=True
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["diff"] < 1e-3  # its model of the tiny llama computes the same logits
    assert any(n.startswith("f") for n in ours_nodes)  # features are kept, not only errors
    assert set(theirs["nodes"]) == ours_nodes
    their_edges = {(t, s): w for t, s, w in theirs["edges"]}
    assert len(ours) > 100 and sum(n.startswith("f") for n in ours_nodes) >= 10
    assert their_edges.keys() == ours.keys()
    for key, w in ours.items():
        assert w == pytest.approx(their_edges[key], rel=1e-3, abs=1e-5), key
