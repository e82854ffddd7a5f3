"""Findings: short, computed observations with their evidence, drawn from stage results.

Each finding names what was seen, where, and the numbers behind it; nothing is asserted
without a measurement. Not here: computing the measurements (the stages do).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aimri.scanner.finding import Finding
from aimri.scanner.findings_checkup import concept_findings, diff_findings

SINK_RATIO = 5.0
MASSIVE_DIM_RATIO = 20.0


def findings_from(results: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    stats = results.get("statistics", {}).get("sites", [])
    sinks = [(s["site"], s["bos_norm_ratio"]) for s in stats if s["bos_norm_ratio"] >= SINK_RATIO]
    if sinks:
        worst = max(sinks, key=lambda x: x[1])
        out.append(
            Finding(
                id="bos-norm-outlier",
                title="The first token's activations dwarf the rest (attention-sink signature)",
                severity="info",
                summary=f"At {len(sinks)} of {len(stats)} sites the norm at position 0 is at "
                f"least {SINK_RATIO:g}x the median norm elsewhere; largest {worst[1]:.1f}x at {worst[0]}. "
                "Dictionaries trained on these sites should leave position 0 out.",
                evidence={"sites": [{"site": s, "ratio": round(r, 2)} for s, r in sinks]},
            )
        )
    massive = [
        {"site": s["site"], "dim": d, "ratio": round(r, 1)}
        for s in stats
        for d, r in s["top_dims"]
        if r >= MASSIVE_DIM_RATIO
    ]
    if massive:
        dims = sorted({m["dim"] for m in massive})
        out.append(
            Finding(
                id="massive-dimensions",
                title="A few residual dimensions carry outsized activations",
                severity="info",
                summary=f"Dimensions {dims[:8]} have a mean |activation| at least "
                f"{MASSIVE_DIM_RATIO:g}x the median dimension's at {len({m['site'] for m in massive})} sites.",
                evidence={"dimensions": massive[:60]},
            )
        )
    # The last site's lens is the model's output itself, so it says nothing about formation.
    lens = results.get("logit_lens", {}).get("layers", [])[:-1]
    if lens:
        formed = next((x for x in lens if x["agreement_with_model"] >= 0.5), None)
        best = max(lens, key=lambda x: x["agreement_with_model"])
        summary = (
            f"The logit lens first agrees with the model's own top prediction on most tokens "
            f"({100 * formed['agreement_with_model']:.0f}%) at {formed['site']}."
            if formed
            else f"No site before the last agrees with the model's top prediction on most "
            f"tokens; the closest is {best['site']} at {100 * best['agreement_with_model']:.0f}%: "
            "the prediction forms late, or in a basis the plain logit lens cannot read."
        )
        out.append(
            Finding(
                id="prediction-forms",
                title="Where the next-token prediction forms",
                severity="info",
                summary=summary,
                evidence={
                    "layers": [{k: x[k] for k in ("site", "agreement_with_model")} for x in lens]
                },
            )
        )
    gt = results.get("ground_truth")
    if gt and gt["recovered_fraction"] < 0.9:
        out.append(
            Finding(
                id="ground-truth-failed",
                title="Dictionary training did not recover a toy model's known features",
                severity="warning",
                summary=f"Only {100 * gt['recovered_fraction']:.0f}% of planted features were "
                "recovered: treat this run's dictionaries with suspicion.",
                evidence=gt,
            )
        )
    out.extend(_dictionary_findings(results.get("dictionary")))
    out.extend(_features_findings(results.get("features")))
    out.extend(_steering_findings(results.get("steering")))
    if _ran(results.get("concepts")):
        out.extend(concept_findings(results["concepts"]))
    if _ran(results.get("diff")):
        out.extend(diff_findings(results["diff"]))
    return out


def _ran(stage: dict[str, Any] | None) -> bool:
    return bool(stage) and not stage.get("skipped")


def _steering_findings(stage: dict[str, Any] | None) -> list[Finding]:
    """The Golden Gate verdict, worded by the steering stage's own rule."""
    if not _ran(stage) or "verdict" not in (stage or {}):
        return []
    assert stage is not None
    shown = stage.get("demonstrated_at") is not None
    keys = ("strength", "fluent", "beyond_random", "demonstrates", "perplexity")
    return [
        Finding(
            id="steering-demonstration",
            title="A feature steers the text to its concept beyond random directions"
            if shown
            else "No feature was shown to steer the text to its concept beyond random directions",
            severity="info" if shown else "notice",
            summary=stage["verdict"],
            evidence={
                "feature": stage["feature"],
                "concept": stage["concept"],
                "rows": [
                    {
                        **{k: r[k] for k in keys},
                        "feature": r["feature"],
                        "random_p95": r["random_p95"],
                    }
                    for r in stage["rows"]
                ],
            },
        )
    ]


class LabelRows(NamedTuple):
    best: dict[str, Any]
    """The dictionary's headline (explainer, scorer) summary row (see `best_label_rows`)."""
    rows: list[dict[str, Any]]
    """Every basis's row for the same explainer and scorer."""
    by_kind: dict[str, dict[str, Any]]
    """Basis kind (sae, neurons, random...) → its row among `rows`."""


HEADLINE_SCORER = "simulation"
"""The interpretable fraction is read from this scorer, fixed in advance: taking the best of
several scorers and explainers would flatter the dictionary (a maximum over noisy shares)."""


def best_label_rows(stage: dict[str, Any] | None) -> LabelRows | None:
    """The features stage's headline row for its dictionary, beside the baselines' rows for the
    same explainer and scorer: the simulation scorer (an LLM explainer's labels when there are
    any, else the tokens explainer's); without simulation scores, the row with the highest
    share. None when nothing was scored."""
    if not stage or not stage.get("summary"):
        return None
    rows = stage["summary"]
    kind = {b["info"]["name"]: b["info"]["kind"] for b in stage["bases"]}
    ours = [r for r in rows if kind.get(r["basis"]) in ("sae", "transcoder")]
    simulated = [r for r in ours if r["scorer"] == HEADLINE_SCORER and (r["n"] - r["n_nan"]) > 0]
    preferred = sorted(
        simulated, key=lambda r: (not r["explainer"].startswith("llm"), r["explainer"] != "tokens")
    )
    best = (
        preferred[0] if preferred else max(ours, key=lambda r: r["frac_above"] or 0.0, default=None)
    )
    if best is None:
        return None
    same = [r for r in rows if (r["explainer"], r["scorer"]) == (best["explainer"], best["scorer"])]
    return LabelRows(best, same, {kind.get(r["basis"], r["basis"]): r for r in same})


def _pct(r: dict[str, Any], key: str = "frac_above") -> str:
    return f"{100 * (r[key] or 0):.0f}%"


def _ci(r: dict[str, Any]) -> str:
    return f"95% CI {_pct(r, 'ci_low')}–{_pct(r, 'ci_high')}"


def interpretability_verdict(best: dict[str, Any], by_kind: dict[str, dict[str, Any]]) -> str:
    """How the dictionary's share compares with each baseline's, by the 95% intervals: 'above'
    only where the dictionary's interval lies wholly above the baseline's."""
    parts = []
    for k in ("neurons", "random"):
        r = by_kind.get(k)
        if r is None:
            continue
        if (best["ci_low"] or 0) > (r["ci_high"] or 0):
            parts.append(f"above {k}")
        elif (best["ci_high"] or 0) < (r["ci_low"] or 0):
            parts.append(f"below {k}")
        else:
            parts.append(f"not measurably different from {k}")
    return ", ".join(parts) or "no baselines to compare with"


def _features_findings(stage: dict[str, Any] | None) -> list[Finding]:
    """Dictionary features vs neurons vs random directions: the interpretable fraction."""
    labelled = best_label_rows(stage)
    if labelled is None:
        return []
    best, same, by_kind = labelled
    others = "; ".join(
        f"{k} {_pct(r)} ({_ci(r)}, mean score {r['mean'] or 0:.2f})"
        for k, r in by_kind.items()
        if k not in ("sae", "transcoder")
    )
    verdict = interpretability_verdict(best, by_kind)
    what = (
        "predicts their activations token by token (simulation r"
        if best["scorer"] == HEADLINE_SCORER
        else f"predicts them ({best['scorer']} score"
    )
    return [
        Finding(
            id="interpretable-fraction",
            title=f"{_pct(best)} of sampled dictionary features have a label that predicts "
            f"them: {verdict}",
            severity="info",
            summary=f"With the {best['explainer']} explainer's labels, {_pct(best)} of "
            f"{best['n']} sampled features have a label that {what} ≥ {best['threshold']:g} on "
            f"held-out text; {_ci(best)}, mean score {best['mean'] or 0:.2f}; with shuffled "
            f"labels {_pct(best, 'frac_above_baseline')}). Same site, same pipeline: "
            f"{others or 'no baselines'}. Verdict by the intervals: {verdict}.",
            evidence={"rows": same},
        )
    ]


def _dictionary_findings(stage: dict[str, Any] | None) -> list[Finding]:
    if not stage:
        return []
    m = stage["eval"]
    score = lambda x: x["model_performance_preservation"]["ce_loss_score"]  # noqa: E731
    fvu = lambda x: x["reconstruction_quality"]["fvu"]  # noqa: E731
    pca = stage["baselines"].get("pca")
    versus = (
        f"; PCA of the same size: FVU {fvu(pca):.3f}, {100 * score(pca):.0f}% recovered"
        if pca
        else ""
    )
    return [
        Finding(
            id="dictionary-quality",
            title=f"A sparse dictionary for {stage['site']}",
            severity="info",
            summary=f"Spliced into the model it recovers {100 * score(m):.0f}% of the loss that "
            f"zero-ablating the site costs, with FVU {fvu(m):.3f} at L0 {m['sparsity']['l0']:.0f}{versus}.",
            evidence={
                "dictionary": m["model_performance_preservation"],
                "baselines": {
                    k: v["model_performance_preservation"] for k, v in stage["baselines"].items()
                },
            },
        )
    ]
