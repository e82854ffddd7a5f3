"""The check-up's commands end to end on tiny models: a run directory with schema-versioned JSON,
a report, and a ledger entry; `aimri diff A B` from the command line."""

from __future__ import annotations

import json
import shutil
from typing import get_type_hints

import torch
from safetensors.torch import load_file, save_file

from aimri.cli import main
from aimri.config import CorpusConfig, DiffConfig, ModelConfig
from aimri.ledger import read_ledger
from aimri.scanner.commands import diff
from aimri.scanner.document import Document

CORPUS = CorpusConfig(max_tokens=256, ctx_len=32)


def _changed_copy(src, dst, token: int = 7):
    """A copy of a saved tiny model whose unembedding row for `token` is pushed outward."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    tensors = load_file(str(weights))
    name = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    tensors[name] = tensors[name].clone()
    tensors[name][token] *= 4.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return dst


def test_diff_of_a_model_with_itself_writes_an_empty_run(tiny_model_dir, tmp_path):
    spec = str(tiny_model_dir("llama"))
    cfg = DiffConfig(
        base=ModelConfig(spec=spec, device="cpu"),
        other=ModelConfig(spec=spec, device="cpu"),
        corpus=CORPUS,
        runs_dir=tmp_path,
        name="self",
    )
    r = diff(cfg)
    doc = json.loads(r.json.read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "aimri.diff"
    typed = [k for k in get_type_hints(Document) if k != "storage"]  # storage: scan.json's
    assert list(doc) == typed, "written as typed, in that order"
    assert doc["stages"]["diff"]["empty"] is True
    assert [f["id"] for f in doc["findings"]] == ["diff-empty"]
    assert [e.kind for e in read_ledger(r.run_dir)] == ["diff"]
    html = r.report.read_text()
    assert "No difference beyond tolerance" in html and 'id="ledger"' in html


def test_cli_diff_finds_a_planted_output_change(tiny_model_dir, tmp_path, capsys):
    base = tiny_model_dir("llama")
    other = _changed_copy(base, tmp_path / "changed")
    argv = ["diff", str(base), str(other), "--base.device", "cpu", "--other.device", "cpu"]
    argv += ["--corpus.max-tokens", "256", "--corpus.ctx-len", "32"]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs"), "--name", "d"]) == 0
    assert "report:" in capsys.readouterr().out
    doc = json.loads((tmp_path / "runs" / "d" / "diff.json").read_text())
    stage = doc["stages"]["diff"]
    assert stage["empty"] is False
    assert stage["kl"]["promoted"][0]["id"] == 7
    assert "diff-outputs" in [f["id"] for f in doc["findings"]]
    assert torch.isfinite(torch.tensor(stage["kl"]["mean"]))


def test_probe_then_monitor_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    spec = str(tiny_model_dir("llama"))
    out = tmp_path / "probes"
    argv = ["probe", "--model.spec", spec, "--model.device", "cpu", "--out", str(out)]
    argv += ["--no-causal", "--neutral.max-tokens", "512", "--neutral.ctx-len", "32"]
    assert main(argv) == 0
    doc = json.loads((out / "probes.json").read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "aimri.probe"
    names = [c["concept"] for c in doc["stages"]["concepts"]["concepts"]]
    assert len(names) == 6 and [f["id"] for f in doc["findings"]] == [f"concept-{n}" for n in names]
    assert [e.kind for e in read_ledger(out)] == ["probe"]
    assert 'id="concepts"' in (out / "report.html").read_text()
    capsys.readouterr()

    log = tmp_path / "alerts.jsonl"
    argv = ["monitor", "--model.spec", spec, "--model.device", "cpu", "--probes", str(out)]
    argv += ["--prompts", "User: hello\nAssistant:", "--log", str(log), "--max-new-tokens", "4"]
    assert main([*argv, "--token-fpr", "0.5"]) == 0  # half of all tokens alert
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("alert ")]
    logged = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert printed and len(printed) == len(logged)
    assert {a["watch"] for a in logged} <= set(names)


def test_cli_audit_writes_hypotheses_beside_the_black_box(tiny_model_dir, tmp_path, capsys):
    base = tiny_model_dir("llama")
    other = _changed_copy(base, tmp_path / "changed")
    out = tmp_path / "audit"
    argv = ["audit", str(base), str(other), "--base.device", "cpu", "--other.device", "cpu"]
    assert main([*argv, "--k", "3", "--out", str(out)]) == 0
    doc = json.loads((out / "audit.json").read_text())
    white, black = doc["stages"]["audit"]["white_box"], doc["stages"]["audit"]["black_box"]
    assert white["method"] == "white-box" and black["method"] == "black-box"
    assert 1 <= len(white["hypotheses"]) <= 3 and not white["empty"]
    assert [e.kind for e in read_ledger(out)] == ["audit"]
    assert 'id="audit"' in (out / "report.html").read_text()
