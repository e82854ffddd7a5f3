"""The document every run directory holds, declared once: scan.json (`aimri scan`) and the
check-up's diff.json, probes.json and audit.json (`commands.py`).

`Document` is its layout, field by field in the order written; `document` builds one from a
command's results and findings, with the summary, transparency record and ledger that every
document carries; scan.json's JSON Schema (`schema.py`) is generated from the same `Document`
and the scan's stages. Not here: the stages' results (each stage types its own), writing the
file and the report (`run.py`, `commands.py`).
"""

# No `from __future__ import annotations` here: `Document`'s NotRequired fields must be seen as
# such when the class is made (Python 3.11 reads string annotations as required).
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NotRequired, TypedDict

from aimri._io import finite
from aimri.model.adapter import Model
from aimri.scanner.finding import Finding, findings_json
from aimri.scanner.layout import Storage
from aimri.scanner.stage import Config, JsonOf, Registered, Results
from aimri.scanner.stages import SECTIONS
from aimri.scanner.summary import (
    Ledger,
    Summary,
    Transparency,
    ledger_section,
    summary_from,
    transparency_from,
)

SCAN_SCHEMA = 2
"""The documents' layout: 2 added summary, config, transparency, ledger and the check-up
stages."""
FindingJson = Annotated[dict[str, Any], JsonOf(Finding)]
"""A `Finding` as a document holds it: its fields."""
ModelJson = dict[str, Any]
"""A model's `ModelInfo` fields and its weights' sha256 (`model_json`)."""


class Document(TypedDict):
    """What a run directory's JSON holds, in the order written."""

    schema_version: int
    kind: str
    """"aimri.scanner" (scan.json), "aimri.diff", "aimri.probe" or "aimri.audit"."""
    run: str
    """The run directory's name."""
    created: str
    model: ModelJson
    """The model (model B where two are compared)."""
    summary: Summary
    findings: list[FindingJson]
    stages: Results
    """Each stage's result by its name (`Stage[R]`: R, or why it was skipped)."""
    config: Config
    """The command's configuration."""
    transparency: Transparency
    ledger: Ledger
    timings_s: dict[str, float]
    storage: NotRequired[Storage]
    """What the scan removed from its run folder, and the folder's size (scan.json only)."""
    versions: dict[str, str]
    base_model: NotRequired[ModelJson]
    """Model A, as `model`, where a command compares two."""


def model_json(model: Model) -> ModelJson:
    return {**dataclasses.asdict(model.info), "weights_sha256": model.weights_sha256}


def document(
    kind: str,
    run_dir: Path,
    model: ModelJson,
    results: Results,
    findings: list[Finding],
    *,
    created: str,
    config: Config,
    timings: dict[str, float],
    versions: dict[str, str],
    storage: Storage | None = None,
    base_model: ModelJson | None = None,
    stages: Sequence[Registered] = SECTIONS,
) -> Document:
    """The document of `results` (by stage name, from `stages`), NaN and infinities as null
    (`_io.finite`), its fields in `Document`'s order."""
    doc = Document(
        schema_version=SCAN_SCHEMA,
        kind=kind,
        run=run_dir.name,
        created=created,
        model=model,
        summary=summary_from(results, findings, stages),
        findings=findings_json(findings),
        stages=results,
        config=config,
        transparency=transparency_from(config, results, stages),
        ledger=ledger_section(run_dir, model["weights_sha256"]),
        timings_s=timings,
        versions=versions,
    )
    if storage is not None:
        doc["storage"] = storage
    if base_model is not None:
        doc["base_model"] = base_model
    return finite({k: doc[k] for k in Document.__annotations__ if k in doc})
