"""The stage seam: a stage from another package, which needs the result of one of aimri's, is
one module plus one registry line (or one entry point in `aimri.stages`). The registry runs it after the stage it needs (and refuses
a registry without that stage); it reads that stage's result through the stage, typed; its
findings, summary line, transparency row, schema and report section come from its declaration.
Pyright checks every read of its result (`test_pyright_checks_a_stage_s_reads`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from aimri.config import ModelConfig, ScanConfig
from aimri.errors import AimriError
from aimri.report.render import render_report
from aimri.scanner.basics import STATISTICS
from aimri.scanner.layout import RunLayout, ScanRun
from aimri.scanner.schema import scan_schema
from aimri.scanner.stage import ordered
from aimri.scanner.stages import SECTIONS, STAGES
from aimri.scanner.summary import findings_from, summary_from, transparency_from
from tests.test_report import base_scan

MODULE = '''
"""A throwaway stage: the sites whose first token's norm dwarfs the rest's."""
from typing import TypedDict

from aimri.report.view import View
from aimri.scanner.basics import STATISTICS
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import Method, Stage


class SinksResult(TypedDict):
    sites: list[str]
    ratio: float


def sinks_stage(run: ScanRun) -> SinksResult:
    stats = STATISTICS.required(run)
    return {
        "sites": [s["site"] for s in stats["sites"] if s["bos_norm_ratio"] >= 5.0],
        "ratio": 5.0,
    }


SINKS = Stage[SinksResult](
    "sinks",
    sinks_stage,
    needs=(STATISTICS,),
    findings=lambda r: [
        Finding(id="sinks", title="Sinks", severity="info", summary=f"{len(r['sites'])} sites")
    ],
    checked=lambda r: f"attention sinks at {len(r['sites'])} sites",
    method=lambda r, c: Method("sinks", "norm at position 0 against the rest", f"{r['ratio']}x"),
    view=View("sinks.html.j2", lambda r: {"n": len(r["sites"])}, nav="Sinks", package="seam_pkg"),
)
'''
PARTIAL = '<h3 id="sinks">Sinks</h3><p>{{ view.n }} sink sites: {{ stage.sites | join(", ") }}</p>'


def _package(root: Path, module: str = MODULE) -> Path:
    pkg = root / "seam_pkg"
    (pkg / "templates").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(module))
    (pkg / "templates" / "sinks.html.j2").write_text(PARTIAL)
    return pkg


@pytest.fixture
def sinks(tmp_path, monkeypatch):
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import seam_pkg

    yield seam_pkg.SINKS
    sys.modules.pop("seam_pkg", None)


def test_a_stage_from_another_package_is_one_module_and_one_registry_line(sinks, tmp_path):
    registry = ordered(sinks, *STAGES)  # the one line; listed first, it runs after statistics
    names = [st.name for st in registry]
    assert names.index("sinks") == names.index("statistics") + 1
    assert [n for n in names if n != "sinks"] == [st.name for st in STAGES]

    doc = base_scan()
    run = ScanRun(ScanConfig(model=ModelConfig(spec="tiny")), None, RunLayout(tmp_path))  # type: ignore[arg-type]
    run.results["statistics"] = doc["stages"]["statistics"]  # what the stage before it left
    result = sinks.execute(run)
    assert result == {
        "sites": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        "ratio": 5.0,
    }
    assert run.results["sinks"] is result

    results = run.results
    (found,) = [f for f in findings_from(results, registry) if f.id == "sinks"]
    assert found.summary == "2 sites"
    summary = summary_from(results, [found], registry)
    assert {"stage": "sinks", "what": "attention sinks at 2 sites"} in summary["checked"]
    rows = transparency_from({"corpus": {"source": "builtin", "seed": 0}}, results, registry)
    assert {"check": "sinks", "method": "norm at position 0 against the rest",
            "data": "builtin corpus, seed 0", "settings": "5.0x"} in rows["tests"]  # fmt: skip

    schema = scan_schema(registry)["properties"]["stages"]["properties"]["sinks"]
    jsonschema.validate(result, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"sites": "blocks.0"}, schema)

    doc["stages"]["sinks"] = result
    html = render_report(doc, tmp_path / "report.html", (*SECTIONS, sinks)).read_text()
    assert "2 sink sites: blocks.0.hook_resid_post, blocks.1.hook_resid_post" in html
    assert 'href="#sinks"' in html


def test_a_stage_whose_needs_are_not_listed_is_refused(sinks, tmp_path):
    with pytest.raises(
        AimriError, match=r"stage 'sinks' needs \['statistics'\], which the registry"
    ):
        ordered(*[st for st in STAGES if st is not STATISTICS], sinks)
    run = ScanRun(ScanConfig(model=ModelConfig(spec="tiny")), None, RunLayout(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(AimriError, match=r"stage 'sinks' needs the results of \['statistics'\]"):
        sinks.execute(run)
    run.results["statistics"] = {"skipped": "turned off"}
    with pytest.raises(
        AimriError, match=r"'statistics' stage's result is needed but it was skipped"
    ):
        STATISTICS.required(run)


def test_two_stages_of_one_name_are_refused(sinks):
    with pytest.raises(AimriError, match=r"more than one stage named \['sinks'\]"):
        ordered(*STAGES, sinks, sinks)


def test_stages_that_need_each_other_are_refused(sinks):
    import dataclasses

    a = dataclasses.replace(STATISTICS, needs=(sinks,))
    with pytest.raises(AimriError, match="cycle"):
        ordered(a, dataclasses.replace(sinks, needs=(a,)))


def test_a_plugin_package_registers_its_stage_with_an_entry_point(tmp_path, monkeypatch):
    """The one line, for a package of its own: an entry point in `aimri.stages`."""
    from aimri.scanner.stages import BUILTIN, plugin_stages

    _package(tmp_path)
    dist = tmp_path / "seam_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: seam-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[aimri.stages]\nsinks = seam_pkg:SINKS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        (sinks,) = [st for st in plugin_stages() if st.name == "sinks"]
        names = [st.name for st in ordered(*BUILTIN, sinks)]
        assert names == [*(st.name for st in BUILTIN), "sinks"]
        (dist / "entry_points.txt").write_text("[aimri.stages]\nsinks = seam_pkg:NOT_THERE\n")
        with pytest.raises(
            AimriError, match=r"the stage 'sinks' \(seam_pkg:NOT_THERE\) registered"
        ):
            plugin_stages()
        (dist / "entry_points.txt").write_text("[aimri.stages]\nsinks = seam_pkg:sinks_stage\n")
        with pytest.raises(AimriError, match="is a function, not a Stage"):
            plugin_stages()
    finally:
        sys.modules.pop("seam_pkg", None)


@pytest.mark.skipif(shutil.which("pyright") is None, reason="pyright is not installed")
def test_pyright_checks_a_stage_s_reads(tmp_path):
    """A typo in a read of another stage's result, or of the stage's own, fails the types."""
    typo = MODULE.replace('stats["sites"]', 'stats["site"]').replace(
        "len(r['sites'])} sites\")", "len(r['site'])} sites\")"
    )
    pkg = _package(tmp_path, typo)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["pyright", "--pythonpath", sys.executable, str(pkg / "__init__.py")],
        capture_output=True, text=True, cwd=root, check=False,
    ).stdout  # fmt: skip
    assert '"site" is not a defined key in "StatisticsResult"' in out, out
    assert '"site" is not a defined key in "SinksResult"' in out, out
