"""The check-up's commands as API calls, each writing a run directory like a scan does:
`diff(cfg)` (two versions of a model) and `probe(cfg)` (safety concepts on one model).

Each records its query in the run's ledger, writes a schema-versioned JSON beside a
self-contained report, and returns where they are. Not here: the measurements
(`aimri.checkup`), the page (`aimri.report`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from aimri._io import write_json_atomic
from aimri.checkup.diff import diff_json, diff_models
from aimri.config import CorpusConfig
from aimri.config_checkup import DiffConfig
from aimri.corpus.contexts import take_contexts
from aimri.dicts.formats import load_dictionary
from aimri.ledger import record_query
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.report.render import render_report
from aimri.scanner.findings_checkup import diff_findings
from aimri.scanner.run import SCAN_SCHEMA, finite, run_versions, to_jsonable
from aimri.scanner.summary import ledger_section, summary_from, transparency_from


@dataclass(frozen=True)
class CommandResult:
    run_dir: Path
    report: Path
    json: Path
    seconds: float
    headline: str
    """One line for the terminal: what was found."""


def neutral_texts(model: Model, corpus: CorpusConfig) -> list[str]:
    """The corpus's contexts as texts (BOS dropped), for statistics on ordinary text."""
    contexts = take_contexts(model.tokenizer, corpus)
    skip = 1 if corpus.prepend_bos else 0
    return [model.tokenizer.decode(c[skip:].tolist()) for c in contexts]


def diff(cfg: DiffConfig, base: Model | None = None, other: Model | None = None) -> CommandResult:
    """Compare `cfg.other` with `cfg.base` on neutral text; write diff.json and report.html."""
    t0 = time.perf_counter()
    run_dir = cfg.runs_dir / (cfg.name or f"diff-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    base = base or load_model(cfg.base)
    other = other or load_model(cfg.other)
    record_query(
        run_dir,
        "diff",
        model_sha256=other.weights_sha256,
        detail={"base": cfg.base.spec, "other": cfg.other.spec, "base_sha256": base.weights_sha256},
    )
    dictionary = load_dictionary(cfg.dictionary) if cfg.dictionary else None
    result = diff_models(
        base,
        other,
        neutral_texts(base, cfg.corpus),
        dictionary=dictionary,
        dict_site=dictionary.cfg.site if dictionary else None,
        crosscoder=cfg.crosscoder,
    )
    stage = {**diff_json(result), "base_spec": cfg.base.spec}
    results = {"diff": stage}
    findings = diff_findings(stage)
    config = to_jsonable(cfg)
    doc = finite(
        {
            "schema_version": SCAN_SCHEMA,
            "kind": "aimri.diff",
            "run": run_dir.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {**asdict(other.info), "weights_sha256": other.weights_sha256},
            "base_model": {**asdict(base.info), "weights_sha256": base.weights_sha256},
            "summary": summary_from(results, findings),
            "findings": findings,
            "stages": results,
            "config": config,
            "transparency": transparency_from(config, results),
            "ledger": ledger_section(run_dir, other.weights_sha256),
            "timings_s": {"diff": round(time.perf_counter() - t0, 2)},
            "versions": run_versions(),
        }
    )
    write_json_atomic(run_dir / "diff.json", doc)
    report = render_report(doc, run_dir / "report.html")
    headline = (
        "no difference beyond tolerance"
        if stage["empty"]
        else f"mean KL(B‖A) {stage['kl']['mean']:.4g} nats; {len(findings)} finding(s)"
    )
    return CommandResult(run_dir, report, run_dir / "diff.json", time.perf_counter() - t0, headline)
