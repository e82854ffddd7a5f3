"""The model's internals in the report, prepared from scan.json's stages: activation statistics
(norms by layer and position, the position-0 ratio, cosine between sites), the logit lens and
the ground-truth toy model, each as charts for its partial; and the dictionary's training and
firing-density charts.

Not here: computing anything (the scan did), page layout (templates/statistics.html.j2,
logit_lens.html.j2, ground_truth.html.j2, dictionary.html.j2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from aimri.model.sites import parse_site
from aimri.report.svg import line_chart

Charts = dict[str, Markup]
"""Prepared SVG charts for a partial, keyed by name."""


def by_kind(
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


def statistics_view(stage: dict[str, Any]) -> Charts:
    """Norms by layer (median and p90), the position-0 ratio, cosine with the previous site and
    norms by position at three sites."""
    stats: list[dict[str, Any]] = stage.get("sites") or []
    if not stats:
        return {}
    layers, med = by_kind(stats, lambda r: r["norm_quantiles"]["p50"])
    _, p90 = by_kind(stats, lambda r: r["norm_quantiles"]["p90"])
    series = {f"{k} median": v for k, v in med.items()} | {f"{k} p90": v for k, v in p90.items()}
    charts = {
        "norms": line_chart(
            layers,
            series,
            title="Activation norm by layer (position 0 left out)",
            xlabel="layer",
            ylabel="L2 norm",
            log_y=True,
        ),
        "bos": line_chart(
            layers,
            by_kind(stats, "bos_norm_ratio")[1],
            title="Norm at position 0 / median norm elsewhere",
            xlabel="layer",
            ylabel="ratio",
            log_y=True,
        ),
    }
    _, cos = by_kind([r for r in stats if r["cos_with_previous"] is not None], "cos_with_previous")
    if cos:
        charts["cos"] = line_chart(
            layers[1:] if len(layers) > 1 else layers,
            {k: v[-(len(layers) - 1) :] for k, v in cos.items()},
            title="Cosine with the previous residual site",
            xlabel="layer",
            ylabel="mean cosine",
        )
    charts["positions"] = _positions_chart(stats)
    return charts


def _positions_chart(stats: list[dict[str, Any]]) -> Markup:
    """Mean norm by position at the first, middle and last site."""
    picks = [stats[0], stats[len(stats) // 2], stats[-1]]
    picks = list({r["site"]: r for r in picks}.values())
    return line_chart(
        list(range(len(picks[0]["norm_by_position"]))),
        {r["site"]: r["norm_by_position"] for r in picks},
        title="Mean norm by position in the context",
        xlabel="position",
        ylabel="L2 norm",
        log_y=True,
    )


def logit_lens_view(stage: dict[str, Any]) -> Charts:
    """Top-1 accuracy and agreement with the model, and cross-entropy, by layer; no charts
    without layers (the partial says why)."""
    lens: list[dict[str, Any]] = stage.get("layers") or []
    if not lens:
        return {}
    layers, acc = by_kind(lens, "next_token_accuracy")
    _, agree = by_kind(lens, "agreement_with_model")
    series = {f"next-token accuracy ({k})": v for k, v in acc.items()} | {
        f"agrees with model ({k})": v for k, v in agree.items()
    }
    return {
        "acc": line_chart(
            layers,
            series,
            title="Logit lens: top-1 accuracy by layer",
            xlabel="layer",
            ylabel="share of tokens",
        ),
        "ce": line_chart(
            layers,
            by_kind(lens, "next_token_ce")[1],
            title="Logit lens: next-token cross-entropy by layer",
            xlabel="layer",
            ylabel="nats",
        ),
    }


def ground_truth_view(stage: dict[str, Any]) -> Charts:
    """The histogram of each planted feature's best cosine with a learned latent."""
    h = stage["cosine_histogram"]
    centers = [round(e + 0.05, 2) for e in h["edges"][:-1]]
    return {
        "cosines": line_chart(
            centers,
            {"planted features": h["counts"]},
            title="Best cosine of each planted feature with a learned latent",
            xlabel="cosine",
            ylabel="features",
        )
    }


def dictionary_view(stage: dict[str, Any]) -> Charts:
    """Training curves (FVU and dead fraction, L0) where it was trained here, and the latents'
    firing density."""
    charts: Charts = {}
    training: dict[str, Any] = stage.get("training") or {}
    curve: dict[str, Any] | None = training.get("curve")
    if curve:
        charts["fvu"] = line_chart(
            curve["step"],
            {"FVU (training batches)": curve["fvu"], "dead fraction": curve["dead_frac"]},
            title="Dictionary training",
            xlabel="step",
            ylabel="fraction",
            log_y=False,
        )
        charts["l0"] = line_chart(
            curve["step"],
            {"L0": curve["l0"]},
            title="Active latents per token",
            xlabel="step",
            ylabel="L0",
        )
    hist = stage.get("eval", {}).get("misc_metrics", {}).get("firing_density_log10_histogram")
    if hist:
        centers = [e + 0.5 for e in hist["edges"][:-1]]
        charts["density"] = line_chart(
            centers,
            {"latents": hist["counts"]},
            title="Firing density of latents (log10 of share of tokens)",
            xlabel="log10 firing density",
            ylabel="latents",
        )
    return charts
