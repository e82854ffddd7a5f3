"""The seam every stage plugs into: what it runs, and how its result enters a document.

A `Stage` declares, in its own module: the function that computes its result from the scan so
far (`ScanRun`), its findings, its lines of the summary ("what was checked", "how sure"), its
row of the transparency table (what was tested, the method, the data, the settings) and its
section of the report (`aimri.report.view.View`: its own template partial and what that reads).
The registry (`stages.py`) lists the scan's stages in order; `aimri probe`, `diff` and `audit`
build their documents and reports from the same declarations. Not here: any stage's logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from aimri.report.view import View
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun

Result = Mapping[str, Any]
"""A stage's result as scan.json holds it; each stage types its own (a TypedDict, from which
scan.json's schema is generated: `schema.py`)."""


class Skipped(TypedDict):
    """A stage that did not run, and why."""

    skipped: str


@dataclass(frozen=True)
class Method:
    check: str
    """What was tested, in a few words."""
    method: str
    settings: str


@dataclass(frozen=True)
class Stage:
    name: str
    """Its key in scan.json's `stages` and in the summary."""
    run: Callable[[ScanRun], Result] | None = None
    """Computes the result; None for a section only a command fills (the audit)."""
    findings: Callable[[Result], list[Finding]] | None = None
    checked: Callable[[Result], str] | None = None
    """The summary's "what was checked" line."""
    sure: Callable[[Result], str] | None = None
    """The summary's "how sure" statement."""
    method: Callable[[Result, dict[str, Any]], Method] | None = None
    """Its transparency row, from the result and the document's configuration."""
    data: Callable[[Result, str], str] | None = None
    """The data it read, for the transparency row, given the scan's corpus in words; None: that
    corpus."""
    view: View[Any] | None = None
    """Its section of the report; None: none (its numbers show elsewhere, e.g. the
    activations' in the transparency record)."""


def ran(result: Result | None) -> bool:
    """Whether a stage produced a result (it may be turned off or have nothing to work on)."""
    return bool(result) and not (result or {}).get("skipped")
