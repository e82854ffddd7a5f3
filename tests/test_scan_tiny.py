"""The whole scan, every stage wired to the next, on a tiny random model in seconds: what the
end-to-end test on SmolLM2 checks for the numbers, this checks for the plumbing (the run
folder's layout, the stages' hand-offs, the report), on every commit."""

from __future__ import annotations

import json
from importlib.resources import files

import jsonschema

from aimri.config import CorpusConfig, ModelConfig, ScanConfig
from aimri.scanner.run import scan


def test_a_scan_of_a_tiny_model_runs_every_stage_and_tidies_its_folder(tiny_model_dir, tmp_path):
    cfg = ScanConfig(
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        corpus=CorpusConfig(max_tokens=2048, ctx_len=32),
        runs_dir=tmp_path,
        name="tiny",
        dict_tokens=4096,
        tc_tokens=2048,
        n_features=8,
        concept_random=2,
    )
    r = scan(cfg)
    doc = json.loads(r.scan_json.read_text())
    stages = doc["stages"]
    assert list(stages) == [
        "activations", "statistics", "logit_lens", "ground_truth", "dictionary", "features",
        "steering", "circuits", "concepts", "diff",
    ]  # fmt: skip
    assert (r.run_dir / stages["dictionary"]["path"] / "sae_weights.safetensors").is_file()
    assert (r.run_dir / stages["features"]["catalog"]).is_file()
    assert len(stages["features"]["features"]) == 8
    assert (r.run_dir / stages["concepts"]["directions"]).is_dir()
    assert {x["path"] for x in doc["storage"]["removed"]} == {
        "activations", "activations-dict"
    }  # fmt: skip
    assert not list(r.run_dir.rglob("checkpoint")) and not (r.run_dir / "activations").exists()
    assert set(doc["timings_s"]) >= set(stages)
    schema = json.loads((files("aimri.scanner") / "scan.schema.json").read_text())
    jsonschema.validate(doc, schema)  # the schema shipped with the package
    assert (
        r.report.is_file()
        and "tiny" in json.loads((r.run_dir / "run.json").read_text())["config"]["name"]
    )
