"""The report's first screen and its last: what was checked, what was found, how sure we are,
and the transparency record (what was tested, how, on which data, with which settings).

Every line here is drawn from a stage's own numbers; a stage that did not run is not listed.
Not here: the findings themselves (`findings.py`), the measurements (the stages).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aimri.ledger import consultations, read_ledger
from aimri.scanner.finding import SEVERITY_ORDER, Finding
from aimri.scanner.findings import best_label_rows, interpretability_verdict
from aimri.scanner.findings_checkup import readable


def summary_from(results: dict[str, Any], findings: list[Finding]) -> dict[str, Any]:
    """{checked: [...], found: [...], sure: [...]}: each a list of short, numbered statements."""
    return {
        "checked": [c for c in (_checked(name, r) for name, r in results.items()) if c],
        "found": sorted(
            ({"id": f.id, "title": f.title, "severity": f.severity} for f in findings),
            key=lambda f: SEVERITY_ORDER[f["severity"]],
        ),
        "sure": [s for s in (_sure(name, r) for name, r in results.items()) if s],
    }


def _checked(name: str, r: dict[str, Any]) -> dict[str, str] | None:
    if not r or r.get("skipped"):
        return None
    what = {
        "activations": lambda: (
            f"{r['n_tokens']:,} tokens of {r['corpus']['source']} text read "
            f"at {len(r['sites'])} sites"
        ),
        "logit_lens": lambda: (
            f"every residual layer read through the unembedding ({len(r['layers'])} layers)"
        ),
        "ground_truth": lambda: (
            f"the training code on a toy model with {r['n_features']} known features"
        ),
        "dictionary": lambda: (
            f"a sparse dictionary at {r['site']}, against PCA and random baselines of the same size"
        ),
        "features": lambda: (
            f"{r['sampled']} of {r['n_features_total']:,} features labelled and "
            "scored on held-out text, against neurons and random directions"
        ),
        "steering": lambda: (
            f"steering with feature #{r['feature']} (of all {r['n_features']:,}) against "
            f"{r['n_random']} random directions and {r['n_neurons']} neurons at the same norm"
        ),
        "circuits": lambda: (
            f"{len(r['graphs'])} attribution graphs through "
            f"{r['transcoders']['n_layers']} transcoders, each checked by ablation"
        ),
        "concepts": lambda: (
            f"{len(r['concepts'])} safety concepts probed at every layer, "
            "with held-out AUROC, false positives on neutral text and a causal check"
        ),
        "diff": lambda: f"a diff against {r.get('base_spec', 'another version')}",
        "audit": lambda: (
            f"what changed from {r['base']} to {r['other']}: ranked hypotheses from "
            "the internals, beside a black-box baseline"
        ),
    }.get(name)
    return {"stage": name, "what": what()} if what else None


def _sure(name: str, r: dict[str, Any]) -> dict[str, str] | None:
    if not r or r.get("skipped"):
        return None
    fn = _SURE.get(name)
    return {"stage": name, "statement": fn(r)} if fn else None


def _sure_ground_truth(r: dict[str, Any]) -> str:
    return (
        f"The dictionary trainer recovers {100 * r['recovered_fraction']:.0f}% of a toy model's "
        "known features, so a failure to find structure is not simply the trainer."
    )


def _sure_dictionary(r: dict[str, Any]) -> str:
    m = r["eval"]["model_performance_preservation"]
    return (
        f"Spliced into the model in place of {r['site']}, the dictionary recovers "
        f"{100 * m['ce_loss_score']:.0f}% of the loss that zeroing the site costs."
    )


def _sure_features(r: dict[str, Any]) -> str:
    labelled = best_label_rows(r)
    if labelled is None:
        return "No feature labels were scored."
    best = labelled.best
    verdict = interpretability_verdict(best, labelled.by_kind)
    weak = "above random" not in verdict
    return (
        f"{100 * (best['frac_above'] or 0):.0f}% of sampled features have a label that predicts "
        f"them on held-out text ({best['scorer']} ≥ {best['threshold']:g}; 95% CI "
        f"{100 * (best['ci_low'] or 0):.0f}–{100 * (best['ci_high'] or 0):.0f}%): {verdict}"
        + (", so treat feature labels as weak evidence." if weak else ".")
    )


def _sure_circuits(r: dict[str, Any]) -> str:
    rs = [g["validation"]["pearson"] for g in r["graphs"] if g.get("validation")]
    rs = [x for x in rs if x is not None]
    if not rs:
        return "No graph was checked by intervention."
    return (
        f"Attribution graphs predict real ablations with Pearson r {min(rs):.2f}–{max(rs):.2f} "
        f"over {len(rs)} graphs."
    )


def _sure_diff(r: dict[str, Any]) -> str:
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


def _sure_concepts(r: dict[str, Any]) -> str:
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


_SURE = {
    "concepts": _sure_concepts,
    "diff": _sure_diff,
    "ground_truth": _sure_ground_truth,
    "dictionary": _sure_dictionary,
    "features": _sure_features,
    "circuits": _sure_circuits,
}


def transparency_from(config: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """One row per check that ran: what it tested, the method, the data and the settings, in
    words a lab could publish beside the report."""
    corpus = config.get("corpus", {})
    text = f"{corpus.get('source', '?')} corpus, seed {corpus.get('seed', '?')}"
    rows = []
    for name, r in results.items():
        if not r or r.get("skipped") or name not in _METHODS:
            continue
        check, method, settings = _METHODS[name](r, config)
        rows.append(
            {"check": check, "method": method, "data": _data(name, r, text), "settings": settings}
        )
    return {"tests": rows}


def _data(name: str, r: dict[str, Any], text: str) -> str:
    if name == "concepts":
        sets = ", ".join(f"{c['concept']} v{c['version']}" for c in r["concepts"])
        return f"shipped contrast sets ({sets}); neutral text: {r.get('neutral', text)}"
    if name == "ground_truth":
        return "synthetic sparse features, seeded (no text)"
    if name == "circuits":
        return "hand-written demonstration prompts: " + "; ".join(
            repr(g["prompt"]) for g in r["graphs"]
        )
    if name == "audit":
        w = r["white_box"]["inputs"]
        source = "your" if r.get("prompts") not in (None, "generated") else "generated"
        return (
            f"{w.get('prompts')} {source} chat prompts (topics × request types × framings), "
            f"{w.get('replies_per_prompt')} sampled replies each from both models"
        )
    if name == "diff":
        return (
            f"neutral text ({r.get('settings', {}).get('n_texts', '?')} texts) read by both models"
        )
    return text


_METHODS: dict[str, Any] = {
    "activations": lambda r, c: (
        "activations",
        "forward passes with read-only hooks",
        f"sites {c.get('sites')}, stored as {r['dtype']}",
    ),
    "ground_truth": lambda r, c: (
        "dictionary trainer on known features",
        "toy model of superposition, TopK SAE",
        f"{r['n_features']} features in {r['d']} dims, k {r['k']}, {r['steps']} steps",
    ),
    "dictionary": lambda r, c: (
        "sparse dictionary",
        "TopK SAE; FVU, L0, CE loss spliced in, against PCA and random; attention sinks and "
        "massive activations left out (their FVU shown apart)",
        f"site {r['site']}, {c.get('dict_tokens')} tokens",
    ),
    "features": lambda r, c: (
        "feature labels",
        "token and logit explainers, scored by simulation (pooled Pearson r of predicted vs "
        "real per-token activations on held-out top, decile and random windows) and a token "
        "rule, against shuffled labels; neurons and random directions as baselines; sinks "
        "left out",
        f"{r['sampled']} sampled features, labeler {c.get('labeler')}",
    ),
    "steering": lambda r, c: (
        "steering",
        "add a concept feature's direction at several norms beside random directions and "
        "neurons; concept log-probability and similarity, distinct tokens, perplexity",
        f"feature #{r['feature']} at {r['site']}, unit {r['unit']:.0f} (median ordinary norm)",
    ),
    "circuits": lambda r, c: (
        "circuits",
        "attribution graphs through per-layer transcoders; edges checked by "
        "ablation in the real model",
        f"{r['transcoders']['n_layers']} transcoders, "
        f"d_sae {r['transcoders']['d_sae']}, k {r['transcoders']['k']}",
    ),
    "concepts": lambda r, c: (
        "safety concepts",
        "difference of means and logistic probes per layer, held-out AUROC, "
        "recall at 1% false positives on neutral text; dictionary features; steering and "
        "ablation against random directions",
        _compact(r.get("settings", {})),
    ),
    "audit": lambda r, c: (
        "audit",
        "blue team: activation-difference lens and A steered with it, replies compared by "
        "entities, words, agreement and style, trigger search with with/without tests; black "
        "box: the same prompts and replies, without internals; hypotheses are sentences judged "
        "on their measured gap",
        f"k {c.get('k')}",
    ),
    "diff": lambda r, c: (
        "model diff",
        "per-layer activation differences through the logit lens and by steering; "
        "per-token KL; the base dictionary on both models",
        _compact(r.get("settings", {})),
    ),
}


def _compact(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if not isinstance(v, dict | list))


def ledger_section(run_dir: Path, model_sha256: str) -> dict[str, Any]:
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
