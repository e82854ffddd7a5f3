"""The scan's steering stage: the Golden Gate demonstration, measured.

Among the features the features stage described (read back from the run's catalog), pick a
concrete-concept feature by the rule in `aimri.steer.golden_gate` (a few candidates probed
causally), clamp it at multiples of its maximum activation on unrelated prompts, and report the
sweep: the feature's activation, a concept score, fluency and KL on neutral text. Not here: the
edits and measurements themselves (`aimri.steer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aimri.config import ScanConfig
from aimri.dicts.formats import load_dictionary
from aimri.features.catalog import Catalog
from aimri.features.explain import named_tokens
from aimri.model.adapter import Model
from aimri.steer.golden_gate import demonstrate, rank_concept_features

N_PROBE = 8
"""Candidates probed causally (one short forward pass each) before the sweep."""


def steering_stage(
    cfg: ScanConfig, model: Model, run_dir: Path, results: dict[str, Any]
) -> dict[str, Any]:
    if not cfg.steer:
        return {"skipped": "turned off with --no-steer"}
    stage = results["features"]
    dict_path = Path(results["dictionary"]["path"])
    dictionary = load_dictionary(dict_path if dict_path.is_absolute() else run_dir / dict_path)
    with Catalog.open(run_dir / stage["catalog"]) as catalog:
        basis = catalog.bases()[0].name
        stats = [catalog.feature(basis, f["index"]) for f in stage["features"]]
        labels = {f.index: catalog.best_label(basis, f.index) or "" for f in stats}
    ranked = rank_concept_features(
        model, dictionary, stats, labels=_word_labels(labels), n_probe=N_PROBE
    )
    if not ranked:  # a finding in itself; the scan goes on and the report says why
        return {
            "skipped": f"no concrete-concept feature among the {len(stats)} described (the rule "
            "wants rare features whose top examples peak on two or more related words); raise "
            "--n-features or train the dictionary on more tokens"
        }
    chosen = ranked[0]
    result = demonstrate(model, dictionary, chosen)
    return {
        "feature": chosen.index,
        "label": labels.get(chosen.index, ""),
        "concept": result.concept,
        "mode": "clamp",
        "site": stage["site"],
        "max_act": chosen.max_act,
        "candidates": [
            {"feature": r.index, "concept": r.concept, "score": r.score, "words": r.words[:6]}
            for r in ranked[:5]
        ],
        "rows": result.records(),
    }


def _word_labels(labels: dict[int, str]) -> dict[int, str]:
    """Concept descriptions for the concept score: the label's quoted tokens as plain words
    (`tokens " sequence"` → `sequence`), since embeddings compare words, not our notation."""
    out = {}
    for f, text in labels.items():
        words = [w.strip() for w in named_tokens(text) if w.strip()]
        if words:
            out[f] = ", ".join(words)
    return out
