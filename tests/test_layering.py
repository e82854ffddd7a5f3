"""The data flow is the import graph: a module imports only from stages before it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "aimri"
# Stage order (DESIGN.md): a module may import from its own stage and any earlier one.
STAGES = {
    "errors": 0,
    "_io": 0,
    "_version": 0,
    "config": 0,
    "distributed": 0,
    "ledger": 0,
    "outputs": 0,
    "model": 1,
    "corpus": 1,
    "store": 2,
    "dicts": 3,
    "report": 3,
    "features": 4,
    "steer": 5,
    "circuits": 6,
    "checkup": 7,
    "diff": 8,
    "audit": 9,
    "scanner": 10,
    "export": 10,
    "cli": 11,
    "__init__": 11,
}
"""Each package of the check-up on a level of its own, so a cycle between two of them (diff ↔
audit, as there was) fails here instead of hiding on a shared level."""


def stage_of(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else "__init__"
    return STAGES[part.removesuffix(".py")]


def test_every_module_has_a_stage_and_imports_only_backwards():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        me = ".".join(rel.parts)
        top = rel.parts[1] if len(rel.parts) > 1 else "__init__"
        assert top in STAGES, f"{me}: add its stage to this test (and to DESIGN.md's data flow)"
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("aimri.")
            ) and stage_of(node.module) > STAGES[top]:
                bad.append(f"{me} imports {node.module}")
    assert not bad, bad


def test_corpus_does_not_need_a_model():
    for path in (SRC / "corpus").glob("*.py"):
        assert "aimri.model" not in path.read_text(), path.name


def test_no_module_imports_the_package_itself():
    """`from aimri import X` inside the package would run the public API's imports (and invite
    cycles): modules import from the module that defines X."""
    bad = []
    for path in SRC.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "aimri":
                bad.append(str(path.relative_to(SRC)))
    assert not bad, bad


def _module_imports() -> dict[str, set[str]]:
    """Module → the aimri modules it imports (anywhere in the file, deferred imports too)."""
    modules = {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in SRC.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for me, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aimri"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                deps |= {n for n in names if n in modules} or {node.module}
        graph[me] = {d for d in deps if d in modules and d != me}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_files_or_packages():
    files = _module_imports()
    assert _cycle(files) is None, " → ".join(_cycle(files) or [])
    package = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    packages: dict[str, set[str]] = {}
    for me, deps in files.items():
        packages.setdefault(package(me), set()).update(
            package(d) for d in deps if package(d) != package(me) and d != "aimri"
        )
    assert _cycle(packages) is None, " → ".join(_cycle(packages) or [])


def test_the_cycle_check_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_docstrings_name_only_files_that_exist():
    """Every source or template file a docstring names (`x.py`, `aimri/y/z.py`, `a.html.j2`) is
    there: looked up beside the module, in the package root, the templates and the repository."""
    named = re.compile(r"`([A-Za-z0-9_./-]+\.(?:py|j2|css|js|md))`")
    roots = [
        SRC,
        SRC.parent,
        SRC.parent.parent,
        SRC / "report" / "templates",
        SRC / "report" / "static",
    ]
    missing = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef)),
        ]
        for node in nodes:
            for name in named.findall(ast.get_docstring(node) or ""):
                if not any((root / name).exists() for root in [path.parent, *roots]):
                    missing.append(f"{path.relative_to(SRC)}: {name}")
    assert not missing, missing
