"""The features and steering sections, prepared for the templates from scan.json's stages.

Features: the bases (dictionary, neurons, random directions) with their dead fractions and a
density chart, the interpretable-fraction table grouped by explainer and scorer, and the
per-feature dashboards' data as ONE JSON block that static/features.js renders (search, sort,
pages). Steering: a row per strength and two charts.

The JSON block is safe inside `<script type="application/json">`: `<`, `>` and `&` are written
as `\\u003c`, `\\u003e`, `\\u0026`, so no token string can close the block or open a comment;
JSON.parse (and json.loads) read the original strings back.
Not here: computing anything new (the scan did), page layout (templates), drawing the cards (JS).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

from markupsafe import Markup

from aimri.report.svg import line_chart

# Dictionaries first, then the baselines they are compared with.
_KIND_ORDER = {
    "sae": 0,
    "transcoder": 0,
    "mlp_neurons": 1,
    "random_dictionary": 2,
    "residual": 3,
    "neurons": 3,
    "random": 4,
}


@dataclass(frozen=True)
class SummaryGroup:
    """The interpretable-fraction rows of one (explainer, scorer) pair, dictionary first."""

    explainer: str
    scorer: str
    rows: list[dict[str, Any]]
    """The summary rows as in scan.json, each with `kind` and bar widths `bar`, `bar_baseline`,
    `bar_ci` (left, width) in percent added."""


@dataclass(frozen=True)
class FeaturesView:
    bases: list[dict[str, Any]]
    groups: list[SummaryGroup]
    density_chart: Markup | None
    data_json: Markup
    """`stage["features"]` with each label's `scores_nothing` (see `with_verdicts`), for the
    dashboards' `<script type="application/json">` block."""
    meta_json: Markup
    """What the cards need besides: the summary's thresholds, {explainer: {scorer: threshold}}."""
    n_features: int


@dataclass(frozen=True)
class SteeringView:
    rows: list[dict[str, Any]]
    """The stage's rows, sorted by strength."""
    charts: list[Markup]
    generations: list[tuple[str, list[tuple[float | None, str, str]]]]
    """Per prompt (in first-seen order): (strength, the feature's text, a random direction's
    text at the same norm) for every strength; strength None is the unedited model."""


def features_view(stage: dict[str, Any]) -> FeaturesView:
    bases: list[dict[str, Any]] = stage.get("bases") or []
    features: list[dict[str, Any]] = stage.get("features") or []
    summary: list[dict[str, Any]] = stage.get("summary") or []
    thresholds: dict[str, dict[str, float]] = {}
    for r in summary:
        thresholds.setdefault(r["explainer"], {})[r["scorer"]] = r["threshold"]
    return FeaturesView(
        bases=_by_kind_order(bases),
        groups=summary_groups(summary, bases),
        density_chart=density_chart(bases),
        data_json=json_for_script(with_verdicts(features)),
        meta_json=json_for_script({"thresholds": thresholds}),
        n_features=len(features),
    )


CHANCE = {"simulation": 0.0}
"""A scorer's chance level where it is not 0.5 (AUROC and balanced accuracy)."""
MARGIN = 0.05
"""How far above chance a score must be to say anything."""


def scores_nothing(scores: list[dict[str, Any]]) -> bool:
    """A label's scores say nothing when there is at least one and none is a number above both
    its scorer's chance level (by `MARGIN`) and its shuffled-label baseline: `promotes …` at
    simulation r 0.00, or a label no better than another feature's."""
    if not scores:
        return False  # never scored: nothing is known either way

    def says(s: dict[str, Any]) -> bool:
        v, base = s.get("value"), s.get("baseline")
        if not isinstance(v, int | float) or not math.isfinite(v):
            return False
        floor = CHANCE.get(str(s.get("scorer")), 0.5) + MARGIN
        beats_base = not isinstance(base, int | float) or not math.isfinite(base) or v > base
        return v > floor and beats_base

    return not any(says(s) for s in scores)


def with_verdicts(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The features with `scores_nothing` on each label, from the scores of its explainer (the
    dashboards show such a label as scoring nothing, not in bold). The input is not changed."""
    out: list[dict[str, Any]] = []
    for f in features:
        scores: list[dict[str, Any]] = f.get("scores") or []
        labels: list[dict[str, Any]] = [
            {**lab, "scores_nothing": scores_nothing(
                [s for s in scores if s.get("explainer") == lab.get("explainer")]
            )}
            for lab in cast(list[dict[str, Any]], f.get("labels") or [])
        ]  # fmt: skip
        out.append({**f, "labels": labels})
    return out


def features_scripts(view: FeaturesView) -> tuple[str, ...]:
    """The dashboards' script (and the helpers it uses), where there are dashboards."""
    return ("common.js", "features.js") if view.n_features else ()


def json_for_script(obj: Any) -> Markup:
    """JSON text that is safe as the body of `<script type="application/json">`.

    NaN and infinities (not JSON; JSON.parse would reject the whole block) become null.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(ch, esc)  # inside JSON strings only: JSON syntax has none of them
    return Markup(text)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in cast(dict[Any, Any], obj).items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in cast(list[Any] | tuple[Any, ...], obj)]
    return obj


def summary_groups(
    summary: list[dict[str, Any]], bases: list[dict[str, Any]]
) -> list[SummaryGroup]:
    """Rows grouped by (explainer, scorer), each group ordered dictionary → neurons → random."""
    kinds = {b["info"]["name"]: b["info"]["kind"] for b in bases}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in summary:
        kind = kinds.get(r["basis"], str(r["basis"]).split(" ")[0])
        row = {
            **r,
            "kind": kind,
            "bar": _pct(r.get("frac_above")),
            "bar_baseline": _pct(r.get("frac_above_baseline")),
        }
        lo, hi = _pct(r.get("ci_low")), _pct(r.get("ci_high"))
        row["bar_ci"] = (lo, max(0.0, hi - lo))
        groups.setdefault((r["explainer"], r["scorer"]), []).append(row)
    ordered = sorted(groups.items(), key=lambda kv: kv[0][1] != "simulation")  # headline first
    return [
        SummaryGroup(e, s, sorted(rows, key=lambda r: _KIND_ORDER.get(r["kind"], 5)))
        for (e, s), rows in ordered
    ]


def _pct(v: Any) -> float:
    """A share as a percentage for a CSS width: a plain float in [0, 100]."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return round(min(100.0, max(0.0, 100 * x)), 2) if math.isfinite(x) else 0.0


def density_chart(bases: list[dict[str, Any]]) -> Markup | None:
    """Firing density per basis as the share of its live features in each log10-density bin.

    Shares, not counts, so a dictionary of 4,608 features and 576 neurons compare by shape.
    Bases with different bin edges are put on one grid spanning all of them.
    """
    hists = [b for b in _by_kind_order(bases) if sum(b.get("density_hist_counts") or []) > 0]
    if not hists:
        return None
    edges = [float(e) for e in hists[0]["density_hist_edges"]]
    if any(b["density_hist_edges"] != hists[0]["density_hist_edges"] for b in hists):
        lo = min(b["density_hist_edges"][0] for b in hists)
        hi = max(b["density_hist_edges"][-1] for b in hists)
        edges = [lo + (hi - lo) * i / 30 for i in range(31)]
    series: dict[str, list[float | None]] = {}
    for b in hists:
        shares: list[float | None] = [0.0] * (len(edges) - 1)
        total = sum(b["density_hist_counts"])
        for (a, z), c in zip(
            _pairs(b["density_hist_edges"]), b["density_hist_counts"], strict=False
        ):
            i = min(len(shares) - 1, max(0, bisect.bisect_right(edges, (a + z) / 2) - 1))
            shares[i] = (shares[i] or 0.0) + c / total
        series[b["info"]["name"]] = shares
    return line_chart(
        [round((a + z) / 2, 3) for a, z in _pairs(edges)],
        series,
        title="Firing density: share of each basis's live features",
        xlabel="log10 firing density (share of tokens on which it fires)",
        ylabel="share of features",
        width=720,
    )


def _by_kind_order(bases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dictionary first, then neurons, then random (the chart's colours follow this order)."""
    return sorted(bases, key=lambda b: _KIND_ORDER.get(b["info"]["kind"], 3))


def _pairs(edges: list[float]) -> list[tuple[float, float]]:
    return list(pairwise(edges))


def steering_view(stage: dict[str, Any]) -> SteeringView | None:
    """The feature against random directions and neurons at the same norm, by strength. A
    skipped demonstration has no rows (its partial says why); None: no rows and no reason."""
    if not stage.get("rows") and not stage.get("skipped"):
        return None
    rows: list[dict[str, Any]] = sorted(stage.get("rows") or [], key=lambda r: float(r["strength"]))
    xs = [float(r["strength"]) for r in rows]
    xlabel = "added norm (× median ordinary-token norm)"

    def series(part: str, key: str) -> list[float | None]:
        return [cast(dict[str, Any], r.get(part) or {}).get(key) for r in rows]

    charts = [
        line_chart(
            xs,
            {
                f"feature #{stage.get('feature')}": series("feature", "logprob_rise"),
                "random directions, 95th percentile": series("random_p95", "logprob_rise"),
                "best neuron": series("neurons_best", "logprob_rise"),
            },
            title="Rise of the concept tokens' log-probability",
            xlabel=xlabel,
            ylabel="nats",
            width=420,
        ),
        line_chart(
            xs,
            {
                f"feature #{stage.get('feature')}": series("feature", "distinct"),
                "random directions, 95th percentile": series("random_p95", "distinct"),
            },
            title="Fluency: share of distinct tokens in the generations",
            xlabel=xlabel,
            ylabel="distinct share",
            width=420,
        ),
    ]
    prompts: dict[str, list[tuple[float | None, str, str]]] = {}
    baseline: dict[str, Any] = stage.get("baseline") or {}
    generations: list[dict[str, str]] = baseline.get("generations") or []
    for g in generations:
        prompts.setdefault(g["prompt"], []).append((None, g["text"], ""))
    for r in rows:
        random_example: list[dict[str, str]] = r.get("random_example") or []
        randoms = {g["prompt"]: g["text"] for g in random_example}
        for g in cast(list[dict[str, str]], r.get("generations") or []):
            text = (float(r["strength"]), g["text"], randoms.get(g["prompt"], ""))
            prompts.setdefault(g["prompt"], []).append(text)
    return SteeringView(rows, charts, list(prompts.items()))
