"""The report's first screen and its last: what was checked, what was found, how sure we are,
and the transparency record (what was tested, how, on which data, with which settings).

Every line here is drawn from a stage's own numbers, in the words its `Stage` declares; a stage
that did not run is not listed. Not here: the wording itself (each stage's module), the
measurements (the stages).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from aimri.ledger import consultations, read_ledger
from aimri.scanner.finding import SEVERITY_ORDER, Finding
from aimri.scanner.stage import Result, Stage, ran


def findings_from(results: dict[str, Result], stages: Sequence[Stage]) -> list[Finding]:
    """Every finding of the stages that ran, in stage order."""
    return [
        f
        for st in stages
        if st.findings is not None and ran(results.get(st.name))
        for f in st.findings(results[st.name])
    ]


class Checked(TypedDict):
    stage: str
    what: str


class Found(TypedDict):
    id: str
    title: str
    severity: str


class Sure(TypedDict):
    stage: str
    statement: str


class Summary(TypedDict):
    checked: list[Checked]
    found: list[Found]
    sure: list[Sure]


class TestRow(TypedDict):
    check: str
    method: str
    data: str
    settings: str


class Transparency(TypedDict):
    tests: list[TestRow]


class Ledger(TypedDict):
    total: int
    by_kind: dict[str, int]
    runs: int
    run_names: list[str]
    runs_root: str
    first: str | None
    last: str | None
    entries: list[dict[str, Any]]


def summary_from(
    results: dict[str, Result], findings: list[Finding], stages: Sequence[Stage]
) -> Summary:
    """{checked: [...], found: [...], sure: [...]}: each a list of short, numbered statements."""
    done = [(st, results[st.name]) for st in stages if ran(results.get(st.name))]
    return {
        "checked": [{"stage": st.name, "what": st.checked(r)} for st, r in done if st.checked],
        "found": [
            {"id": f.id, "title": f.title, "severity": f.severity}
            for f in sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])
        ],
        "sure": [{"stage": st.name, "statement": st.sure(r)} for st, r in done if st.sure],
    }


def transparency_from(
    config: dict[str, Any], results: dict[str, Result], stages: Sequence[Stage]
) -> Transparency:
    """One row per check that ran: what it tested, the method, the data and the settings, in
    words a lab could publish beside the report."""
    corpus = config.get("corpus", {})
    text = f"{corpus.get('source', '?')} corpus, seed {corpus.get('seed', '?')}"
    rows: list[TestRow] = []
    for st in stages:
        r = results.get(st.name)
        if st.method is None or not ran(r):
            continue
        assert r is not None
        m = st.method(r, config)
        data = st.data(r, text) if st.data else text
        rows.append({"check": m.check, "method": m.method, "data": data, "settings": m.settings})
    return {"tests": rows}


def ledger_section(run_dir: Path, model_sha256: str) -> Ledger:
    """How often this model's diagnostics were consulted: every run beside this one (same
    weights) and this run's own entries."""
    seen = consultations(run_dir.parent, model_sha256)
    return {
        "total": seen.total,
        "by_kind": seen.by_kind,
        "runs": len(seen.runs),
        "run_names": seen.runs,
        "runs_root": str(run_dir.parent),
        "first": seen.first,
        "last": seen.last,
        "entries": [dataclasses.asdict(e) for e in read_ledger(run_dir)],
    }
