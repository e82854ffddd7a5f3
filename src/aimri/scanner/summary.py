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
from aimri.scanner.stage import Config, Registered, Results, TestRow


def findings_from(results: Results, stages: Sequence[Registered]) -> list[Finding]:
    """Every finding of the stages that ran, in stage order."""
    return [f for st in stages for f in st.findings_in(results)]


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
    results: Results, findings: list[Finding], stages: Sequence[Registered]
) -> Summary:
    """{checked: [...], found: [...], sure: [...]}: each a list of short, numbered statements."""
    checked = [(st.name, st.checked_in(results)) for st in stages]
    sure = [(st.name, st.sure_in(results)) for st in stages]
    return {
        "checked": [{"stage": name, "what": what} for name, what in checked if what is not None],
        "found": [
            {"id": f.id, "title": f.title, "severity": f.severity}
            for f in sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])
        ],
        "sure": [{"stage": name, "statement": it} for name, it in sure if it is not None],
    }


def transparency_from(
    config: Config, results: Results, stages: Sequence[Registered]
) -> Transparency:
    """One row per check that ran: what it tested, the method, the data and the settings, in
    words a lab could publish beside the report."""
    corpus = config.get("corpus", {})
    text = f"{corpus.get('source', '?')} corpus, seed {corpus.get('seed', '?')}"
    rows = [st.row_in(results, config, text) for st in stages]
    return {"tests": [row for row in rows if row is not None]}


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
