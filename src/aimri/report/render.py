"""Render the scan's report: one self-contained HTML file (styles and scripts inline).

Autoescaping is on for every template, so token strings such as `<script>` show as text, and
bidirectional control characters (a right-to-left override from the corpus) are shown as their
code point rather than reordering what is around them.
The features section's dashboards are drawn by static/features.js from one JSON block, with
`textContent` only (see report/features.py for how that block is made safe).
Not here: computing anything; the report only shows what scan.json holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from aimri._io import write_bytes_atomic
from aimri.model.sites import parse_site
from aimri.report.checkup import concepts_view, diff_view
from aimri.report.circuits import circuits_view
from aimri.report.features import features_view, steering_view
from aimri.report.svg import line_chart


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("aimri.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["line_chart"] = line_chart
    env.globals["asset"] = _asset
    env.filters["num"] = lambda v, d=3: (
        "–" if not _finite(v) else f"{v:,.{d}g}" if abs(v) < 1e5 else f"{v:,.0f}"
    )
    env.filters["pct"] = lambda v: "–" if not _finite(v) else f"{100 * v:.1f}%"
    return env


def _finite(v: Any) -> bool:
    """A number to print: not None, nan or infinite (those show as "–")."""
    return isinstance(v, int | float) and math.isfinite(v)


# Characters that reorder the text around them (bidirectional overrides and isolates, marks):
# from a corpus or a label they would make the report show something other than what is there.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI_VISIBLE = str.maketrans({c: f"\u27e8U+{ord(c):04X}\u27e9" for c in _BIDI})


def visible(obj: Any) -> Any:
    """`obj` with every bidirectional control character in its strings shown as `⟨U+202E⟩`."""
    if isinstance(obj, str):
        return obj.translate(_BIDI_VISIBLE)
    if isinstance(obj, dict):
        return {visible(k): visible(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [visible(v) for v in obj]
    return obj


def render_report(scan: dict[str, Any], path: Path) -> Path:
    scan = visible(scan)
    stages = scan["stages"]
    circuits = scan.get("circuits") or stages.get("circuits")
    html = (
        _env()
        .get_template("report.html.j2")
        .render(
            scan=scan,
            charts=_charts(scan),
            features=features_view(stages["features"]) if stages.get("features") else None,
            steering=steering_view(stages["steering"])
            if (stages.get("steering") or {}).get("rows")
            else None,
            circuits=circuits_view(circuits) if circuits else None,
            diff=_ran(stages.get("diff")),
            diff_charts=diff_view(stages["diff"]) if _ran(stages.get("diff")) else {},
            concepts=concepts_view(stages["concepts"]) if _ran(stages.get("concepts")) else None,
            audit=_ran(stages.get("audit")),
        )
    )
    write_bytes_atomic(path, html.encode("utf-8"))
    return path


def _ran(stage: dict[str, Any] | None) -> bool:
    """A stage that ran (skipped stages keep only their reason)."""
    return bool(stage) and not stage.get("skipped")


@cache
def _asset(name: str) -> Markup:
    """A script or style sheet from report/static, to inline (our own code, never data)."""
    text = files("aimri.report").joinpath("static", name).read_text(encoding="utf-8")
    assert "</script" not in text.lower() and "</style" not in text.lower(), name
    return Markup(text)


def _by_kind(
    rows: list[dict[str, Any]], key: str | Callable[[dict[str, Any]], float]
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Rows keyed by site → layers on x, one series per site kind."""
    layers = sorted({parse_site(r["site"]).layer for r in rows})
    series: dict[str, list[float | None]] = {}
    for r in rows:
        layer, kind = parse_site(r["site"])
        series.setdefault(kind, [None] * len(layers))[layers.index(layer)] = (
            key(r) if callable(key) else r[key]
        )
    return layers, series


def _charts(scan: dict[str, Any]) -> dict[str, Any]:
    """Prepared SVG charts for the template, keyed by name."""
    charts: dict[str, Any] = {}
    stats = scan["stages"].get("statistics", {}).get("sites", [])
    if stats:
        layers, med = _by_kind(stats, lambda r: r["norm_quantiles"]["p50"])
        _, p90 = _by_kind(stats, lambda r: r["norm_quantiles"]["p90"])
        series = {f"{k} median": v for k, v in med.items()} | {
            f"{k} p90": v for k, v in p90.items()
        }
        charts["norms"] = line_chart(
            layers,
            series,
            title="Activation norm by layer (position 0 left out)",
            xlabel="layer",
            ylabel="L2 norm",
            log_y=True,
        )
        _, ratio = _by_kind(stats, "bos_norm_ratio")
        charts["bos"] = line_chart(
            layers,
            ratio,
            title="Norm at position 0 / median norm elsewhere",
            xlabel="layer",
            ylabel="ratio",
            log_y=True,
        )
        _, cos = _by_kind(
            [r for r in stats if r["cos_with_previous"] is not None], "cos_with_previous"
        )
        if cos:
            charts["cos"] = line_chart(
                layers[1:] if len(layers) > 1 else layers,
                {k: v[-(len(layers) - 1) :] for k, v in cos.items()},
                title="Cosine with the previous residual site",
                xlabel="layer",
                ylabel="mean cosine",
            )
        picks = [stats[0], stats[len(stats) // 2], stats[-1]]
        picks = list({r["site"]: r for r in picks}.values())
        n = len(picks[0]["norm_by_position"])
        charts["positions"] = line_chart(
            list(range(n)),
            {r["site"]: r["norm_by_position"] for r in picks},
            title="Mean norm by position in the context",
            xlabel="position",
            ylabel="L2 norm",
            log_y=True,
        )
    lens = scan["stages"].get("logit_lens", {}).get("layers", [])
    if lens:
        layers, acc = _by_kind(lens, "next_token_accuracy")
        _, agree = _by_kind(lens, "agreement_with_model")
        series = {f"next-token accuracy ({k})": v for k, v in acc.items()} | {
            f"agrees with model ({k})": v for k, v in agree.items()
        }
        charts["lens_acc"] = line_chart(
            layers,
            series,
            title="Logit lens: top-1 accuracy by layer",
            xlabel="layer",
            ylabel="share of tokens",
        )
        _, ce = _by_kind(lens, "next_token_ce")
        charts["lens_ce"] = line_chart(
            layers,
            ce,
            title="Logit lens: next-token cross-entropy by layer",
            xlabel="layer",
            ylabel="nats",
        )
    charts.update(_dictionary_charts(scan["stages"].get("dictionary") or {}))
    gt = scan["stages"].get("ground_truth")
    if gt:
        h = gt["cosine_histogram"]
        centers = [round(e + 0.05, 2) for e in h["edges"][:-1]]
        charts["gt"] = line_chart(
            centers,
            {"planted features": h["counts"]},
            title="Best cosine of each planted feature with a learned latent",
            xlabel="cosine",
            ylabel="features",
        )
    return charts


def _dictionary_charts(stage: dict[str, Any]) -> dict[str, Any]:
    charts: dict[str, Any] = {}
    curve = (stage.get("training") or {}).get("curve")
    if curve:
        charts["dict_fvu"] = line_chart(
            curve["step"],
            {"FVU (training batches)": curve["fvu"], "dead fraction": curve["dead_frac"]},
            title="Dictionary training",
            xlabel="step",
            ylabel="fraction",
            log_y=False,
        )
        charts["dict_l0"] = line_chart(
            curve["step"],
            {"L0": curve["l0"]},
            title="Active latents per token",
            xlabel="step",
            ylabel="L0",
        )
    hist = stage.get("eval", {}).get("misc_metrics", {}).get("firing_density_log10_histogram")
    if hist:
        centers = [e + 0.5 for e in hist["edges"][:-1]]
        charts["dict_density"] = line_chart(
            centers,
            {"latents": hist["counts"]},
            title="Firing density of latents (log10 of share of tokens)",
            xlabel="log10 firing density",
            ylabel="latents",
        )
    return charts
