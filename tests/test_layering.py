"""The data flow is the import graph: a module imports only from stages before it."""

from __future__ import annotations

import ast
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
    "checkup": 6,
    "diff": 6,
    "audit": 6,
    "scanner": 7,
    "cli": 8,
    "__init__": 8,
}


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
