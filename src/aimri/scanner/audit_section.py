"""The audit's section of audit.json, declared like a scan stage: its summary line, its
transparency row and its section of the report. It is a command's result (`commands.audit`),
not a scan stage: there is nothing to run.

Not here: the audit itself (`aimri.audit`), its findings (`commands.audit_findings`).
"""

from __future__ import annotations

from typing import Any, TypedDict

from aimri.report.checkup import audit_view
from aimri.report.view import View
from aimri.scanner.stage import Method, Stage


class AuditResult(TypedDict):
    base: str
    other: str
    prompts: str
    """The prompts file, or "generated"."""
    n_prompts: int
    white_box: dict[str, Any]
    """The blue team's `aimri.audit.teams` report, as its fields."""
    black_box: dict[str, Any] | None
    """The black-box baseline's report, as its fields (None: not run)."""


def _audit_data(r: AuditResult, _: str) -> str:
    w = r["white_box"]["inputs"]
    source = "your" if r.get("prompts") not in (None, "generated") else "generated"
    return (
        f"{w.get('prompts')} {source} chat prompts (topics × request types × framings), "
        f"{w.get('replies_per_prompt')} sampled replies each from both models"
    )


AUDIT = Stage[AuditResult](
    "audit",
    checked=lambda r: (
        f"what changed from {r['base']} to {r['other']}: ranked hypotheses from "
        "the internals, beside a black-box baseline"
    ),
    method=lambda r, c: Method(
        "audit",
        "blue team: activation-difference lens and A steered with it, replies compared by "
        "entities, words, agreement and style, trigger search with with/without tests; black "
        "box: the same prompts and replies, without internals; hypotheses are sentences judged "
        "on their measured gap",
        f"k {c.get('k')}",
    ),
    data=_audit_data,
    view=View("audit.html.j2", audit_view, nav="Audit"),
)
"""The audit's section of audit.json: a command's result, not a scan stage (nothing to run)."""
