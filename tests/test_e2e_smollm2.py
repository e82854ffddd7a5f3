"""End to end on the real built-in model, SmolLM2-135M-Instruct from its GGUF."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from aimri import CorpusConfig, ScanConfig, scan
from aimri.model.precision import cpu_has_bf16
from aimri.report.render import render_report
from aimri.scanner.stages import SECTIONS

pytestmark = pytest.mark.e2e


def test_builtin_model_loads_and_predicts(smollm2):
    assert (smollm2.info.family, smollm2.info.n_layers, smollm2.info.d_model) == ("llama", 30, 576)
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    logits = smollm2.run(ids).logits
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_physics_on_the_real_model(smollm2):
    ids = torch.randint(100, 40000, (2, 16), generator=torch.Generator().manual_seed(0))
    clean = smollm2.run(ids).logits
    sites = [s for s in smollm2.sites if not s.endswith("hook_pattern")]
    run = smollm2.run(ids, read=sites)
    assert torch.equal(run.logits, clean), "reading sites leaves logits unchanged"
    a = run.acts
    for layer in range(30):
        pre, mid, post = (a[f"blocks.{layer}.hook_resid_{k}"] for k in ("pre", "mid", "post"))
        torch.testing.assert_close(
            mid, pre + a[f"blocks.{layer}.hook_attn_out"], atol=1e-3, rtol=1e-5
        )
        torch.testing.assert_close(
            post, mid + a[f"blocks.{layer}.hook_mlp_out"], atol=1e-3, rtol=1e-5
        )
        if layer < 29:
            assert torch.equal(post, a[f"blocks.{layer + 1}.hook_resid_pre"])
    patched = smollm2.run(ids, patch={s: (lambda t: t.clone()) for s in sites}).logits
    torch.testing.assert_close(patched, clean, atol=1e-3, rtol=0)


def test_scan_writes_a_run_directory_and_report(smollm2, tmp_path):
    cfg = ScanConfig(
        corpus=CorpusConfig(max_tokens=1024, ctx_len=64),
        sites=(
            "blocks.0.hook_resid_post",
            "blocks.15.hook_resid_post",
            "blocks.15.hook_mlp_out",
            "blocks.29.hook_resid_post",
        ),
        runs_dir=tmp_path,
        name="e2e",
        dict_tokens=8192,
        n_features=48,
        tc_tokens=4096,
        concept_random=2,  # the cheapest random baseline that still has a spread
    )
    r = scan(cfg, model=smollm2)
    for name in ("run.json", "scan.json", "report.html"):
        assert (r.run_dir / name).is_file(), name
    doc = json.loads(r.scan_json.read_text())
    removed = {x["path"] for x in doc["storage"]["removed"]}
    assert removed == {"activations", "activations-dict"}
    assert not any((r.run_dir / name).exists() for name in removed), "caches are removed"
    assert not list(r.run_dir.rglob("checkpoint")), "finished training keeps no checkpoint"
    assert doc["schema_version"] == 2 and doc["model"]["weights_sha256"] == smollm2.weights_sha256
    assert doc["stages"]["activations"]["n_tokens"] == 1024
    read = doc["stages"]["activations"]["read"]
    assert read["dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")
    # one read fed all four consumers, each its own budget (trainers: a little more, as sinks
    # and special tokens are left out of training)
    assert read["consumers"]["statistics"] == 1024 and read["consumers"]["feature examples"] == 8192
    assert read["consumers"]["SAE"] >= 8192 and read["consumers"]["transcoders"] >= 4096
    assert read["n_tokens"] == max(read["consumers"].values())
    stats = {s["site"]: s for s in doc["stages"]["statistics"]["sites"]}
    assert (
        stats["blocks.29.hook_resid_post"]["norm_mean"]
        > stats["blocks.0.hook_resid_post"]["norm_mean"]
    )
    lens = doc["stages"]["logit_lens"]["layers"]
    assert [x["site"] for x in lens] == [
        "blocks.0.hook_resid_post",
        "blocks.15.hook_resid_post",
        "blocks.29.hook_resid_post",
    ]
    assert lens[-1]["agreement_with_model"] > 0.95, "the last layer's lens is the model's output"
    assert lens[-1]["next_token_accuracy"] > lens[0]["next_token_accuracy"]
    assert doc["stages"]["ground_truth"]["recovered_fraction"] >= 0.9
    dict_stage = doc["stages"]["dictionary"]
    assert dict_stage["site"] == "blocks.15.hook_resid_post" and dict_stage["training"]["steps"] > 0
    assert (r.run_dir / "dicts" / "blocks.15.hook_resid_post" / "sae_weights.safetensors").is_file()
    assert set(dict_stage["baselines"]) == {"pca", "random"}
    ev = dict_stage["eval"]
    assert ev["sparsity"]["l0"] <= 32.5 and 0 < ev["reconstruction_quality"]["fvu"] < 1
    assert (
        ev["reconstruction_quality"]["fvu"]
        < dict_stage["baselines"]["random"]["reconstruction_quality"]["fvu"]
    )
    feats = doc["stages"]["features"]
    assert [b["info"]["kind"] for b in feats["bases"]] == [
        "sae",
        "mlp_neurons",
        "random_dictionary",
        "residual",
        "random",
    ]
    assert feats["sampled"] == 48 and len(feats["features"]) == 48
    assert (r.run_dir / feats["catalog"]).is_file()
    scored = {(row["explainer"], row["scorer"]) for row in feats["summary"]}
    assert {("tokens", "simulation"), ("tokens", "rule"), ("logits", "simulation")} <= scored
    headline = [
        r for r in feats["summary"] if (r["explainer"], r["scorer"]) == ("tokens", "simulation")
    ]
    assert len(headline) == 5 and all(r["n"] > 0 for r in headline)  # sae and four baselines
    for row in feats["summary"]:
        assert 0 <= row["frac_above"] <= 1 and row["n"] > 0
    steering = doc["stages"]["steering"]
    assert "skipped" in steering or steering["verdict"].startswith(("Demonstrated", "No demo"))
    circuits = doc["stages"]["circuits"]
    assert circuits["transcoders"]["n_layers"] == 30
    held_out_fvu = circuits["transcoders"]["held_out_fvu"]
    assert len(held_out_fvu) == 30 and all(0 < f < 2 for f in held_out_fvu)
    assert [g["target"]["token"] for g in circuits["graphs"]] == [" Paris", " Spanish", "ik"]
    for g in circuits["graphs"]:
        assert (r.run_dir / "graphs" / f"{g['slug']}.json").is_file()
        assert g["sizes"]["pruned_edges"] > 0 and g["validation"]["n"] > 0
        assert 0 <= g["scores"]["completeness"] <= 1
    assert circuits["heads"]["induction"][0]["score"] > 0.3
    concepts = doc["stages"]["concepts"]["concepts"]
    assert len(concepts) == 6 and all(c["causal"] for c in concepts)
    assert (r.run_dir / "probes" / "probe_directions.safetensors").is_file()
    for c in concepts:
        assert 0 <= c["detector"]["auroc"] <= 1 and len(c["layers"]) == 30
    # The jailbreak framing is a surface difference any model reads (and a sanity check of
    # the probes): it must be separated far beyond random directions.
    jb = next(c for c in concepts if c["concept"] == "jailbreak")
    assert jb["detector"]["auroc"] > 0.9
    assert doc["stages"]["diff"] == {"skipped": "no --compare model given"}
    assert [e["kind"] for e in doc["ledger"]["entries"]] == ["scan", "probe"]
    assert {c["stage"] for c in doc["summary"]["checked"]} >= {"circuits", "concepts"}
    assert {t["check"] for t in doc["transparency"]["tests"]} >= {"safety concepts", "circuits"}
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["status"] == "complete" and set(run["timings_s"]) >= {
        "activations",
        "statistics",
        "logit_lens",
    }
    html = r.report.read_text()
    assert 'id="features-data"' in html and 'id="circuits-data"' in html
    assert (
        html.index('id="summary"') < html.index('id="concepts"') < html.index('id="transparency"')
    )
    assert "smollm2-135m" in html and "<svg" in html
    # Nothing is loaded from a network (the configuration shown as text may name a local URL).
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "fetch(" not in html and "@import" not in html

    # Text from the corpus or the model is escaped: a token string cannot inject markup.
    doc["stages"]["activations"]["sample_contexts"] = ["<script>alert('x')</script>"]
    doc["stages"]["logit_lens"]["tables"][0]["top_tokens"][0] = ["<img src=x onerror=alert(1)>"]
    hostile = render_report(doc, tmp_path / "hostile.html", SECTIONS).read_text()
    assert "<script>alert" not in hostile and "&lt;script&gt;alert" in hostile
    assert "<img src=x" not in hostile and "&lt;img src=x" in hostile

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed: the browser check is skipped")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom",
         f"file://{tmp_path / 'hostile.html'}"],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert "4 of 4 sites" in dom, "the page's script ran offline and filled in the site count"
    assert "<script>alert" not in dom and "<img src=" not in dom
