"""The numbers of scoring: AUROC and binary metrics for one label's scorer, and how
interpretable a basis is, in one row per (basis, explainer, scorer) of scores.

A row's headline is `frac_above`, the share of features whose label clears a threshold, with a
Wilson 95% interval, beside `frac_above_baseline`, the same share for the shuffled-label
baselines. Rows of one layer side by side (a dictionary's features, the MLP's neurons, an
untrained dictionary of the same shape, the site's residual coordinates, random directions) are
how superposition shows: if the dictionary's features are monosemantic, many more of them clear
the bar than any baseline's units do. A finding is worded by the strictest baseline, the one
whose units clear the bar most often (`compare_with_strictest`). A nan score (empty label,
failed judge) counts in `n` and as not clearing the bar. Not here: how labels are judged
(`score.py`), plots; the CLI prints `format_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from aimri.errors import AimriError
from aimri.features.records import Score

DEFAULT_THRESHOLDS: dict[str, float] = {
    "simulation": 0.5,
    "rule": 0.7,
    "embedding": 0.75,
    "detection": 0.7,
    "fuzzing": 0.7,
}
"""Scorer → the score that counts as "interpretable": pooled Pearson r for `simulation` (0 is
chance), AUROC for `embedding`, balanced accuracy for `rule`, `detection` and `fuzzing` (0.5 is
chance for those four)."""


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(random positive > random negative), ties counting one half: the Mann–Whitney U statistic
    over n_pos·n_neg, from average ranks. nan when either side is empty; inputs must be finite."""
    n_pos, n_neg = len(positives), len(negatives)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    values = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(values):
        j = i
        while j < len(values) and values[j][0] == values[i][0]:
            j += 1
        rank_sum += (i + 1 + j) / 2 * sum(p for _, p in values[i:j])  # ranks i+1..j, averaged
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_metrics(truth: Sequence[bool], said: Sequence[bool]) -> dict[str, float]:
    """balanced_accuracy (nan without both classes), f1, precision, recall, n_pos, n_neg.
    Precision with no positive answers is 0, as is F1 when precision and recall are both 0."""
    tp = sum(t and s for t, s in zip(truth, said, strict=True))
    fp = sum(s and not t for t, s in zip(truth, said, strict=True))
    n_pos = sum(truth)
    n_neg = len(truth) - n_pos
    tn = n_neg - fp
    recall = tp / n_pos if n_pos else math.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "balanced_accuracy": (recall + tn / n_neg) / 2 if n_pos and n_neg else math.nan,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "n_pos": float(n_pos),
        "n_neg": float(n_neg),
    }


@dataclass(frozen=True)
class SummaryRow:
    """The scores of one explainer's labels on one basis, by one scorer."""

    basis: str
    """The key of `scores_by_basis`: in `describe`, the basis's name, e.g. `sae
    blocks.15.hook_resid_post (4608)`, `MLP neurons blocks.15.mlp (1536)`."""
    explainer: str
    scorer: str
    n: int
    """Scores in the group, nan ones included."""
    mean: float
    """Mean of the finite values (nan if none)."""
    mean_baseline: float
    """Mean of the finite shuffled-label baselines."""
    frac_above: float
    """Share of the n scores with value ≥ threshold."""
    frac_above_baseline: float
    """Share of the n baselines ≥ threshold."""
    threshold: float
    ci_low: float
    """Wilson 95% interval of `frac_above`."""
    ci_high: float
    n_nan: int = 0
    """Scores whose value is nan (empty label, judge failed or could not be parsed)."""


class Interval(NamedTuple):
    low: float
    high: float


def wilson_interval(k: int, n: int, z: float = 1.96) -> Interval:
    """Wilson score interval of a proportion k/n (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return Interval(0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def interpretability_summary(
    scores_by_basis: dict[str, list[Score]], threshold: float | None = None
) -> list[SummaryRow]:
    """Rows by scorer, explainer, then basis (in the dict's order). `threshold` None takes each
    scorer's `DEFAULT_THRESHOLDS` entry."""
    groups: dict[tuple[str, str, str], list[Score]] = {}
    for basis, scores in scores_by_basis.items():
        for s in scores:
            groups.setdefault((s.scorer, s.explainer, basis), []).append(s)
    order = {b: i for i, b in enumerate(scores_by_basis)}
    rows = []
    for scorer, explainer, basis in sorted(groups, key=lambda g: (g[0], g[1], order[g[2]])):
        bar = threshold if threshold is not None else DEFAULT_THRESHOLDS.get(scorer)
        if bar is None:
            raise AimriError(
                f"scorer '{scorer}' has no default threshold (known: "
                f"{', '.join(sorted(DEFAULT_THRESHOLDS))}): pass threshold= explicitly"
            )
        rows.append(_row(basis, explainer, scorer, groups[(scorer, explainer, basis)], bar))
    return rows


def _row(basis: str, explainer: str, scorer: str, scores: list[Score], bar: float) -> SummaryRow:
    values = [s.value for s in scores]
    baselines = [s.baseline for s in scores]
    k = sum(v >= bar for v in values)  # nan >= bar is False
    ci = wilson_interval(k, len(scores))
    return SummaryRow(
        basis=basis,
        explainer=explainer,
        scorer=scorer,
        n=len(scores),
        mean=_mean(values),
        mean_baseline=_mean(baselines),
        frac_above=k / len(scores),
        frac_above_baseline=sum(b >= bar for b in baselines) / len(scores),
        threshold=bar,
        ci_low=ci.low,
        ci_high=ci.high,
        n_nan=sum(math.isnan(v) for v in values),
    )


def _mean(xs: Sequence[float]) -> float:
    finite = [x for x in xs if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else math.nan


def strictest_baseline(rows: Sequence[SummaryRow], *, dictionary: str) -> SummaryRow | None:
    """The row, among `rows` of one explainer and scorer, of the baseline (any basis but
    `dictionary`) whose units clear the bar most often (ties: the higher upper bound of the
    interval, then the higher mean): the one a claim about the dictionary has to beat. None
    when there is no baseline row."""
    groups = {(r.explainer, r.scorer) for r in rows}
    if len(groups) > 1:
        raise AimriError(
            f"strictest_baseline compares rows of one explainer and scorer, got {len(groups)} "
            f"({', '.join(sorted(f'{e}/{s}' for e, s in groups))}): pass one group's rows"
        )
    others = [r for r in rows if r.basis != dictionary]
    return max(
        others,
        key=lambda r: (r.frac_above, r.ci_high, r.mean if math.isfinite(r.mean) else -math.inf),
        default=None,
    )


class BaselineComparison(NamedTuple):
    ours: SummaryRow
    """The dictionary's row."""
    strictest: SummaryRow | None
    """The strictest baseline's row (None without baselines)."""
    verdict: str
    """`above`, `below` or `not measurably different from` (by the 95% intervals), or `no
    baseline`."""
    sentence: str
    """The finding in words, e.g. '24% of sae … clear simulation ≥ 0.5 (95% CI 18%–31%); the
    strictest baseline, MLP neurons blocks.15.mlp (1536), reaches 3% (95% CI 1%–8%): above
    it'."""


def compare_with_strictest(
    rows: Sequence[SummaryRow], *, dictionary: str, explainer: str, scorer: str
) -> BaselineComparison:
    """The dictionary's (explainer, scorer) row against the strictest baseline of that group:
    `above` only where the dictionary's interval lies wholly above the baseline's."""
    group = [r for r in rows if (r.explainer, r.scorer) == (explainer, scorer)]
    ours = next((r for r in group if r.basis == dictionary), None)
    if ours is None:
        raise AimriError(
            f"no summary row for '{dictionary}' with explainer '{explainer}' and scorer "
            f"'{scorer}' (rows: {', '.join(sorted({f'{r.explainer}/{r.scorer}' for r in rows}))})"
            ": pick a group the dictionary was scored in"
        )
    best = strictest_baseline(group, dictionary=dictionary)
    head = (
        f"{ours.frac_above:.0%} of {dictionary} clear {scorer} ≥ {ours.threshold:g} ({_ci(ours)})"
    )
    if best is None:
        return BaselineComparison(ours, None, "no baseline", f"{head}; no baseline to compare")
    if ours.ci_low > best.ci_high:
        verdict = "above"
    elif ours.ci_high < best.ci_low:
        verdict = "below"
    else:
        verdict = "not measurably different from"
    sentence = (
        f"{head}; the strictest baseline, {best.basis}, reaches {best.frac_above:.0%} "
        f"({_ci(best)}): {verdict} it"
    )
    return BaselineComparison(ours, best, verdict, sentence)


def _ci(r: SummaryRow) -> str:
    return f"95% CI {r.ci_low:.0%}–{r.ci_high:.0%}"


def format_summary(rows: Sequence[SummaryRow]) -> str:
    """A plain-text table of the rows, one line each."""
    head = f"{'scorer':<10} {'explainer':<12} {'basis':<12} {'n':>5} {'mean':>6} {'shuf':>6}"
    head += f" {'thr':>5} {'≥thr':>6} {'95% CI':>13} {'shuf≥':>6}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.scorer:<10} {r.explainer:<12} {r.basis:<12} {r.n:>5} {r.mean:>6.3f} "
            f"{r.mean_baseline:>6.3f} {r.threshold:>5.2f} {r.frac_above:>6.1%} [{r.ci_low:>5.1%},{r.ci_high:>5.1%}] "
            f"{r.frac_above_baseline:>6.1%}"
        )
    return "\n".join(lines)
