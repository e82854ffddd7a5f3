"""The check-up's sections of the report (concepts, diff, audit): charts prepared from scan.json.

The audit's section reads only its result (`audit_view`).
Not here: computing anything (the report only shows what the JSON holds), the page layout
(templates/concepts.html.j2, templates/diff.html.j2, templates/audit.html.j2).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from aimri.report.svg import bar_chart, line_chart


def diff_view(stage: dict[str, Any]) -> dict[str, Markup] | None:
    """Charts of how much each layer changed and how much of the change steering reproduces;
    None where there was no diff (no model to compare with)."""
    if stage.get("skipped"):
        return None
    layers = stage["layers"]
    if not layers:
        return {}
    xs = [ly["layer"] for ly in layers]
    charts = {
        "by_layer": line_chart(
            xs,
            {
                "mean relative change ‖h_B − h_A‖ / ‖h_A‖": [ly["rel_change"] for ly in layers],
                "mean difference ‖δ‖ / mean ‖h_A‖": [ly["mean_diff_rel"] for ly in layers],
            },
            title="How much each layer's residual stream changed",
            xlabel="layer",
            ylabel="relative change",
        )
    }
    steered = [ly for ly in layers if ly.get("steer_recovery") is not None]
    if steered:
        charts["steer"] = line_chart(
            [ly["layer"] for ly in steered],
            {"share of KL(B‖A) closed": [ly["steer_recovery"] for ly in steered]},
            title="Steering the base with a layer's mean difference",
            xlabel="layer",
            ylabel="1 − KL(B‖A+δ) / KL(B‖A)",
            y_range=(0.0, 1.0),
        )
    return charts


def concepts_view(stage: dict[str, Any]) -> dict[str, Any] | None:
    """Per concept, its detector, best feature and causal checks side by side with their
    baselines, and charts: held-out AUROC by layer; detector vs baselines; steering effect vs
    random directions. None where the concepts were not probed."""
    if stage.get("skipped"):
        return None
    concepts = stage["concepts"]
    rows = [_concept_row(c) for c in concepts]
    names = [c["concept"] for c in concepts]
    layers = [r["layer"] for r in concepts[0]["layers"]] if concepts else []
    charts = {
        "auroc": line_chart(
            layers,
            {c["concept"]: [r["probe_auroc"] for r in c["layers"]] for c in concepts}
            | {
                "random directions, 95th pct (max over concepts)": [
                    max(c["layers"][i]["random_auroc_p95"] for c in concepts)
                    for i in range(len(layers))
                ]
            },
            title="Held-out AUROC of the logistic probe, by layer",
            xlabel="layer",
            ylabel="AUROC",
            y_range=(0.5, 1.0),
        ),
        "baselines": bar_chart(
            names,
            {
                "detector (best layer)": [r["auroc"] for r in rows],
                "best single neuron": [r["neuron_auroc"] for r in rows],
                "top dictionary feature": [r["feature_auroc"] for r in rows],
                "random directions, 95th pct": [r["random_p95"] for r in rows],
            },
            title="Held-out AUROC against baselines, at each concept's best layer",
            ylabel="AUROC",
        ),
        "causal": bar_chart(
            names,
            {
                "steering along the detector": [r["effect"] for r in rows],
                "random directions (mean)": [r["random_effect"] for r in rows],
                "top feature": [r["feature_effect"] for r in rows],
            },
            title="Change in behaviour (log-prob margin) when steered, by concept",
            ylabel="Δ log P(concept) − log P(opposite)",
        ),
    }
    return {"rows": rows, "charts": charts}


def _concept_row(c: dict[str, Any]) -> dict[str, Any]:
    det = c["detector"]
    layer = next(r for r in c["layers"] if r["layer"] == det["layer"])
    direction = next((k for k in c["causal"] if k["target"] == "direction"), None)
    feature = next((k for k in c["causal"] if k["target"] == "feature"), None)
    top = c["features"][0] if c["features"] else None
    return {
        "concept": c["concept"],
        "labels": f"{c['positive_label']} vs {c['negative_label']}",
        "layer": det["layer"],
        "method": det["method"],
        "auroc": det["auroc"],
        "recall": det["recall"],
        "neutral_fpr": det["neutral_fpr"],
        "random_p95": layer["random_auroc_p95"],
        "neuron_auroc": layer["neuron_auroc"],
        "feature": top,
        "feature_auroc": top["auroc"] if top else None,
        "effect": direction["effect"] if direction else None,
        "random_effect": direction["random_effect_mean"] if direction else None,
        "verdict": direction["verdict"] if direction else None,
        "beyond_random": bool(direction and direction["beyond_random"]),
        "feature_effect": feature["effect"] if feature else None,
        "feature_verdict": feature["verdict"] if feature else None,
        "n_test": c["n_test_pairs"],
        "finding": c["finding"],
        "causal": c["causal"],
        "features": c["features"][:8],
    }


def audit_view(stage: dict[str, Any]) -> dict[str, Any] | None:
    """Nothing besides the result (the partial reads the hypotheses as they are); None where
    the audit did not run."""
    return None if stage.get("skipped") else {}
