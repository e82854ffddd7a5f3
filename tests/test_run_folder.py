"""What a scan leaves on disk: activation caches go at the end unless kept, and the report
says what was removed."""

from __future__ import annotations

from aimri.report.render import render_report
from aimri.scanner.layout import RunLayout
from aimri.scanner.run import tidy_run_folder
from aimri.scanner.stages import SECTIONS
from tests.test_report import base_scan

CACHES = ("activations", "activations-dict")


def _run_folder(tmp_path):
    assert [p.name for p in RunLayout(tmp_path).caches] == list(CACHES)
    for name in CACHES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard-00000.safetensors").write_bytes(b"x" * 2**20)
    (tmp_path / "dicts").mkdir()
    (tmp_path / "dicts" / "sae_weights.safetensors").write_bytes(b"w" * 2**19)
    return tmp_path


def test_caches_are_removed_and_the_rest_is_kept(tmp_path):
    run = _run_folder(tmp_path)
    storage = tidy_run_folder(RunLayout(run), keep_activations=False)
    assert [r["path"] for r in storage["removed"]] == list(CACHES)
    assert all(r["mb"] == 1.0 for r in storage["removed"])
    assert not any((run / name).exists() for name in CACHES)
    assert (run / "dicts" / "sae_weights.safetensors").is_file()
    assert storage["run_folder_mb"] == 0.5 and not storage["activations_kept"]
    doc = base_scan() | {"storage": storage}
    html = render_report(doc, tmp_path / "report.html", SECTIONS).read_text()
    assert "0.5 MB in the run folder" in html and "<code>activations-dict</code> (1.0 MB)" in html


def test_keep_activations_keeps_every_cache(tmp_path):
    run = _run_folder(tmp_path)
    storage = tidy_run_folder(RunLayout(run), keep_activations=True)
    assert storage["removed"] == [] and storage["activations_kept"]
    assert all((run / name).is_dir() for name in CACHES)
    assert storage["run_folder_mb"] == 2.5


def test_findings_are_typed_and_keep_their_json_shape():
    from aimri.scanner.stages import STAGES
    from aimri.scanner.summary import findings_from

    stats = {
        "sites": [{"site": "blocks.0.hook_resid_post", "bos_norm_ratio": 40.0, "top_dims": []}]
    }
    (f,) = findings_from({"statistics": stats}, STAGES)
    assert f.id == "bos-norm-outlier" and f.severity == "info"
    assert set(f.to_json()) == {"id", "title", "severity", "summary", "evidence"}


def test_every_scan_stage_declares_how_it_enters_the_document():
    """One module plus one registry line make a stage: each runs something, names itself once,
    and says what it checked; the audit is a section a command fills, with nothing to run."""
    from aimri.scanner.audit_section import AUDIT
    from aimri.scanner.stages import STAGES

    names = [st.name for st in STAGES]
    assert len(set(names)) == len(names) and names[0] == "activations"
    assert all(st.run is not None for st in STAGES) and AUDIT.run is None
    assert [st.name for st in STAGES if st.checked is None] == ["statistics"]


def test_the_shipped_schema_is_the_one_the_stage_types_generate_and_it_can_fail():
    import jsonschema
    import pytest

    from aimri.scanner.schema import SCHEMA_FILE, render, scan_schema

    assert SCHEMA_FILE.read_text() == render(), "run `python -m aimri.scanner.schema`"
    stages = scan_schema()["properties"]["stages"]["properties"]
    dictionary = stages["dictionary"]
    assert "fvu" not in dictionary["required"] and "eval" in dictionary["required"]
    doc = {"site": "blocks.1.hook_resid_post", "path": "dicts/x", "trained_here": False,
           "training": None, "eval_corpus": "builtin-held-out (seed 1)", "eval": {}, "baselines": {}, "eval_tokens": 64, "sinks": None}  # fmt: skip
    jsonschema.validate(doc, dictionary)
    for broken in ({k: v for k, v in doc.items() if k != "eval"}, {**doc, "eval_tokens": "64"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, dictionary)
    skipped = {"skipped": "turned off with --no-circuits"}
    jsonschema.validate(skipped, stages["circuits"])
