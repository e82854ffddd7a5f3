"""Write docs/cli.md from the CLI's own --help output (checked by tests/test_cli_docs.py).

Run: `python tools/gen_cli_docs.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def render() -> str:
    os.environ["COLUMNS"] = "100"
    from aimri.cli import COMMANDS, GROUPS, main

    parts = [
        "# aimri command line\n\nGenerated from `aimri --help` by `tools/gen_cli_docs.py`; do not edit.\n"
    ]
    groups = [[g, name] for g, sub in GROUPS.items() for name in sub]
    for args in ([], *([name] for name in COMMANDS), *groups):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            main([*args, "--help"])
        title = " ".join(["aimri", *args])
        text = "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())
        parts.append(f"\n## `{title}`\n\n```\n{text}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(render())
    print(f"wrote {DOCS}")
