"""docs/cli.md is the CLI's own --help: regenerate it when flags change."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_docs_are_current(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gen_cli_docs import DOCS, render
    finally:
        sys.path.pop(0)
    assert DOCS.read_text() == render(), "docs/cli.md is stale: run `python tools/gen_cli_docs.py`"
