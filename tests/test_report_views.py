"""The report's one seam for stages: a stage's section comes from its own `View` (a partial and
the context it reads), so a stage that aimri has never heard of shows in the report with no
edit of the page or the renderer, escaped like every other section; and the page names no
stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from aimri.report.render import render_report
from aimri.report.view import Part, View
from aimri.scanner.stages import SECTIONS
from tests.test_report import base_scan, full_scan

HOSTILE = "<script>alert('x')</script>"
PARTIAL = """<h2 id="{{ section.anchor }}">Throwaway: {{ stage.title }}</h2>
<p class="throwaway">{{ view.sentence }}</p>
<ul>{% for w in view.words %}<li>{{ w }}</li>{% endfor %}</ul>
"""


@dataclass(frozen=True)
class Throwaway:
    """A stage as far as the report cares (`aimri.report.view.Reported`)."""

    name: str
    view: View[Any] | None


def throwaway_view(stage: dict[str, Any]) -> dict[str, Any] | None:
    if stage.get("skipped"):
        return None
    return {"sentence": f"{stage['n']} words, first {stage['words'][0]}", "words": stage["words"]}


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package outside aimri that ships the throwaway stage's partial."""
    package = tmp_path / "aimri_throwaway_plugin"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "templates" / "throwaway.html.j2").write_text(PARTIAL)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package.name


def throwaway(package: str, part: Part = "main") -> Throwaway:
    view = View(
        "throwaway.html.j2",
        throwaway_view,
        nav="Throwaway",
        part=part,
        styles=("features.css",),
        package=package,
    )
    return Throwaway("throwaway", view)


def render(doc: dict[str, Any], stages: Any, path: Path) -> str:
    return render_report(doc, path, stages).read_text()


def test_a_new_stage_shows_its_section_with_no_edit_and_escaped(plugin: str, tmp_path: Path):
    doc = base_scan()
    doc["stages"]["throwaway"] = {"title": HOSTILE, "n": 2, "words": [HOSTILE, "a & b"]}
    html = render(doc, (*SECTIONS, throwaway(plugin)), tmp_path / "r.html")
    assert '<h2 id="throwaway">Throwaway: &lt;script&gt;' in html, "its partial, its anchor"
    assert '<a href="#throwaway">Throwaway</a>' in html, "its link in the navigation bar"
    assert "<li>a &amp; b</li>" in html and "2 words, first &lt;script&gt;" in html
    assert HOSTILE not in html, "the result and the view's context are escaped"
    assert html.index('id="throwaway"') < html.index('id="internals"'), "main before last"
    sheet = "/* The features and steering sections"
    assert html.count(sheet) == 1, "the style sheet it asks for"
    doc["stages"] |= full_scan(8, hostile=False)["stages"]
    html = render(doc, (*SECTIONS, throwaway(plugin)), tmp_path / "s.html")
    assert html.count(sheet) == 1, "a style sheet three sections ask for, inlined once"


def test_a_stage_that_did_not_run_or_has_nothing_to_show_has_no_section(
    plugin: str, tmp_path: Path
):
    stages = (*SECTIONS, throwaway(plugin))
    html = render(base_scan(), stages, tmp_path / "a.html")
    assert 'id="throwaway"' not in html and "#throwaway" not in html
    doc = base_scan()
    doc["stages"]["throwaway"] = {"skipped": "turned off"}
    html = render(doc, stages, tmp_path / "b.html")
    assert 'id="throwaway"' not in html and "#throwaway" not in html


def test_a_first_section_comes_right_after_the_findings(plugin: str, tmp_path: Path):
    doc = full_scan(8, hostile=False)
    doc["stages"]["throwaway"] = {"title": "t", "n": 1, "words": ["w"]}
    html = render(doc, (*SECTIONS, throwaway(plugin, part="first")), tmp_path / "r.html")
    order = [html.index(f'id="{a}"') for a in ("findings", "throwaway", "features", "steering")]
    assert order == sorted(order)
    nav = html[html.index("<nav>") : html.index("</nav>")]
    assert nav.index("#throwaway") < nav.index("#features")


def test_every_built_in_view_has_its_partial_and_its_link_finds_it(tmp_path: Path):
    templates = files("aimri.report").joinpath("templates")
    doc = full_scan(8, hostile=False)
    full_scan_stages = ("features", "steering", "statistics", "logit_lens")
    assert set(full_scan_stages) <= set(doc["stages"])
    html = render(doc, SECTIONS, tmp_path / "r.html")
    for st in SECTIONS:
        if st.view is None:
            continue
        assert templates.joinpath(st.view.template).is_file(), st.name
        if st.name in full_scan_stages and st.view.nav:
            assert f'id="{st.view.anchor or st.name}"' in html, st.name


def test_the_page_and_the_renderer_name_no_stage():
    page = files("aimri.report").joinpath("templates", "report.html.j2").read_text()
    renderer = files("aimri.report").joinpath("render.py").read_text()
    for st in SECTIONS:
        if st.view is None:
            continue
        for text in (page, renderer):
            assert st.view.template not in text, st.name
            for mention in (f"stages.{st.name}", f'stages["{st.name}"]', f'get("{st.name}")'):
                assert mention not in text, (st.name, mention)
