"""`aimri scan`: run every stage that exists on one model and write a run directory.

```
runs/<name>/run.json      config, model identity (weights hash), versions, timings
runs/<name>/activations/  the activation store (see aimri.store); it and the other stages'
                          caches are removed at the end unless --keep-activations
runs/<name>/scan.json     machine-readable results, schema_version
runs/<name>/report.html   one self-contained page
```
Stages so far: activations → statistics → logit lens → ground truth (a toy model of
superposition: does training recover known features?) → dictionary (train or load, evaluate) →
features (statistics, labels scored on held-out text, catalog; neurons and random directions as
baselines) → steering (clamp a concrete-concept feature, measure the drift) → circuits
(transcoders per layer, attribution graphs of three demonstrations checked by intervention) →
concepts (safety concepts probed per layer, checked by steering) → diff (against --compare).
Later stages add themselves to `_stages`. Not here: the stages' own logic (each lives in its module).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from aimri import __version__
from aimri._io import write_json_atomic
from aimri.config import CollectConfig, ScanConfig
from aimri.ledger import record_query
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.report.render import render_report
from aimri.scanner.circuits import circuits_stage
from aimri.scanner.concepts import concepts_stage, diff_stage
from aimri.scanner.dictionary import dictionary_stage
from aimri.scanner.features import features_stage
from aimri.scanner.finding import findings_json
from aimri.scanner.findings import findings_from
from aimri.scanner.ground_truth import ground_truth_stage
from aimri.scanner.layout import RunLayout, ScanRun
from aimri.scanner.steering import steering_stage
from aimri.scanner.summary import ledger_section, summary_from, transparency_from
from aimri.store.collect import collect
from aimri.store.lens import lens_over_store, lens_table, residual_sites
from aimri.store.reader import ActivationStore
from aimri.store.stats import site_statistics

log = logging.getLogger(__name__)
SCAN_SCHEMA = 2
"""scan.json's layout: 2 added summary, config, transparency, ledger and the check-up stages."""
LENS_PROMPTS = (
    "The capital of France is",
    "def add(a, b):\n    return a +",
    "Monday, Tuesday, Wednesday,",
)


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
    run_info["model"] = {**dataclasses.asdict(model.info), "weights_sha256": weights_sha}
    record_query(
        run_dir,
        "scan",
        model_sha256=weights_sha,
        detail={"run": run_dir.name, "stages": [name for name, _ in _stages()]},
    )
    run = ScanRun(cfg, model, layout)
    results = run.results
    for name, stage in _stages():
        with _timed(timings, name):
            results[name] = stage(run)
        log.info("scan: %s done in %.1fs", name, timings[name])

    storage = tidy_run_folder(layout, keep_activations=cfg.keep_activations)
    findings = findings_from(results)
    scan_doc = {
        "schema_version": SCAN_SCHEMA,
        "kind": "aimri.scanner",
        "run": run_dir.name,
        "created": run_info["started"],
        "model": run_info["model"],
        "summary": summary_from(results, findings),
        "findings": findings_json(findings),
        "stages": results,
        "config": run_info["config"],
        "transparency": transparency_from(run_info["config"], results),
        "ledger": ledger_section(run_dir, weights_sha),
        "timings_s": timings,
        "storage": storage,
        "versions": run_info["versions"],
    }
    scan_doc = finite(scan_doc)
    write_json_atomic(layout.scan_json, scan_doc)
    with _timed(timings, "report"):
        report = render_report(scan_doc, layout.report)
    run_info.update(status="complete", finished=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json_atomic(layout.run_json, run_info)
    return ScanResult(run_dir, report, layout.scan_json, time.perf_counter() - t0)


def tidy_run_folder(layout: RunLayout, *, keep_activations: bool) -> dict[str, Any]:
    """Remove the activation caches unless asked to keep them; say what was removed and what
    the folder holds after (the report shows it)."""
    removed = []
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


Stage = Callable[[ScanRun], dict[str, Any]]


def _stages() -> list[tuple[str, Stage]]:
    return [
        ("activations", _activations),
        ("statistics", _statistics),
        ("logit_lens", _logit_lens),
        ("ground_truth", ground_truth_stage),
        ("dictionary", dictionary_stage),
        ("features", features_stage),
        ("steering", steering_stage),
        ("circuits", circuits_stage),
        ("concepts", concepts_stage),
        ("diff", diff_stage),
    ]


def _activations(run: ScanRun) -> dict[str, Any]:
    cfg, model = run.cfg, run.model
    collect_cfg = CollectConfig(
        out=run.layout.activations,
        model=cfg.model,
        corpus=cfg.corpus,
        sites=cfg.sites,
        dtype=cfg.store_dtype,
        batch_size=cfg.batch_size,
        overwrite=cfg.overwrite,
    )
    r = collect(collect_cfg, model=model)
    store = ActivationStore(r.path)
    tokens = store.load("tokens", 0)
    ctx_len = cfg.corpus.ctx_len
    samples = [model.tokenizer.decode(tokens[i * ctx_len : (i + 1) * ctx_len]) for i in range(3)]
    return {
        "path": run.layout.relative(run.layout.activations),
        "corpus": to_jsonable(cfg.corpus),
        "sites": store.identity["sites"],
        "dtype": cfg.store_dtype,
        "n_tokens": r.n_tokens,
        "n_shards": r.n_shards,
        "tokens_per_second": round(r.tokens_per_second, 1),
        "resumed_shards": r.resumed_shards,
        "sample_contexts": samples,
    }


def _statistics(run: ScanRun) -> dict[str, Any]:
    store = ActivationStore(run.layout.activations)
    return {"sites": [dataclasses.asdict(s) for s in site_statistics(store)]}


def _logit_lens(run: ScanRun) -> dict[str, Any]:
    model = run.model
    store = ActivationStore(run.layout.activations)
    sites = residual_sites(store.sites)
    layers = lens_over_store(model, store)
    tables = [lens_table(model, p, sites, k=3) for p in LENS_PROMPTS] if sites else []
    return {
        "layers": [dataclasses.asdict(x) for x in layers],
        "tables": [dataclasses.asdict(t) for t in tables],
    }


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
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


def finite(obj: Any) -> Any:
    """NaN and inf become null, so scan.json is strict JSON that any parser (and the report's
    JavaScript) reads; a missing number is shown as missing, never as a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
