"""The scan's stages, in the order they run. Adding a stage is one module that declares its
`Stage` (what it runs, the stages it needs, its findings, summary lines, transparency row and
report section) plus one line here (and its report partial, which its `View` names); `ordered`
runs every stage after the ones it needs, and refuses a stage whose needs are not listed.
Not here: anything a stage computes or says."""

from __future__ import annotations

from aimri.scanner.audit_section import AUDIT
from aimri.scanner.basics import ACTIVATIONS, LOGIT_LENS, STATISTICS
from aimri.scanner.circuits import CIRCUITS
from aimri.scanner.concepts import CONCEPTS, DIFF
from aimri.scanner.dictionary import DICTIONARY
from aimri.scanner.features import FEATURES
from aimri.scanner.ground_truth import GROUND_TRUTH
from aimri.scanner.stage import Registered, ordered
from aimri.scanner.steering import STEERING

STAGES: tuple[Registered, ...] = ordered(
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
SECTIONS: tuple[Registered, ...] = (*STAGES, AUDIT)
"""Every stage a document (scan.json, diff.json, probes.json, audit.json) can hold: the scan's
and the audit's, which only `aimri audit` fills."""
