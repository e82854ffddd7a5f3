"""`aimri scan`: run every stage that exists on one model and write a run directory (its
layout: `layout.py`; the activation caches are removed at the end unless --keep-activations).

Stages (`stages.py`): activations → statistics → logit lens → ground truth (a toy model of
superposition: does training recover known features?) → dictionary (train or load, evaluate) →
features (statistics, labels scored on held-out text, catalog; neurons and random directions as
baselines) → steering (clamp a concrete-concept feature, measure the drift) → circuits
(transcoders per layer, attribution graphs of three demonstrations checked by intervention) →
concepts (safety concepts probed per layer, checked by steering) → diff (against --compare).
Not here: the stages' own logic and wording (each lives in its module, see `stage.py`).
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from aimri._io import to_jsonable, write_json_atomic
from aimri._version import __version__
from aimri.config import ScanConfig
from aimri.ledger import record_query
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.report.render import render_report
from aimri.scanner.document import document, model_json
from aimri.scanner.layout import Removed, RunLayout, ScanRun, Storage
from aimri.scanner.stages import SECTIONS, STAGES
from aimri.scanner.summary import findings_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    run_dir: Path
    report: Path
    scan_json: Path
    seconds: float


def scan(cfg: ScanConfig, model: Model | None = None) -> ScanResult:
    t0 = time.perf_counter()
    layout = RunLayout(cfg.runs_dir / (cfg.name or _default_name(cfg.model.spec)))
    run_dir = layout.root
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    run_info: dict[str, Any] = {
        "kind": "aimri.run",
        "status": "running",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": to_jsonable(cfg),
        "versions": run_versions(),
        "timings_s": timings,
    }
    write_json_atomic(layout.run_json, run_info)

    with _timed(timings, "load_model"):
        model = model or load_model(cfg.model)
        weights_sha = model.weights_sha256
    run_info["model"] = model_json(model)
    record_query(
        run_dir,
        "scan",
        model_sha256=weights_sha,
        detail={"run": run_dir.name, "stages": [st.name for st in STAGES]},
    )
    run = ScanRun(cfg, model, layout)
    results = run.results
    for st in STAGES:
        with _timed(timings, st.name):
            st.execute(run)
        log.info("scan: %s done in %.1fs", st.name, timings[st.name])

    storage = tidy_run_folder(layout, keep_activations=cfg.keep_activations)
    scan_doc = document(
        "aimri.scanner",
        run_dir,
        run_info["model"],
        results,
        findings_from(results, STAGES),
        created=run_info["started"],
        config=run_info["config"],
        timings=timings,
        versions=run_info["versions"],
        storage=storage,
        stages=STAGES,
    )
    write_json_atomic(layout.scan_json, scan_doc)
    with _timed(timings, "report"):
        report = render_report(scan_doc, layout.report, SECTIONS)
    run_info.update(status="complete", finished=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json_atomic(layout.run_json, run_info)
    return ScanResult(run_dir, report, layout.scan_json, time.perf_counter() - t0)


def tidy_run_folder(layout: RunLayout, *, keep_activations: bool) -> Storage:
    """Remove the activation caches unless asked to keep them; say what was removed and what
    the folder holds after (the report shows it)."""
    removed: list[Removed] = []
    for path in layout.caches if not keep_activations else ():
        if path.is_dir():
            mb = round(_folder_bytes(path) / 2**20, 1)
            removed.append({"path": layout.relative(path), "mb": mb})
            shutil.rmtree(path)
    return {
        "activations_kept": keep_activations,
        "removed": removed,
        "run_folder_mb": round(_folder_bytes(layout.root) / 2**20, 1),
        "note": "the run folder before report.html was written; "
        + (
            "activation caches kept (--keep-activations)"
            if keep_activations
            else "activation caches removed after the last stage (--keep-activations keeps them)"
        ),
    }


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Generator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t, 2)


def _default_name(spec: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(spec).stem if "/" in spec else spec).strip("-")
    return f"{slug or 'model'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_versions() -> dict[str, str]:
    import transformers

    return {
        "aimri": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
