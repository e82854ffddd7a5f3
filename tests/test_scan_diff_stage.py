"""The scan's diff stage (`--compare`) runs end to end on a tiny model: a model compared with
itself gives an empty diff through the stage's own wiring (ledger, texts, settings), and writes
exactly the fields scan.json's schema declares for it (generated from `ModelDiff` itself)."""

from __future__ import annotations

import json

import jsonschema

from aimri.config import CorpusConfig, ModelConfig, ScanConfig
from aimri.scanner.concepts import diff_stage
from aimri.scanner.layout import RunLayout, ScanRun
from aimri.scanner.schema import scan_schema


def test_the_scan_diff_stage_of_a_model_with_itself(tiny_model, tiny_model_dir, tmp_path):
    spec = str(tiny_model_dir("llama"))
    cfg = ScanConfig(
        model=ModelConfig(spec=spec, device="cpu"),
        corpus=CorpusConfig(max_tokens=256, ctx_len=32),
        compare=spec,
        runs_dir=tmp_path,
    )
    out = diff_stage(ScanRun(cfg, tiny_model("llama"), RunLayout(tmp_path)))
    assert out["base_spec"] == spec
    assert (tmp_path / "ledger.jsonl").is_file()
    assert "skipped" not in out
    (written, _skipped) = scan_schema()["properties"]["stages"]["properties"]["diff"]["anyOf"]
    assert set(out) == set(written["properties"]), "the keys written are the declared ones"
    jsonschema.validate(json.loads(json.dumps(out)), written)
