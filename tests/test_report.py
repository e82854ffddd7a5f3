"""The report: charts escape their text and get round ticks; the features and steering sections
render from scan.json's shape, escape every string, and embed the dashboards' data as JSON that
no token can break out of. The helpers here build scan documents for test_report_browser.py too.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape as html_escape

from aimri.report.features import json_for_script, with_verdicts
from aimri.report.render import render_report
from aimri.report.svg import bar_chart, line_chart, ticks
from aimri.scanner.stages import SECTIONS

HOSTILE = (
    "<script>alert(1)</script>",
    "</script><img src=x onerror=alert(1)>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "\"'&",
    "<!--",
)
WORDS = (
    " the", " dog", " dogs", " cat", " Paris", " France", "\n", " def", " return", "(", ")",
    " Monday", " Tuesday", ",", ".", " barked", " puppy", " code", " is", " a", "é", "  ", "\t",
)  # fmt: skip
CONCEPTS = (
    "dogs and puppies",
    "French cities",
    "Python function definitions",
    "days of the week",
    "closing parentheses",
    "the word 'the' after a verb",
    "commas in lists",
    "cats",
)
FEATURES_DATA = re.compile(
    r'<script type="application/json" id="features-data">(.*?)</script>', re.DOTALL
)


def base_scan() -> dict[str, Any]:
    """A scan document with the stages every scan has (activations, statistics, logit lens)."""
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    stat = {
        "n_tokens": 1024,
        "norm_mean": 10.0,
        "norm_quantiles": {"p1": 5.0, "p50": 10.0, "p90": 14.0, "p99": 20.0},
        "bos_norm_ratio": 30.0,
        "norm_by_position": [40.0, 10.0, 11.0, 10.5],
        "top_dims": [[3, 12.0], [7, 4.0]],
    }
    return {
        "kind": "aimri.scanner",
        "run": "test-run",
        "created": "2025-01-01T00:00:00+00:00",
        "model": {
            "spec": "tiny",
            "source": "tests",
            "family": "llama",
            "parallel_residual": False,
            "n_params": 12345,
            "n_layers": 2,
            "d_model": 32,
            "d_mlp": 64,
            "n_heads": 4,
            "vocab_size": 400,
            "dtype": "float32",
            "weights_sha256": "0" * 64,
        },
        "findings": [],
        "stages": {
            "activations": {
                "path": "activations",
                "corpus": {
                    "source": "builtin",
                    "ctx_len": 64,
                    "boundary": "pack",
                    "prepend_bos": True,
                    "seed": 0,
                },
                "sites": dict.fromkeys(sites, 32),
                "dtype": "float16",
                "n_tokens": 1024,
                "n_shards": 1,
                "tokens_per_second": 1000.0,
                "resumed_shards": 0,
                "sample_contexts": ["The quick brown fox"],
            },
            "statistics": {
                "sites": [
                    {**stat, "site": s, "cos_with_previous": None if i == 0 else 0.9}
                    for i, s in enumerate(sites)
                ]
            },
            "logit_lens": {"layers": [], "tables": []},
        },
        "timings_s": {"activations": 1.0},
        "versions": {"aimri": "0.1.0"},
    }


def _example(rng: random.Random, kind: str, bucket: int, peak: float, window: int) -> dict:
    tokens = [rng.choice(WORDS) for _ in range(window)]
    acts = [0.0] * window
    if kind in ("top", "quantile"):
        at = window - 4
        for i in range(max(0, at - 3), at + 1):
            acts[i] = round(peak * rng.uniform(0.2, 1.0), 3)
        acts[at] = round(peak, 3)
    return {
        "tokens": tokens,
        "acts": acts,
        "context": rng.randrange(10_000),
        "start": rng.randrange(1, 64),
        "kind": kind,
        "bucket": bucket,
    }


def synthetic_feature(rng: random.Random, index: int, n_total: int, window: int = 16) -> dict:
    """One feature record in the features stage's shape, with a label from CONCEPTS."""
    max_act = round(rng.uniform(1, 20), 3)
    edges = [10 ** (-4 + 8 * i / 64) for i in range(65)]
    centre = rng.randint(30, 50)
    counts = [max(0, int(500 * math.exp(-(((i - centre) / 5) ** 2)))) for i in range(64)]
    examples = [_example(rng, "top", 0, max_act * (1 - 0.03 * k), window) for k in range(10)]
    examples += [
        _example(rng, "quantile", b, max_act / (b + 1), window) for b in (1, 2, 3) for _ in "ab"
    ]
    examples += [_example(rng, "random_negative", 0, 0, window) for _ in range(4)]
    examples += [_example(rng, "hard_negative", 0, 0, window) for _ in range(2)]
    concept = CONCEPTS[index % len(CONCEPTS)]
    labels = [
        {"feature": index, "text": f"{concept} ({index})", "explainer": "tokens", "meta": {}},
        {"feature": index, "text": f"raises{rng.choice(WORDS)}", "explainer": "logits", "meta": {}},
    ]
    scores = [
        {
            "feature": index,
            "explainer": e,
            "scorer": "embedding",
            "value": round(rng.uniform(0.4, 0.95), 4),
            "baseline": round(rng.uniform(0.45, 0.55), 4),
            "metrics": {"auroc": 0.8, "n_pos": 15, "n_neg": 12},
        }
        for e in ("tokens", "logits")
    ]
    return {
        "index": index,
        "density": 10 ** rng.uniform(-5, -1),
        "max_act": max_act,
        "mean_act": round(max_act / 4, 3),
        "quantiles": {"p50": max_act / 5, "p90": max_act / 2, "p99": max_act * 0.9},
        "hist_edges": edges,
        "hist_counts": counts,
        "examples": examples,
        "promoted": [{"token": rng.choice(WORDS), "value": 0.5 - k * 0.04} for k in range(10)],
        "suppressed": [{"token": rng.choice(WORDS), "value": -0.5 + k * 0.04} for k in range(10)],
        "neighbours": [
            {"feature": (index + d) % n_total, "value": round(0.6 - 0.05 * d, 3)}
            for d in range(1, 9)
        ],
        "cooccurring": [{"feature": n_total + 5, "value": 0.2}],  # one not analysed
        "labels": labels,
        "scores": scores,
    }


def features_stage(n: int, *, hostile: bool = True, seed: int = 0) -> dict[str, Any]:
    """A features stage with n features; the first few carry hostile tokens and labels and the
    best scores, so they are on the first page."""
    rng = random.Random(seed)
    feats = [synthetic_feature(rng, i, n) for i in range(n)]
    if hostile:
        for i, bad in enumerate(HOSTILE):
            f = feats[i]
            f["examples"][0]["tokens"][3] = bad
            f["promoted"][0]["token"] = bad
            f["labels"][0]["text"] = f"{bad} ({i})"
            f["scores"][0]["value"] = 0.99
    edges = [-7 + 0.2 * i for i in range(31)]

    def basis(kind: str, n_features: int, name: str, centre: int) -> dict[str, Any]:
        counts = [int(n_features * 0.2 * math.exp(-(((i - centre) / 3) ** 2))) for i in range(30)]
        return {
            "info": {
                "kind": kind,
                "site": "blocks.15.hook_resid_post",
                "n_features": n_features,
                "name": name,
            },
            "n_tokens": 65536,
            "dead_fraction": 0.02,
            "density_hist_edges": edges,
            "density_hist_counts": counts,
        }

    bases = [
        basis("sae", 4608, "sae blocks.15.hook_resid_post (4608)", 12),
        basis("neurons", 576, "neurons blocks.15.hook_resid_post", 27),
        basis("random", 576, "random blocks.15.hook_resid_post", 28),
    ]
    if hostile:
        bases[2]["info"]["name"] = HOSTILE[1]
    summary = [
        {
            "basis": b["info"]["name"],
            "explainer": explainer,
            "scorer": "embedding",
            "n": 64,
            "mean": m,
            "mean_baseline": 0.5,
            "frac_above": f,
            "frac_above_baseline": 0.05,
            "threshold": 0.7,
            "ci_low": max(0.0, f - 0.08),
            "ci_high": min(1.0, f + 0.08),
        }
        for explainer in ("tokens", "logits")
        for b, m, f in zip(bases, (0.78, 0.6, 0.55), (0.62, 0.18, 0.09), strict=True)
    ]
    return {
        "site": "blocks.15.hook_resid_post",
        "catalog": "features/catalog.sqlite",
        "n_tokens": 65536,
        "bases": bases,
        "summary": summary,
        "features": feats,
    }


def steering_stage(*, hostile: bool = True) -> dict[str, Any]:
    prompts = ["I went to the store and", HOSTILE[0] if hostile else "Today"]

    def measures(k: int) -> dict[str, float]:
        return {
            "logprob_rise": 1.5 * k,
            "similarity_rise": 0.05 * k,
            "mentions": min(1.0, 0.25 * k),
            "distinct": 0.8 - 0.1 * k,
        }

    def gens(text: str) -> list[dict[str, str]]:
        return [{"prompt": p, "text": text} for p in prompts]

    rows = [
        {
            "strength": s,
            "norm": 170.0 * s,
            "feature": measures(k + 1),
            "perplexity": 4.0 * (1 + k),
            "fluent": k < 2,
            "neurons_best": measures(0),
            "random_p95": {**measures(1), "logprob_rise": 1.0},
            "beyond_random": True,
            "demonstrates": k == 1,
            "generations": gens(f" the dog barked {HOSTILE[2] if hostile else ''}"),
            "random_example": gens(" a random walk"),
        }
        for k, s in enumerate((0.25, 0.5, 1.0))
    ]
    return {
        "site": "blocks.15.hook_resid_post",
        "n_tokens": 32000,
        "n_sinks": 300,
        "unit": 170.0,
        "n_features": 4608,
        "n_candidates": 1700,
        "n_probed": 48,
        "feature": 7,
        "concept": HOSTILE[3] if hostile else "dogs",
        "words": ["dog", HOSTILE[1] if hostile else "dogs"],
        "mode": "add",
        "baseline": {**measures(0), "perplexity": 4.0, "generations": gens(" went home")},
        "rows": rows,
        "demonstrated_at": 0.5,
        "verdict": "Demonstrated: at 0.5 × the unit, feature #7's generations turn to dogs.",
        "candidates": [{"feature": 7, "words": ["dog", "dogs"], "rise": 3.0}],
        "n_random": 19,
        "n_neurons": 4,
        "fluency_rule": {"distinct": 0.75, "perplexity": 3.0},
    }


def full_scan(n_features: int, *, hostile: bool = True) -> dict[str, Any]:
    doc = base_scan()
    doc["stages"]["features"] = features_stage(n_features, hostile=hostile)
    doc["stages"]["steering"] = steering_stage(hostile=hostile)
    return doc


def features_block(html: str) -> str:
    blocks = FEATURES_DATA.findall(html)
    assert len(blocks) == 1, "the dashboards' data is embedded exactly once"
    return blocks[0]


# ---- charts ----


def test_chart_text_is_escaped():
    svg = str(
        line_chart(
            [0, 1],
            {"<script>alert(1)</script>": [1.0, 2.0], "b": [2.0, 1.0]},
            title="a<b",
            xlabel="x&y",
            ylabel="y",
        )
    )
    assert (
        "<script>" not in svg and "&lt;script&gt;" in svg and "a&lt;b" in svg and "x&amp;y" in svg
    )


def test_bar_chart_escapes_and_draws_negative_bars_below_zero():
    svg = str(
        bar_chart(["<b>", "c"], {"up": [2.0, -1.0], "x&y": [None, 1.0]}, title="t", ylabel="v")
    )
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "x&amp;y" in svg
    bars = re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)
    assert len(bars) == 3 + 2  # three finite values (None skipped) + two legend swatches
    zero = float(re.findall(r'y1="([\d.]+)" y2="[\d.]+" stroke="#9ca3af"', svg)[0])
    (y_up, _), (y_down, _) = bars[0], bars[1]
    assert float(y_up) < zero <= float(y_down) + 1e-6  # +2 above the zero line, -1 below it


def test_empty_chart_says_so():
    assert "no data" in str(line_chart([], {}, title="t", xlabel="x", ylabel="y"))


def test_ticks_are_round_and_inside():
    assert ticks(0.05, 0.95) == [0.2, 0.4, 0.6, 0.8]
    assert ticks(0, 29) == [0, 5, 10, 15, 20, 25]
    for lo, hi in [(0, 1), (-6.5, -0.5), (10, 63), (1, 29), (0.001, 0.002)]:
        got = ticks(lo, hi)
        assert len(got) >= 2 and all(lo - 1e-9 <= t <= hi + 1e-9 for t in got)


# ---- features and steering ----


def test_hostile_strings_are_escaped_and_the_data_block_round_trips(tmp_path: Path):
    doc = full_scan(40)
    html = render_report(doc, tmp_path / "r.html", SECTIONS).read_text()
    block = features_block(html)
    assert "<" not in block and ">" not in block, "nothing in the block can close or open a tag"
    assert json.loads(block) == with_verdicts(doc["stages"]["features"]["features"])
    outside = FEATURES_DATA.sub("", html)
    for bad in HOSTILE:
        assert bad not in outside, bad
    assert "<img" not in outside and "&lt;img src=x onerror" in outside
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in outside  # the steering prompt, as text
    for section in ('id="features"', 'id="steering"', 'id="dashboards"', "superposition"):
        assert section in html, section


def test_interpretable_fraction_table_puts_the_dictionary_first(tmp_path: Path):
    doc = full_scan(5, hostile=False)
    stage = doc["stages"]["features"]
    stage["summary"] = stage["summary"][::-1]  # baselines first in the JSON
    for r in stage["summary"]:  # the scan names a basis by its key: `sae`, `neurons`, `random`
        r["basis"] = r["basis"].split(" ")[0]
    stage["summary"][0].update(mean=float("nan"), n_nan=3)
    html = render_report(doc, tmp_path / "r.html", SECTIONS).read_text()
    table = html[html.index('<table class="summary">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<td class="kind-(\w+)">', table)
    assert rows == ["sae", "neurons", "random"] * 2, rows
    assert "62.0%" in table and "54.0% – 70.0%" in table and "5.0%" in table
    assert "(3 nan)" in table and "nan<" not in table, "nan shows as a dash"


def test_absent_and_empty_stages_render(tmp_path: Path):
    html = render_report(base_scan(), tmp_path / "a.html", SECTIONS).read_text()
    assert 'id="features"' not in html and 'id="steering"' not in html
    assert "features-data" not in html and "fd-cards" not in html

    doc = base_scan()
    doc["stages"]["features"] = {"site": "blocks.1.hook_resid_post", "features": []}
    doc["stages"]["steering"] = {**steering_stage(hostile=False), "rows": []}
    html = render_report(doc, tmp_path / "b.html", SECTIONS).read_text()
    assert "No features were analysed" in html and "No labels were scored" in html
    assert 'id="steering"' not in html and "features-data" not in html  # no rows: no section

    doc["stages"]["steering"] = {"skipped": "no concrete-concept <feature>"}
    html = render_report(doc, tmp_path / "s.html", SECTIONS).read_text()
    assert "demonstration was skipped: no concrete-concept &lt;feature&gt;" in html

    steer = steering_stage(hostile=False)
    doc["stages"]["steering"] = {**steer, "rows": steer["rows"][::-1]}
    html = render_report(doc, tmp_path / "c.html", SECTIONS).read_text()
    assert "Rise of the concept tokens" in html and str(html_escape(steer["verdict"])) in html
    table = html[html.index('id="steering"') :]
    strengths = re.findall(r'<tr><td class="n">([0-9.]+)</td>', table[: table.index("</table>")])
    assert strengths == ["0.25", "0.5", "1"], "rows in order of strength"
    # the unedited model is named as such beside every prompt's generations
    n_prompts = len({g["prompt"] for g in steer["rows"][0]["generations"]})
    assert html.count(">no edit</td>") == n_prompts


def test_json_block_is_safe_and_exact():
    data = {
        "s": HOSTILE,
        "u": "\u2028 é </SCRIPT> <!-- -->",
        "nan": float("nan"),
        "x": [1.5, -0.0],
    }
    text = str(json_for_script(data))
    assert not set(text) & set("<>&")
    back = json.loads(text)
    assert back["s"] == list(HOSTILE) and back["u"] == data["u"] and back["x"] == [1.5, -0.0]
    assert back["nan"] is None, "NaN is not JSON: JSON.parse would reject the whole block"


@pytest.mark.parametrize("edges_differ", [False, True])
def test_density_chart_has_one_line_per_basis(tmp_path: Path, edges_differ: bool):
    doc = full_scan(3, hostile=False)
    bases = doc["stages"]["features"]["bases"]
    if edges_differ:
        bases[1]["density_hist_edges"] = [-6 + 0.2 * i for i in range(31)]
    html = render_report(doc, tmp_path / "r.html", SECTIONS).read_text()
    start = html.index("Firing density: share")
    chart = html[html.rindex("<svg", 0, start) : html.index("</svg>", start)]
    assert chart.count("<polyline") == 3
