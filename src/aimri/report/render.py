"""Render the scan's report: one self-contained HTML file (styles and scripts inline).

Autoescaping is on for every template, so token strings such as `<script>` show as text, and
bidirectional control characters (a right-to-left override from the corpus) are shown as their
code point rather than reordering what is around them.
The page (templates/report.html.j2) holds what every document has (header, summary, findings,
ledger, transparency); each stage's section is its own partial, named by the stage's `View`
(report/view.py), so the page and this module name no stage.
The features section's dashboards are drawn by static/features.js from one JSON block, with
`textContent` only (see report/features.py for how that block is made safe).
Not here: computing anything; the report only shows what scan.json holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

from jinja2 import ChoiceLoader, Environment, PackageLoader, PrefixLoader, select_autoescape
from markupsafe import Markup

from aimri._io import write_bytes_atomic
from aimri.report.svg import line_chart
from aimri.report.view import PACKAGE, Reported, Section, assets, sections


def _env(shown: Sequence[Section]) -> Environment:
    """The page's environment: aimri's templates, and each other package's that a section's
    partial comes from (under that package's name: `view.template_name`)."""
    others = {s.package for s in shown if s.package != PACKAGE}
    env = Environment(
        loader=ChoiceLoader(
            [
                PackageLoader(PACKAGE, "templates"),
                PrefixLoader({p: PackageLoader(p, "templates") for p in sorted(others)}),
            ]
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # jinja2 leaves the value types of its globals and filters open
    env.globals.update(line_chart=line_chart, asset=_asset)  # pyright: ignore[reportUnknownMemberType]
    env.filters.update(num=_num, pct=_pct)  # pyright: ignore[reportUnknownMemberType]
    return env


def _num(v: Any, d: int = 3) -> str:
    return "–" if not _finite(v) else f"{v:,.{d}g}" if abs(v) < 1e5 else f"{v:,.0f}"


def _pct(v: Any) -> str:
    return "–" if not _finite(v) else f"{100 * v:.1f}%"


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
        return {visible(k): visible(v) for k, v in cast(dict[Any, Any], obj).items()}
    if isinstance(obj, list | tuple):
        return [visible(v) for v in cast(list[Any] | tuple[Any, ...], obj)]
    return obj


def render_report(scan: Mapping[str, Any], path: Path, stages: Sequence[Reported]) -> Path:
    """Write the report of a document (scan.json's layout) to `path`: its header, summary and
    findings, then the section each of `stages` declares (`View`) for its result, then the ledger
    and the transparency record."""
    scan = visible(scan)
    shown = sections(stages, scan["stages"])
    html = (
        _env(shown)
        .get_template("report.html.j2")
        .render(
            scan=scan,
            sections=shown,
            styles=assets([s.styles for s in shown]),
            scripts=assets([s.scripts for s in shown]),
        )
    )
    write_bytes_atomic(path, html.encode("utf-8"))
    return path


@cache
def _asset(name: str) -> Markup:
    """A script or style sheet from report/static, to inline (our own code, never data)."""
    text = files("aimri.report").joinpath("static", name).read_text(encoding="utf-8")
    assert "</script" not in text.lower() and "</style" not in text.lower(), name
    return Markup(text)
