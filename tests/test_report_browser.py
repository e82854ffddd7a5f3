"""The report in a real browser (Debian's headless chromium): the feature dashboards of 2,000
features open offline from a file, show the first page, apply a search given in the URL, and
no token or label string becomes markup."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from aimri.report.render import render_report
from aimri.scanner.stages import SECTIONS
from tests.test_report import HOSTILE, full_scan

N_FEATURES = 2000
PAGE = 25
CARD = re.compile(r'<article class="fcard" id="f-(\d+)">')
TITLE = "<title>aimri scan · tiny · test-run</title>"

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian chromium not installed (apt-get install chromium): browser checks skipped",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    doc = full_scan(N_FEATURES)
    path = render_report(doc, tmp_path_factory.mktemp("report") / "report.html", SECTIONS)
    return path, doc


def dump_dom(url: str, profile: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and chromium's log (console messages included)."""
    try:
        r = subprocess.run(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=3000",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish: a dialog opened by injected markup blocks it")
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    assert "Uncaught" not in r.stderr, [x for x in r.stderr.splitlines() if "CONSOLE" in x]
    return r.stdout, r.stderr


def expected_page(features: list[dict[str, Any]], q: str = "") -> tuple[list[int], int]:
    """What features.js should show: matches of `q`, best label score first, the first page."""

    def best(f: dict[str, Any]) -> float | None:
        return max((s["value"] for s in f["scores"]), default=None)

    def matches(f: dict[str, Any]) -> bool:
        qq = q.strip().lower()
        if qq.startswith("#") and qq[1:].isdigit():
            return f["index"] == int(qq[1:])
        if qq.isdigit() and f["index"] == int(qq):
            return True
        text = "\n".join(label["text"] for label in f["labels"]).lower()
        return all(w in text for w in qq.split())

    hits = [f for f in features if matches(f)]
    hits.sort(key=lambda f: (best(f) is None, -(best(f) or 0.0), f["index"]))
    return [f["index"] for f in hits[:PAGE]], len(hits)


def no_markup_from_data(dom: str) -> None:
    assert TITLE in dom, "document.title is unchanged"
    assert "<img" not in dom.lower(), "a token string became an element"
    assert "<script>alert" not in dom


def test_opens_offline_and_shows_the_first_page(report, tmp_path: Path):
    path, doc = report
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "fetch(" not in html and "@import" not in html
    dom, _ = dump_dom(path.as_uri(), tmp_path / "profile")
    ids, n = expected_page(doc["stages"]["features"]["features"])
    assert [int(i) for i in CARD.findall(dom)] == ids, "first page, best label score first"
    assert ids[: len(HOSTILE)] == list(range(len(HOSTILE))), "the hostile features are shown"
    assert f"{n:,} of {N_FEATURES:,} features" in dom and "page 1 of 80" in dom
    no_markup_from_data(dom)
    assert "&lt;img src=x onerror=" in dom, "the hostile strings are on the page, as text"


@pytest.mark.parametrize(
    ("suffix", "q"),
    [("#q=dogs", "dogs"), ("?q=french%20cities", "french cities"), ("#q=%23123", "#123")],
)
def test_search_from_the_url(report, tmp_path: Path, suffix: str, q: str):
    path, doc = report
    dom, _ = dump_dom(path.as_uri() + suffix, tmp_path / "profile")
    ids, n = expected_page(doc["stages"]["features"]["features"], q)
    assert 0 < n < N_FEATURES
    assert [int(i) for i in CARD.findall(dom)] == ids
    assert f"{n:,} of {N_FEATURES:,} features" in dom
    for card in dom.split('<article class="fcard"')[1:]:
        labels = card[: card.index("</header>")].lower()
        exact = q.startswith("#") and card.startswith(f' id="f-{q[1:]}"')
        assert exact or all(w in labels for w in q.split()), "only matching cards"
    no_markup_from_data(dom)
