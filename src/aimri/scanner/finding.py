"""A finding: one computed observation, worded from its numbers, with the evidence behind it.

Every stage's findings are `Finding`s; scan.json, probes.json, diff.json and audit.json carry
them as JSON objects with these five fields. Not here: what makes a finding (`findings.py`,
`findings_checkup.py`), how the report shows them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["warning", "notice", "info"]
"""warning: a result to distrust or act on; notice: something measured that a reader should
see; info: how the model is built, for context."""
SEVERITY_ORDER: dict[str, int] = {"warning": 0, "notice": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    id: str
    """Stable within a document, e.g. `bos-norm-outlier`, `concept-deception`."""
    title: str
    severity: Severity
    summary: str
    """The finding in sentences, every number in it computed."""
    evidence: Any = None
    """The measurements behind it (JSON-able)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [f.to_json() for f in findings]
