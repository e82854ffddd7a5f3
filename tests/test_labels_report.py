"""The feature dashboards say when a label scores nothing (not in bold), and show whitespace
and special tokens as the labels do (⏎, ⇥, ⟨endoftext⟩)."""

from __future__ import annotations

import json
import math
import re
import shutil
from typing import Any

import pytest

from aimri.report.features import scores_nothing, with_verdicts
from aimri.report.render import render_report
from aimri.scanner.stages import SECTIONS
from tests.test_report import FEATURES_DATA, base_scan, features_stage


def sim(value: float, baseline: float, scorer: str = "simulation", explainer: str = "tokens"):
    return {"explainer": explainer, "scorer": scorer, "value": value, "baseline": baseline}


@pytest.mark.parametrize(
    ("scores", "nothing"),
    [
        ([sim(0.0, 0.0)], True),  # `promotes …` at r 0.00
        ([sim(0.02, -0.01)], True),  # within the margin of chance
        ([sim(math.nan, 0.1)], True),  # could not be scored
        ([sim(0.4, 0.5)], True),  # no better than another feature's label
        ([sim(0.0, 0.0), sim(0.52, 0.5, "embedding")], True),  # AUROC chance is 0.5
        ([sim(0.8, 0.02)], False),
        ([sim(0.0, 0.0), sim(0.8, 0.5, "embedding")], False),  # one scorer sees something
        ([sim(0.3, math.nan)], False),  # no baseline (a lone label): chance alone decides
        ([], False),  # never scored: nothing is known
    ],
)
def test_a_label_scores_nothing_only_when_no_score_beats_chance_and_the_baseline(scores, nothing):
    assert scores_nothing(scores) is nothing


def test_each_label_is_judged_by_its_own_explainers_scores():
    feature = {
        "index": 3,
        "labels": [
            {"feature": 3, "text": 'fires on "codecs"', "explainer": "tokens", "meta": {}},
            {"feature": 3, "text": 'promotes "audio"', "explainer": "logits", "meta": {}},
        ],
        "scores": [sim(0.85, 0.01), sim(0.0, 0.0, explainer="logits")],
    }
    (out,) = with_verdicts([feature])
    assert [lab["scores_nothing"] for lab in out["labels"]] == [False, True]
    assert "scores_nothing" not in feature["labels"][0]  # the scan's data is not changed


def scan_with_a_scoreless_label() -> dict[str, Any]:
    doc = base_scan()
    stage = features_stage(30, hostile=False)
    for f in stage["features"]:
        for s in f["scores"]:
            if s["explainer"] == "logits":
                s["value"], s["baseline"] = 0.0, 0.0
            else:
                s["value"], s["baseline"] = 0.9, 0.0
    first = stage["features"][0]["examples"][0]
    first["tokens"][:3] = ["<|endoftext|>", "\n", "\t"]
    doc["stages"]["features"] = stage
    return doc


def test_the_report_marks_scoreless_labels_in_its_data(tmp_path):
    html = render_report(scan_with_a_scoreless_label(), tmp_path / "r.html", SECTIONS).read_text()
    (block,) = FEATURES_DATA.findall(html)
    feats = json.loads(block)
    verdicts = {(lab["explainer"], lab["scores_nothing"]) for f in feats for lab in f["labels"]}
    assert verdicts == {("tokens", False), ("logits", True)}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_the_dashboard_shows_a_scoreless_label_plainly_and_special_tokens_by_name(tmp_path):
    from tests.test_report_browser import dump_dom

    path = render_report(scan_with_a_scoreless_label(), tmp_path / "r.html", SECTIONS)
    dom, _ = dump_dom(path.as_uri() + "#q=%230", tmp_path / "profile")
    card = dom[dom.index('<article class="fcard" id="f-0">') :]
    card = card[: card.index("</article>")]
    header = card[: card.index("</header>")]
    assert header.count('class="label nil"') == 1 and "scores nothing" in header
    assert header.count('class="label"') == 1  # the tokens label stays bold
    visible = re.sub(r'title="[^"]*"', "", card)  # a token's tooltip keeps its raw form
    assert "⟨endoftext⟩" in visible and "⏎" in visible and "&lt;|endoftext|&gt;" not in visible
