"""The scan's stages, in the order they run. Adding a stage is one module that declares its
`Stage` (what it runs, its findings, summary lines and transparency row) plus one line here.
Not here: anything a stage computes or says."""

from __future__ import annotations

from aimri.scanner.basics import ACTIVATIONS, LOGIT_LENS, STATISTICS
from aimri.scanner.circuits import CIRCUITS
from aimri.scanner.concepts import CONCEPTS, DIFF
from aimri.scanner.dictionary import DICTIONARY
from aimri.scanner.features import FEATURES
from aimri.scanner.ground_truth import GROUND_TRUTH
from aimri.scanner.stage import Stage
from aimri.scanner.steering import STEERING

STAGES: tuple[Stage, ...] = (
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
