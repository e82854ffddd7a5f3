"""The scan's diff stage (`--compare`) runs end to end on a tiny model: a model compared with
itself gives an empty diff through the stage's own wiring (ledger, texts, settings); and its
typed result (`DiffResult`, from which scan.json's schema is generated) is `ModelDiff`'s fields
as written, so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

from aimri.config import CorpusConfig, ModelConfig, ScanConfig
from aimri.diff.models import ModelDiff
from aimri.scanner.concepts import DiffResult, diff_stage
from aimri.scanner.layout import RunLayout, ScanRun

ADDED = {"schema_version": int, "base_spec": str}
"""What the stage writes besides ModelDiff's fields: `diff_json`'s version, the --compare spec."""


def test_diff_result_is_model_diff_s_fields_as_written():
    hints = get_type_hints(ModelDiff)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(ModelDiff)}
    assert get_type_hints(DiffResult) == fields | ADDED
    assert DiffResult.__required_keys__ == set(fields) | set(ADDED), "every field is written"


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
    assert set(out) == set(get_type_hints(DiffResult)), "the keys written are the typed ones"
