"""How a stage shows in the report: a `View` names the stage's own template partial and the
function that prepares what the partial reads; `sections` turns a document's results and the
stages' views into the report's sections, in the order the page shows them.

A stage declares its view in its own module (`Stage.view`, aimri.scanner); report.html.j2 loops
over the sections and includes each partial, so a new stage needs no edit of the page or of the
renderer. Not here: any section's content (its partial and its context function), the parts of
the page that are not stages (header, summary, findings, ledger, transparency: report.html.j2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

Part = Literal["first", "main", "last"]
"""Where a section goes: "first" right after the findings (the safety check-up a reader wants
before anything else), "main" (the model's dictionary, features and circuits, a comparison),
"last" (the raw internals, before the ledger). Within a part, sections keep the registry's
order."""
PARTS: tuple[Part, ...] = ("first", "main", "last")

C = TypeVar("C")
PACKAGE = "aimri.report"
"""The package of the page and of the built-in partials."""


def no_scripts(_: object) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class View(Generic[C]):
    """A stage's section of the report."""

    template: str
    """Its partial's file name, in the `templates` folder of `package`. The partial reads the
    stage's result (as scan.json holds it) as `stage` and what `context` made of it as `view`."""
    context: Callable[[dict[str, Any]], C | None]
    """What the partial reads besides the result (charts, rows put in order), from the result;
    None: nothing to show (the stage was turned off, say)."""
    nav: str | None = None
    """Its link in the navigation bar; None: no link."""
    anchor: str | None = None
    """The id the partial gives its heading, for the link; None: the stage's name."""
    part: Part = "main"
    styles: tuple[str, ...] = ()
    """Style sheets from report/static the section needs, inlined in the page's head once."""
    scripts: Callable[[C], tuple[str, ...]] = no_scripts
    """Scripts from report/static the section needs, given its context (the dashboards' script
    only where there are dashboards): inlined at the end of the page, once each, in order."""
    package: str = PACKAGE
    """The package whose `templates` folder holds the partial (a stage from elsewhere ships its
    own)."""

    def section(self, name: str, result: dict[str, Any]) -> Section | None:
        """Stage `name`'s section for `result`, None where its context has nothing to show."""
        context = self.context(result)
        if context is None:
            return None
        return Section(
            name=name,
            template=template_name(self.template, self.package),
            package=self.package,
            anchor=self.anchor or name,
            nav=self.nav,
            part=self.part,
            stage=result,
            view=context,
            styles=self.styles,
            scripts=self.scripts(context),
        )


class Sectioned(Protocol):
    """A `View` of any context type, as the page sees it: what makes a section."""

    def section(self, name: str, result: dict[str, Any]) -> Section | None: ...


class Reported(Protocol):
    """Anything with a name and a view: a scan stage (`aimri.scanner.stage.Stage`)."""

    @property
    def name(self) -> str: ...

    @property
    def view(self) -> Sectioned | None: ...


@dataclass(frozen=True)
class Section:
    """One stage's section as the page includes it."""

    name: str
    template: str
    """The partial's name for the page's loader (`template_name`)."""
    package: str
    anchor: str
    nav: str | None
    part: Part
    stage: dict[str, Any]
    view: object
    """What the view's `context` made of the result (the partial reads it as `view`)."""
    styles: tuple[str, ...]
    scripts: tuple[str, ...]


def sections(stages: Sequence[Reported], results: Mapping[str, Any]) -> list[Section]:
    """The sections of the stages with a view and something to show, in report order."""
    shown: list[Section] = []
    for st in stages:
        view, result = st.view, results.get(st.name)
        if view is None or not result:
            continue
        section = view.section(st.name, result)
        if section is not None:
            shown.append(section)
    return sorted(shown, key=lambda s: PARTS.index(s.part))


def template_name(template: str, package: str) -> str:
    """The partial's name for the page's loader: a partial of another package is prefixed with
    that package's name, so it can never be mistaken for one of aimri's."""
    return template if package == PACKAGE else f"{package}/{template}"


def assets(names: Sequence[tuple[str, ...]]) -> list[str]:
    """The asset names of every section, each once, in first-seen order."""
    return list(dict.fromkeys(n for group in names for n in group))
