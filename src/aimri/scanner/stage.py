"""The seam every stage plugs into: what it runs, what it needs, and how its result enters a
document.

A `Stage[R]` declares, in its own module: the function that computes its result `R` (a
TypedDict, exactly as scan.json holds it) from the scan so far (`ScanRun`), the stages whose
results it reads (`needs`), its findings, its lines of the summary ("what was checked", "how
sure"), its row of the transparency table (what was tested, the method, the data, the
settings) and its section of the report (`aimri.report.view.View`: its own template partial
and what that reads). Every function a stage declares takes its own `R`, so pyright checks each
read of a result; a stage reads another's result through that stage (`DICTIONARY.required(run)`,
`FEATURES.result(run)`), never by a string key.

The registry (`stages.py`) lists the stages; `ordered` puts each after the stages it needs and
refuses a registry that lacks one. What a document needs of a stage whatever its result type
(its findings, summary lines, transparency row) is `Registered`, the erased face of `Stage[R]`
that the document's builders (`summary.py`) use. Not here: any stage's logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypedDict, TypeVar, cast

from aimri.errors import AimriError
from aimri.report.view import Sectioned
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun

Results = Mapping[str, object]
"""The stages' results so far, by stage name, as scan.json's `stages` holds them."""
Config = Mapping[str, Any]
"""A document's `config`: the command's configuration as JSON (`_io.to_jsonable`)."""
R = TypeVar("R", bound=Mapping[str, object])
"""A stage's result where it ran: a TypedDict (scan.json's schema is generated from it,
`schema.py`)."""


@dataclass(frozen=True, eq=False)
class JsonOf:
    """`Annotated[dict[str, Any], JsonOf(SomeDataclass, ...)]`: a result that is a dataclass as
    JSON (each nested dataclass as its fields), between the fields `before` and `after`, so the
    result's schema comes from the dataclass itself rather than from a copy of its fields."""

    source: type
    before: Mapping[str, object] = field(default_factory=dict[str, object])
    """Field name → type, written before the dataclass's own fields."""
    after: Mapping[str, object] = field(default_factory=dict[str, object])


class Skipped(TypedDict):
    """A stage that did not run, and why."""

    skipped: str


@dataclass(frozen=True)
class Method:
    check: str
    """What was tested, in a few words."""
    method: str
    settings: str


class TestRow(TypedDict):
    check: str
    method: str
    data: str
    settings: str


def ran(result: object) -> bool:
    """Whether a stage produced a result (it may be turned off or have nothing to work on)."""
    if not isinstance(result, Mapping):
        return False
    r = cast(Mapping[str, object], result)
    return bool(r) and not r.get("skipped")


class Registered(Protocol):
    """A stage as a registry and a document see it, whatever its result type: what
    `Stage[R]` does with its own result, given every stage's results."""

    @property
    def name(self) -> str: ...

    @property
    def run(self) -> Callable[[ScanRun], Mapping[str, object]] | None: ...

    @property
    def needs(self) -> tuple[Registered, ...]: ...

    @property
    def view(self) -> Sectioned | None: ...

    def execute(self, run: ScanRun) -> Mapping[str, object]: ...

    def findings_in(self, results: Results) -> list[Finding]: ...

    def checked_in(self, results: Results) -> str | None: ...

    def sure_in(self, results: Results) -> str | None: ...

    def row_in(self, results: Results, config: Config, corpus: str) -> TestRow | None: ...


@dataclass(frozen=True)
class Stage(Generic[R]):
    name: str
    """Its key in scan.json's `stages` and in the summary."""
    run: Callable[[ScanRun], R | Skipped] | None = None
    """Computes the result; None for a section only a command fills (the audit)."""
    needs: tuple[Registered, ...] = ()
    """The stages whose results (or products: the read, the dictionary) it reads; the registry
    runs them first (`ordered`)."""
    findings: Callable[[R], list[Finding]] | None = None
    checked: Callable[[R], str] | None = None
    """The summary's "what was checked" line."""
    sure: Callable[[R], str] | None = None
    """The summary's "how sure" statement."""
    method: Callable[[R, Config], Method] | None = None
    """Its transparency row, from the result and the document's configuration."""
    data: Callable[[R, str], str] | None = None
    """The data it read, for the transparency row, given the scan's corpus in words; None: that
    corpus."""
    view: Sectioned | None = None
    """Its section of the report; None: none (its numbers show elsewhere, e.g. the
    activations' in the transparency record)."""

    def result(self, results: Results | ScanRun) -> R | None:
        """Its result, None where it did not run (or was skipped)."""
        found = (results.results if isinstance(results, ScanRun) else results).get(self.name)
        # The one place a result is typed again: `execute` stored what `run` returned.
        return cast(R, found) if ran(found) else None

    def required(self, run: ScanRun) -> R:
        """Its result, for a stage that `needs` it; a clear error where it has not run."""
        found = self.result(run)
        if found is None:
            why = run.results.get(self.name)
            raise AimriError(
                f"the '{self.name}' stage's result is needed but "
                + (
                    f"it was skipped ({why['skipped']})"
                    if isinstance(why, dict)
                    else "it has not run"
                )
                + f": list '{self.name}' in the registry before the stages that need it, "
                "and turn it on"
            )
        return found

    def execute(self, run: ScanRun) -> R | Skipped:
        """Run it and keep its result in `run.results` for the stages after it."""
        assert self.run is not None, f"stage {self.name} has nothing to run"
        missing = [st.name for st in self.needs if st.name not in run.results]
        if missing:
            raise AimriError(
                f"stage '{self.name}' needs the results of {missing}, which have not run: "
                "run the scan's stages in the registry's order (`stages.ordered`)"
            )
        out = self.run(run)
        run.results[self.name] = out
        return out

    def findings_in(self, results: Results) -> list[Finding]:
        r = self.result(results)
        return self.findings(r) if self.findings is not None and r is not None else []

    def checked_in(self, results: Results) -> str | None:
        r = self.result(results)
        return self.checked(r) if self.checked is not None and r is not None else None

    def sure_in(self, results: Results) -> str | None:
        r = self.result(results)
        return self.sure(r) if self.sure is not None and r is not None else None

    def row_in(self, results: Results, config: Config, corpus: str) -> TestRow | None:
        """Its transparency row, given the scan's corpus in words; None where it did not run."""
        r = self.result(results)
        if self.method is None or r is None:
            return None
        m = self.method(r, config)
        data = self.data(r, corpus) if self.data is not None else corpus
        return {"check": m.check, "method": m.method, "data": data, "settings": m.settings}


def ordered(*stages: Registered) -> tuple[Registered, ...]:
    """`stages` in an order that runs each after the stages it needs, otherwise as listed; an
    error names a needed stage that is not listed, a name listed twice, and a cycle."""
    names = {st.name for st in stages}
    if len(names) < len(stages):
        twice = sorted({st.name for st in stages if [t.name for t in stages].count(st.name) > 1})
        raise AimriError(
            f"the registry lists more than one stage named {twice}: a stage's name is its key "
            "in scan.json, so rename one (or uninstall the plugin that repeats it)"
        )
    for st in stages:
        missing = [n.name for n in st.needs if n.name not in names]
        if missing:
            raise AimriError(
                f"stage '{st.name}' needs {missing}, which the registry does not list: "
                f"add {' and '.join(missing)} to the registry, or drop '{st.name}'"
            )
    done: list[Registered] = []
    left = list(stages)
    while left:
        have = {st.name for st in done}
        ready = next((st for st in left if all(n.name in have for n in st.needs)), None)
        if ready is None:
            raise AimriError(
                f"stages {[st.name for st in left]} need each other in a cycle: "
                "a stage can only need stages that do not need it"
            )
        done.append(ready)
        left.remove(ready)
    return tuple(done)
