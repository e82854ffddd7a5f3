"""The scan's check-up stages: safety concepts probed on the scanned model, and (with
`--compare`) a diff against an earlier version of it.

Concepts: the built-in contrast sets (plus any given with --concept-files), neutral text from
the shipped neutral set and from the corpus (contexts the activation stage did not read), the
scan's dictionary for feature evidence, labels from the features stage where it labelled them.
Not here: probing, diffing (`aimri.checkup`), the wording of findings (`findings_checkup.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from aimri.checkup.causal import CausalSettings
from aimri.checkup.concepts import (
    CONCEPTS_VERSION,
    ConceptSet,
    builtin_concepts,
    builtin_neutral_texts,
    load_concepts,
)
from aimri.checkup.probes import ProbeResult, probe_concepts, save_probe_directions
from aimri.config import CorpusConfig, ScanConfig
from aimri.corpus.contexts import take_contexts
from aimri.dicts.dictionary import Dictionary
from aimri.diff.models import ModelDiff, diff_json, diff_models
from aimri.ledger import record_query
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.model.precision import read_dtype
from aimri.report.checkup import concepts_view, diff_view
from aimri.report.view import View
from aimri.scanner.dictionary import DICTIONARY, scan_dictionary
from aimri.scanner.features import FEATURES, FeaturesResult
from aimri.scanner.findings_checkup import concept_findings, diff_findings, readable
from aimri.scanner.layout import ScanRun
from aimri.scanner.stage import JsonOf, Method, Skipped, Stage

DEFAULT_CAUSAL = CausalSettings()
NEUTRAL_CONTEXTS = 160
NEUTRAL_LEN = 33
DIFF_TEXTS = 48


class ConceptsResult(TypedDict):
    settings: dict[str, Any]
    concepts: list[dict[str, Any]]
    """One `checkup.probes.ConceptReport` per concept."""
    directions: str
    neutral: str


DiffResult = Annotated[
    dict[str, Any], JsonOf(ModelDiff, before={"schema_version": int}, after={"base_spec": str})
]
"""`diff.models.ModelDiff` as `diff_json` writes it (each nested dataclass as its fields),
after the diff's schema version and before the base model's spec as given; scan.json's schema
is generated from `ModelDiff` itself (`schema.py`)."""


def concepts_stage(run: ScanRun) -> ConceptsResult | Skipped:
    cfg, model = run.cfg, run.model
    if not cfg.concepts:
        return {"skipped": "turned off with --no-concepts"}
    concepts = builtin_concepts() + load_concepts(cfg.concept_files)
    shipped = builtin_neutral_texts()
    neutral = shipped + corpus_texts(model, _neutral_corpus(cfg), NEUTRAL_CONTEXTS)
    # Probes read 30 layers of ~21k tokens and the causal checks run ~60 passes: at the read's
    # precision (bf16 where the hardware has it: 2.2× faster, logits KL 0.0013 to fp32).
    result = probe_and_save(
        model.at_dtype(read_dtype(cfg.read_dtype, model.device)),
        concepts,
        neutral,
        ledger_dir=run.layout.root,
        directions_dir=run.layout.probes,
        dictionary=scan_dictionary(run) if DICTIONARY.result(run) else None,
        feature_labels=feature_labels(FEATURES.result(run)),
        causal=dataclasses.replace(DEFAULT_CAUSAL, n_random=cfg.concept_random),
    )
    probed = result.to_json()
    return {
        "settings": probed["settings"],
        "concepts": probed["concepts"],
        "directions": run.layout.relative(run.layout.probes),
        "neutral": f"{len(shipped)} shipped neutral dialogue texts and "
        f"{NEUTRAL_CONTEXTS} contexts of {NEUTRAL_LEN - 1} tokens of {cfg.corpus.source} text "
        f"(seed {cfg.corpus.seed + 1}, not the activation stage's)",
    }


def diff_stage(run: ScanRun) -> DiffResult | Skipped:
    """The scanned model against `--compare` (its earlier version), the scan's dictionary
    ranking features by change."""
    cfg, model = run.cfg, run.model
    if not cfg.compare:
        return {"skipped": "no --compare model given"}
    base = load_model(dataclasses.replace(cfg.model, spec=cfg.compare))
    d = diff_and_record(
        base,
        model,
        corpus_texts(base, _neutral_corpus(cfg), DIFF_TEXTS),
        ledger_dir=run.layout.root,
        detail={"base": cfg.compare},
        dictionary=scan_dictionary(run) if DICTIONARY.result(run) else None,
        feature_labels=feature_labels(FEATURES.result(run)),
    )
    return {**diff_json(d), "base_spec": cfg.compare}


def probe_and_save(
    model: Model,
    concepts: Sequence[ConceptSet],
    neutral: Sequence[str],
    *,
    ledger_dir: Path,
    directions_dir: Path,
    dictionary: Dictionary | None = None,
    feature_labels: Mapping[int, str] | None = None,
    causal: CausalSettings | None = DEFAULT_CAUSAL,
) -> ProbeResult:
    """Record the query in the ledger, probe the concepts, save the flagged directions: what
    the scan's concepts stage and `aimri probe` both do."""
    record_query(
        ledger_dir,
        "probe",
        model_sha256=model.weights_sha256,
        detail={"concepts": [c.name for c in concepts], "version": CONCEPTS_VERSION},
    )
    result = probe_concepts(
        model,
        concepts,
        neutral,
        dictionary=dictionary,
        dict_site=dictionary.cfg.site if dictionary else None,
        feature_labels=feature_labels,
        causal=causal,
    )
    save_probe_directions(result, directions_dir)
    return result


def diff_and_record(
    base: Model,
    other: Model,
    texts: Sequence[str],
    *,
    ledger_dir: Path,
    detail: dict[str, Any],
    dictionary: Dictionary | None = None,
    feature_labels: Mapping[int, str] | None = None,
    crosscoder: bool = False,
) -> ModelDiff:
    """Record the query in the ledger (under the changed model), then diff: what the scan's
    diff stage and `aimri diff` both do."""
    record_query(
        ledger_dir,
        "diff",
        model_sha256=other.weights_sha256,
        detail={**detail, "base_sha256": base.weights_sha256},
    )
    return diff_models(
        base,
        other,
        texts,
        dictionary=dictionary,
        dict_site=dictionary.cfg.site if dictionary else None,
        feature_labels=feature_labels,
        crosscoder=crosscoder,
    )


def corpus_texts(model: Model, corpus: CorpusConfig, n: int | None = None) -> list[str]:
    """The corpus's first `n` contexts (default: all) as texts, BOS dropped."""
    contexts = take_contexts(model.tokenizer, corpus)[:n]
    skip = 1 if corpus.prepend_bos else 0
    ids: list[list[int]] = [c[skip:].tolist() for c in contexts]  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return [model.tokenizer.decode(t) for t in ids]


def feature_labels(features: FeaturesResult | None) -> dict[int, str]:
    """Feature index → its best-scoring label, for the features the features stage labelled."""
    out: dict[int, str] = {}
    for f in features["features"] if features else []:
        scored = {s["explainer"]: s["value"] for s in f.get("scores", []) if s["value"] is not None}
        labels = sorted(f.get("labels", []), key=lambda lb: -scored.get(lb["explainer"], -1.0))
        if labels:
            out[int(f["index"])] = labels[0]["text"]
    return out


def _neutral_corpus(cfg: ScanConfig) -> CorpusConfig:
    return dataclasses.replace(
        cfg.corpus,
        ctx_len=NEUTRAL_LEN,
        max_tokens=NEUTRAL_LEN * NEUTRAL_CONTEXTS,
        seed=cfg.corpus.seed + 1,
    )


def compact(settings: dict[str, Any]) -> str:
    """A stage's scalar settings on one line, for the transparency table."""
    return ", ".join(f"{k} {v}" for k, v in settings.items() if not isinstance(v, dict | list))


def _sure_concepts(r: ConceptsResult) -> str:
    cs = r["concepts"]
    read = [c for c in cs if readable(c)]
    moved = [
        c for c in cs if any(k["beyond_random"] and k["target"] == "direction" for k in c["causal"])
    ]
    sizes = sorted({c["n_test_pairs"] for c in cs})
    size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    return (
        f"{len(read)} of {len(cs)} concepts are read on held-out pairs beyond the 95th percentile "
        f"of random directions and two standard errors above chance; steering along the detector "
        f"moves behaviour beyond random directions for {len(moved)} of {len(cs)}. The contrast "
        f"sets are small ({size} test pairs each), so an AUROC's standard error is 0.05–0.1."
    )


def _sure_diff(r: DiffResult) -> str:
    tol = r["settings"]["tolerances"]
    same = (
        "A and B have the same weights (sha256), so an empty diff is what a correct tool must say. "
        if r["compatibility"]["same_weights"]
        else ""
    )
    return (
        f"{same}Differences below the tolerances (KL {tol['kl']:g} nats, relative change "
        f"{tol['rel_change']:g}) are not listed; a feature counts as changed at |z| ≥ "
        f"{tol['feature_z']:g} against binomial noise. A model diffed with itself comes out empty "
        "(tested)."
    )


def _concept_data(r: ConceptsResult, corpus: str) -> str:
    sets = ", ".join(f"{c['concept']} v{c['version']}" for c in r["concepts"])
    return f"shipped contrast sets ({sets}); neutral text: {r.get('neutral', corpus)}"


CONCEPTS = Stage[ConceptsResult](
    "concepts",
    concepts_stage,
    needs=(DICTIONARY, FEATURES),
    findings=concept_findings,
    checked=lambda r: (
        f"{len(r['concepts'])} safety concepts probed at every layer, "
        "with held-out AUROC, false positives on neutral text and a causal check"
    ),
    sure=_sure_concepts,
    method=lambda r, c: Method(
        "safety concepts",
        "difference of means and logistic probes per layer, held-out AUROC, "
        "recall at 1% false positives on neutral text; dictionary features; steering and "
        "ablation against random directions",
        compact(r.get("settings", {})),
    ),
    data=_concept_data,
    view=View("concepts.html.j2", concepts_view, nav="Concepts", part="first"),
)
DIFF = Stage[DiffResult](
    "diff",
    diff_stage,
    needs=(DICTIONARY, FEATURES),
    findings=diff_findings,
    checked=lambda r: f"a diff against {r.get('base_spec', 'another version')}",
    sure=_sure_diff,
    method=lambda r, c: Method(
        "model diff",
        "per-layer activation differences through the logit lens and by steering; "
        "per-token KL; the base dictionary on both models",
        compact(r.get("settings", {})),
    ),
    data=lambda r, _: (
        f"neutral text ({r.get('settings', {}).get('n_texts', '?')} texts) read by both models"
    ),
    view=View("diff.html.j2", diff_view, nav="Diff"),
)
