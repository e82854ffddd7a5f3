"""The report's charts: text is escaped, axes get round ticks."""

from __future__ import annotations

from aimri.report.svg import _ticks, line_chart


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


def test_empty_chart_says_so():
    assert "no data" in str(line_chart([], {}, title="t", xlabel="x", ylabel="y"))


def test_ticks_are_round_and_inside():
    assert _ticks(0.05, 0.95) == [0.2, 0.4, 0.6, 0.8]
    assert _ticks(0, 29) == [0, 5, 10, 15, 20, 25]
    for lo, hi in [(0, 1), (-6.5, -0.5), (10, 63), (1, 29), (0.001, 0.002)]:
        ticks = _ticks(lo, hi)
        assert len(ticks) >= 2 and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
