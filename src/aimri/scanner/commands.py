"""The check-up's commands as API calls, each writing a run directory like a scan does:
`diff(cfg)` (two versions of a model), `probe(cfg)` (safety concepts on one model) and
`audit(cfg)` (the blue team's hypotheses about what changed, beside the black-box baseline).
The red team's `plant` and the monitor need no run directory: the CLI calls them directly.

Each records its query in the run's ledger, writes a schema-versioned JSON beside a
self-contained report, and returns where they are. Not here: the measurements
(`aimri.checkup`), the page (`aimri.report`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aimri._io import to_jsonable, write_json_atomic
from aimri.audit.prompts import generate_prompts, load_prompts
from aimri.audit.teams import black_box, blue_team, explore
from aimri.audit.teams import neutral_texts as audit_texts
from aimri.audit.what import what_changed
from aimri.audit.words import AuditReport
from aimri.checkup.causal import CausalSettings
from aimri.checkup.concepts import builtin_concepts, builtin_neutral_texts, load_concepts
from aimri.config import AuditConfig, DiffConfig, ProbeConfig
from aimri.dicts.formats import load_dictionary
from aimri.diff.models import diff_json
from aimri.ledger import record_query
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.report.render import render_report
from aimri.scanner.audit_section import AuditResult
from aimri.scanner.concepts import ConceptsResult, corpus_texts, diff_and_record, probe_and_save
from aimri.scanner.document import Document, document, model_json
from aimri.scanner.finding import Finding
from aimri.scanner.findings_checkup import concept_findings, diff_findings, readable
from aimri.scanner.run import run_versions
from aimri.scanner.stage import Config, Results
from aimri.scanner.stages import SECTIONS


@dataclass(frozen=True)
class CommandResult:
    run_dir: Path
    report: Path
    json: Path
    seconds: float
    headline: str
    """One line for the terminal: what was found."""


def diff(cfg: DiffConfig, base: Model | None = None, other: Model | None = None) -> CommandResult:
    """Compare `cfg.other` with `cfg.base` on neutral text; write diff.json and report.html."""
    t0 = time.perf_counter()
    run_dir = cfg.runs_dir / (cfg.name or f"diff-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    base = base or load_model(cfg.base)
    other = other or load_model(cfg.other)
    dictionary = load_dictionary(cfg.dictionary) if cfg.dictionary else None
    result = diff_and_record(
        base,
        other,
        corpus_texts(base, cfg.corpus),
        ledger_dir=run_dir,
        detail={"base": cfg.base.spec, "other": cfg.other.spec},
        dictionary=dictionary,
        crosscoder=cfg.crosscoder,
    )
    stage: dict[str, Any] = {**diff_json(result), "base_spec": cfg.base.spec}
    if cfg.what and not stage["empty"]:
        stage["what_changed"] = what_changed(base, other)
    results = {"diff": stage}
    findings = diff_findings(stage) + what_findings(stage.get("what_changed"))
    doc = _document("aimri.diff", run_dir, other, base, results, findings, to_jsonable(cfg), t0)
    write_json_atomic(run_dir / "diff.json", doc)
    report = render_report(doc, run_dir / "report.html", SECTIONS)
    headline = (
        "no difference beyond tolerance"
        if stage["empty"]
        else f"mean KL(B‖A) {stage['kl']['mean']:.4g} nats; {len(findings)} finding(s)"
    )
    return CommandResult(run_dir, report, run_dir / "diff.json", time.perf_counter() - t0, headline)


def what_findings(what: dict[str, Any] | None) -> list[Finding]:
    """One finding: what B says differently (`aimri.audit.what.what_changed`), if anything."""
    if not what or not (what["replies"] or (what["lens"] and what["lens"]["steered"])):
        return []
    said = [r["sentence"] for r in what["replies"][:5]]
    lens: list[str] = what["lens"]["steered"][:3] if what["lens"] else []
    return [
        Finding(
            id="diff-what",
            title="What the changed model says differently",
            severity="notice",
            summary=" ".join(f"{s}." for s in said + lens),
            evidence={"replies": what["replies"][:5], "lens": what["lens"]},
        )
    ]


def probe(cfg: ProbeConfig, model: Model | None = None) -> CommandResult:
    """Probe one model for the safety concepts; write probes.json, the directions, a report."""
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    model = model or load_model(cfg.model)
    concepts = load_concepts(cfg.concepts) if cfg.concepts else builtin_concepts()
    shipped, corpus = builtin_neutral_texts(), corpus_texts(model, cfg.neutral)
    neutral = shipped + corpus
    result = probe_and_save(
        model,
        concepts,
        neutral,
        ledger_dir=cfg.out,
        directions_dir=cfg.out,
        dictionary=load_dictionary(cfg.dictionary) if cfg.dictionary else None,
        causal=CausalSettings() if cfg.causal else None,
    )
    probed = result.to_json()
    stage: ConceptsResult = {
        "settings": probed["settings"],
        "concepts": probed["concepts"],
        "directions": ".",
        "neutral": f"{len(shipped)} shipped neutral dialogue texts and "
        f"{len(corpus)} contexts of {cfg.neutral.source} text",
    }
    results = {"concepts": stage}
    findings = concept_findings(stage)
    doc = _document("aimri.probe", cfg.out, model, None, results, findings, to_jsonable(cfg), t0)
    write_json_atomic(cfg.out / "probes.json", doc)
    report = render_report(doc, cfg.out / "report.html", SECTIONS)
    n_read = sum(readable(c) for c in stage["concepts"])
    headline = f"{n_read} of {len(findings)} concepts linearly readable beyond random directions"
    return CommandResult(
        cfg.out, report, cfg.out / "probes.json", time.perf_counter() - t0, headline
    )


def _document(
    kind: str,
    run_dir: Path,
    model: Model,
    base: Model | None,
    results: Results,
    findings: list[Finding],
    config: Config,
    t0: float,
) -> Document:
    """The JSON a check-up command writes (`document.Document`: scan.json's layout)."""
    return document(
        kind,
        run_dir,
        model_json(model),
        results,
        findings,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        config=config,
        timings={kind.split(".")[-1]: round(time.perf_counter() - t0, 2)},
        versions=run_versions(),
        base_model=model_json(base) if base is not None else None,
    )


def audit(cfg: AuditConfig) -> CommandResult:
    """The blue team on two models (and the black-box baseline beside it); audit.json + report.
    Both teams read the same sampled replies (`explore`)."""
    t0 = time.perf_counter()
    out = fresh_audit_dir(cfg.out or Path(f"audit-{datetime.now():%Y%m%d-%H%M%S}"))
    base, other = load_model(cfg.base), load_model(cfg.other)
    record_query(
        out,
        "audit",
        model_sha256=other.weights_sha256,
        detail={"base": cfg.base.spec, "other": cfg.other.spec, "k": cfg.k},
    )
    dictionary = load_dictionary(cfg.dictionary) if cfg.dictionary else None
    prompts = load_prompts(cfg.prompts) if cfg.prompts else generate_prompts()
    cells = explore(base, other, prompts, samples=cfg.samples)
    white = blue_team(
        base,
        other,
        prompts=prompts,
        cells=cells,
        texts=audit_texts(),
        dictionary=dictionary,
        k=cfg.k,
    )
    black = black_box(base, other, prompts=prompts, cells=cells, k=cfg.k) if cfg.black_box else None
    stage: AuditResult = {
        "base": cfg.base.spec,
        "other": cfg.other.spec,
        "prompts": str(cfg.prompts) if cfg.prompts else "generated",
        "n_prompts": len(prompts),
        "white_box": asdict(white),
        "black_box": asdict(black) if black else None,
    }
    results = {"audit": stage}
    findings = audit_findings(white)
    doc = _document("aimri.audit", out, other, base, results, findings, to_jsonable(cfg), t0)
    write_json_atomic(out / "audit.json", doc)
    report = render_report(doc, out / "report.html", SECTIONS)
    lines = [f"blue team (internals), {white.seconds:.0f}s:", *_top(white)]
    if black is not None:
        lines += [f"black box (replies only), {black.seconds:.0f}s:", *_top(black)]
    return CommandResult(
        out, report, out / "audit.json", time.perf_counter() - t0, "\n".join(lines)
    )


def _top(report: AuditReport) -> list[str]:
    return [f"  {h.rank}. {h.text}" for h in report.hypotheses] or ["  no difference found"]


def fresh_audit_dir(out: Path) -> Path:
    """`out`, or `out-2`, `out-3`, ... when it already holds an audit (never overwritten)."""
    path, i = out, 1
    while (path / "audit.json").exists():
        i += 1
        path = out.with_name(f"{out.name}-{i}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def audit_findings(white: AuditReport) -> list[Finding]:
    """The blue team's hypotheses as findings (audit.json's summary lists them)."""
    return [
        Finding(
            id=f"audit-{h.rank}",
            title=h.text,
            severity="notice" if h.kind in ("trigger", "behaviour") else "info",
            summary=h.text,
            evidence={"claim": h.claim, "test": h.test},
        )
        for h in white.hypotheses
    ]
