"""The scan's stages, in the order they run. Adding a stage is one module that declares its
`Stage` (what it runs, the stages it needs, its findings, summary lines, transparency row and
report section) plus one line: here for aimri's own, or, for a stage in another package, an
entry point in the group `aimri.stages` naming its `Stage` (in that package's pyproject.toml:
`[project.entry-points."aimri.stages"]` then `sinks = "my_package.sinks:SINKS"`). `ordered`
runs every stage after the ones it needs, and refuses a stage whose needs are not listed.
Not here: anything a stage computes or says."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from aimri.errors import AimriError
from aimri.scanner.audit_section import AUDIT
from aimri.scanner.basics import ACTIVATIONS, LOGIT_LENS, STATISTICS
from aimri.scanner.circuits import CIRCUITS
from aimri.scanner.concepts import CONCEPTS, DIFF
from aimri.scanner.dictionary import DICTIONARY
from aimri.scanner.features import FEATURES
from aimri.scanner.ground_truth import GROUND_TRUTH
from aimri.scanner.stage import Registered, Stage, ordered
from aimri.scanner.steering import STEERING

GROUP = "aimri.stages"
"""The entry-point group other packages register their stages in."""
BUILTIN: tuple[Registered, ...] = ordered(
    ACTIVATIONS,
    STATISTICS,
    LOGIT_LENS,
    GROUND_TRUTH,
    DICTIONARY,
    FEATURES,
    STEERING,
    CIRCUITS,
    CONCEPTS,
    DIFF,
)
"""aimri's own stages (scan.json's shipped schema is theirs: `schema.py`)."""


def plugin_stages() -> tuple[Registered, ...]:
    """The stages installed packages register in `GROUP`, by entry-point name."""
    found: list[Registered] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            stage = ep.load()
        except Exception as e:  # a broken plugin names itself, not a traceback in aimri
            raise AimriError(
                f"the stage '{ep.name}' ({ep.value}) registered in '{GROUP}' does not load: {e}; "
                "fix or uninstall the package that registers it"
            ) from e
        if not isinstance(stage, Stage):
            raise AimriError(
                f"'{ep.value}' registered in '{GROUP}' is a {type(stage).__name__}, not a Stage: "
                "point the entry point at the module's Stage object"
            )
        found.append(cast(Registered, stage))  # a Stage of the plugin's own result type
    return tuple(found)


STAGES: tuple[Registered, ...] = ordered(*BUILTIN, *plugin_stages())
"""Every stage a scan runs: aimri's own and the installed plugins', each after what it needs."""
SECTIONS: tuple[Registered, ...] = (*STAGES, AUDIT)
"""Every stage a document (scan.json, diff.json, probes.json, audit.json) can hold: the scan's
and the audit's, which only `aimri audit` fills."""
