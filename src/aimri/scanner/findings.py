"""Wording shared by the stages' findings and summary lines: the features stage's headline
label row and its verdict against the baselines.

Each finding names what was seen, where, and the numbers behind it; nothing is asserted
without a measurement. Not here: the findings themselves (each stage declares its own, see
`stage.py`), computing the measurements (the stages do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from aimri.features.records import BASELINE_KINDS, KIND_NAMES


class LabelRows(NamedTuple):
    best: dict[str, Any]
    """The dictionary's headline (explainer, scorer) summary row (see `best_label_rows`)."""
    rows: list[dict[str, Any]]
    """Every basis's row for the same explainer and scorer."""
    by_kind: dict[str, dict[str, Any]]
    """Basis kind (sae, mlp_neurons, random_dictionary, residual, random) → its row."""


HEADLINE_SCORER = "simulation"
"""The interpretable fraction is read from this scorer, fixed in advance: taking the best of
several scorers and explainers would flatter the dictionary (a maximum over noisy shares)."""


def best_label_rows(stage: Mapping[str, Any] | None) -> LabelRows | None:
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


def pct(r: dict[str, Any], key: str = "frac_above") -> str:
    return f"{100 * (r[key] or 0):.0f}%"


def ci(r: dict[str, Any]) -> str:
    return f"95% CI {pct(r, 'ci_low')}–{pct(r, 'ci_high')}"


def strictest_kind(by_kind: dict[str, dict[str, Any]]) -> str | None:
    """The baseline most often interpretable (ties: the higher upper bound): the one a finding
    is worded by."""
    present = [k for k in BASELINE_KINDS if k in by_kind]
    if not present:
        return None
    return max(
        present,
        key=lambda k: (by_kind[k]["frac_above"] or 0, by_kind[k]["ci_high"] or 0),
    )


def interpretability_verdict(best: dict[str, Any], by_kind: dict[str, dict[str, Any]]) -> str:
    """How the dictionary's share compares with the strictest baseline's (`strictest_kind`), by
    the 95% intervals: 'above' only where the dictionary's interval lies wholly above it."""
    k = strictest_kind(by_kind)
    if k is None:
        return "no baselines to compare with"
    r, name = by_kind[k], KIND_NAMES.get(k, k)
    if (best["ci_low"] or 0) > (r["ci_high"] or 0):
        return f"above the strictest baseline, {name} ({pct(r)})"
    if (best["ci_high"] or 0) < (r["ci_low"] or 0):
        return f"below the strictest baseline, {name} ({pct(r)})"
    return f"not measurably different from the strictest baseline, {name} ({pct(r)})"
