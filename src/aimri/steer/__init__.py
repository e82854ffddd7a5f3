"""Interventions: steer, clamp and ablate, and measure what they do.

`edits.py` turns edits (add a direction, clamp or ablate a dictionary feature) into patch
functions at sites and attaches them with `steering(model, edits)`; `generate.py` writes text
with edits on; `directions.py` finds directions from data (difference of means, probes);
`sweep.py` measures an edit across strengths (feature activation, concept score, perplexity,
KL on neutral text); `candidates.py` finds concrete-concept features in a whole dictionary and `golden_gate.py`
steers with one against random directions and neurons at the same norm;
`run.py` is the stage function `steer(SteerConfig)` behind `aimri steer`; `monitor.py` watches
probe directions and features while generating and raises alerts (callback, JSONL log).
Not here: circuits, the CLI.
"""

from aimri.steer.directions import (
    diff_of_means,
    fit_probe,
    mean_activations,
    mean_difference,
    probe_direction,
    site_norm,
)
from aimri.steer.edits import (
    AblateFeature,
    AddDirection,
    ClampFeature,
    Edit,
    Positions,
    feature_activation,
    steering,
)
from aimri.steer.generate import Generation, generate
from aimri.steer.golden_gate import Demonstration, choose, demonstrate, probe
from aimri.steer.monitor import Alert, MonitoredGeneration, Watch, monitored_generate
from aimri.steer.run import feature_max, promoted_words, steer
from aimri.steer.sweep import (
    NEUTRAL_TEXTS,
    SweepPoint,
    SweepResult,
    continuation_perplexity,
    kl_on_texts,
    sweep,
)

__all__ = [
    "NEUTRAL_TEXTS",
    "AblateFeature",
    "AddDirection",
    "Alert",
    "ClampFeature",
    "Demonstration",
    "Edit",
    "Generation",
    "MonitoredGeneration",
    "Positions",
    "SweepPoint",
    "SweepResult",
    "Watch",
    "choose",
    "continuation_perplexity",
    "demonstrate",
    "diff_of_means",
    "feature_activation",
    "feature_max",
    "fit_probe",
    "generate",
    "kl_on_texts",
    "mean_activations",
    "mean_difference",
    "monitored_generate",
    "probe",
    "probe_direction",
    "promoted_words",
    "site_norm",
    "steer",
    "steering",
    "sweep",
]
