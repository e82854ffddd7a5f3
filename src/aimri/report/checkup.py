"""The check-up's sections of the report (concepts, diff): charts prepared from scan.json.

Not here: computing anything (the report only shows what the JSON holds), the page layout
(templates/concepts.html.j2, templates/diff.html.j2).
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from aimri.report.svg import line_chart


def diff_view(stage: dict[str, Any]) -> dict[str, Markup]:
    """Charts of how much each layer changed and how much of the change steering reproduces."""
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
