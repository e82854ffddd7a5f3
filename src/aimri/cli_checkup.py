"""The check-up's subcommands (probe, diff, plant, audit, monitor): thin shells over the API
that print what was written and what was found. Not here: any measurement."""

from __future__ import annotations

from aimri.config_checkup import DiffConfig

CHECKUP_COMMANDS: dict[str, type] = {"diff": DiffConfig}
# `aimri diff A B` fills these fields from its first two bare arguments.
PAIR_POSITIONAL = {"diff": ("--base.spec", "--other.spec")}


def with_pair_positional(args: list[str]) -> list[str]:
    """`aimri diff A B --x` → `aimri diff --base.spec A --other.spec B --x`."""
    if len(args) >= 3 and args[0] in PAIR_POSITIONAL:
        a, b = args[1], args[2]
        if not a.startswith("-") and not b.startswith("-"):
            first, second = PAIR_POSITIONAL[args[0]]
            return [args[0], first, a, second, b, *args[3:]]
    return args


def dispatch_checkup(cfg: object) -> None:
    if isinstance(cfg, DiffConfig):
        from aimri.scanner.commands import diff

        r = diff(cfg)
        print(f"diff complete in {r.seconds:.0f}s: {r.headline}")
        print(f"results: {r.json}")
        print(f"report: {r.report.resolve()}")
    else:  # pragma: no cover - cli.py only passes the classes in CHECKUP_COMMANDS
        raise AssertionError(type(cfg))
