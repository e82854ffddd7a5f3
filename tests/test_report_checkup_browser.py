"""The check-up's pages in a real browser (Debian's headless chromium): a probe report and a diff
report, made by the commands on tiny models, open offline, summary first, with their charts, and
no concept label or token string becomes markup."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from aimri.config import CorpusConfig, DiffConfig, ModelConfig, ProbeConfig
from aimri.report.render import render_report
from aimri.scanner.commands import diff, probe
from aimri.scanner.stages import SECTIONS
from tests.test_commands_checkup import _changed_copy
from tests.test_report import HOSTILE
from tests.test_report_browser import dump_dom

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian chromium not installed (apt-get install chromium): browser checks skipped",
)
CORPUS = CorpusConfig(max_tokens=512, ctx_len=32)


def _hostile_page(doc: dict, path: Path) -> Path:
    """Re-render `doc` with attacker-controlled strings where text from data is shown."""
    stage = doc["stages"].get("concepts") or doc["stages"]["diff"]
    if "concepts" in doc["stages"]:
        for c, bad in zip(stage["concepts"], HOSTILE, strict=False):
            c["positive_label"] = bad
            c["finding"] = bad
    else:
        stage["kl"]["promoted"][0]["token"] = HOSTILE[2]
        stage["kl"]["top_contexts"][0]["context"] = HOSTILE[1]
    return render_report(doc, path, SECTIONS)


def _check(path: Path, profile: Path, section: str, hostile: bool = False) -> str:
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    dom, _ = dump_dom(path.as_uri(), profile)
    order = [dom.index(f'id="{s}"') for s in ("summary", "findings", section, "transparency")]
    assert order == sorted(order), "summary first, then the section, transparency last"
    assert "<img" not in dom.lower() and "<script>alert" not in dom
    if hostile:
        assert "&lt;img src=x onerror=" in dom, "the hostile strings are on the page, as text"
    return dom


def test_probe_report_in_a_browser(tiny_model_dir, tmp_path):
    spec = ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu")
    r = probe(ProbeConfig(model=spec, out=tmp_path / "p", causal=False, neutral=CORPUS))
    dom = _check(r.report, tmp_path / "profile", "concepts")
    assert dom.count('class="chart"') >= 2, "AUROC by layer and detector vs baselines"
    doc = json.loads(r.json.read_text())
    hostile = _hostile_page(doc, tmp_path / "hostile.html")
    _check(hostile, tmp_path / "profile2", "concepts", hostile=True)


def test_diff_report_in_a_browser(tiny_model_dir, tmp_path):
    base = tiny_model_dir("llama")
    other = _changed_copy(base, tmp_path / "changed")
    cfg = DiffConfig(
        base=ModelConfig(spec=str(base), device="cpu"),
        other=ModelConfig(spec=str(other), device="cpu"),
        corpus=CORPUS,
        runs_dir=tmp_path,
        name="d",
    )
    r = diff(cfg)
    dom = _check(r.report, tmp_path / "profile", "diff")
    assert "How much each layer's residual stream changed" in dom
    doc = json.loads(r.json.read_text())
    _check(_hostile_page(doc, tmp_path / "hostile.html"), tmp_path / "profile2", "diff", True)
