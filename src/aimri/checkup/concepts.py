"""Contrast sets for safety-relevant concepts: the built-in library and a user's own files.

A concept file (JSON, `schema_version` 1) holds minimal pairs (the same situation written from
the concept's side and from the opposite side) to fit and test directions, and held-out
behaviour items (a prompt with a completion showing the concept and one showing the opposite)
for the causal check, never used for fitting. Texts use one plain dialogue format,
"User: ...\\nAssistant: ...". The built-in sets (`data/concepts/*.json`, described in the
README there) were written for aimri and carry a `version`; `CONCEPTS_VERSION` names the
library as a whole and changes whenever any built-in file does. `neutral.json` holds everyday
exchanges that none of the concepts should flag.

Not here: activations, directions and metrics (`probes.py`), interventions (`causal.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aimri._io import read_json
from aimri.errors import AimriError

CONCEPTS_VERSION = "1"
"""Version of the built-in library; bumped whenever a built-in file changes."""
BUILTIN_CONCEPTS = (
    "deception",
    "sycophancy",
    "power_seeking",
    "harmful_request",
    "jailbreak",
    "truth",
)
MIN_PAIRS = 16
"""Fewest pairs a concept may have: enough for a train split with cross-validation and a
held-out split of at least `MIN_TEST_PAIRS`."""
MIN_TRAIN_PAIRS = 9
MIN_TEST_PAIRS = 4
MIN_BEHAVIOUR = 4
"""Fewest behaviour items for a causal check."""
SCHEMA_VERSION = 1
_DATA = "data/concepts"


@dataclass(frozen=True)
class BehaviourItem:
    """A held-out prompt and two completions; the causal check compares their log-probabilities."""

    prompt: str
    positive: str
    """A completion that shows the concept (e.g. a lie); starts with its own space."""
    negative: str
    """A completion that shows the opposite (e.g. the truth)."""


@dataclass(frozen=True)
class ConceptSet:
    """One concept's contrast set."""

    name: str
    version: str
    description: str
    positive_label: str
    """What the positive side is called, e.g. "deceptive"."""
    negative_label: str
    pairs: tuple[tuple[str, str], ...]
    """(positive text, negative text) minimal pairs, for fitting and testing directions."""
    behaviour: tuple[BehaviourItem, ...]
    """Held-out items for the causal check."""
    source: str = "builtin"
    """Where the set came from: "builtin" or the file's path."""


def builtin_concepts(names: Sequence[str] | None = None) -> list[ConceptSet]:
    """The built-in concept sets (all six, or those named), validated, in `BUILTIN_CONCEPTS` order."""
    wanted = list(BUILTIN_CONCEPTS if names is None else names)
    unknown = [n for n in wanted if n not in BUILTIN_CONCEPTS]
    if unknown:
        raise AimriError(
            f"unknown built-in concept(s) {', '.join(unknown)}: choose from "
            f"{', '.join(BUILTIN_CONCEPTS)}, or load your own file with load_concepts"
        )
    root = files("aimri.checkup").joinpath(_DATA)
    return [
        concept_from_json(json.loads(root.joinpath(f"{n}.json").read_text()), "builtin")
        for n in wanted
    ]


def builtin_neutral_texts() -> list[str]:
    """Everyday harmless, honest dialogue exchanges in the concepts' format (`neutral.json`)."""
    doc = json.loads(files("aimri.checkup").joinpath(_DATA, "neutral.json").read_text())
    return [str(t) for t in doc["texts"]]


def load_concepts(paths: Iterable[str | Path]) -> list[ConceptSet]:
    """Concept sets from a user's own JSON files (same layout as the built-in ones), validated."""
    out: list[ConceptSet] = []
    for path in map(Path, paths):
        out.append(concept_from_json(read_json(path, "concept file"), str(path)))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AimriError(
            f"concept name(s) {', '.join(dupes)} appear in more than one file: give each "
            "file its own 'concept' name"
        )
    return out


def concept_from_json(doc: Any, source: str) -> ConceptSet:
    """Validate one concept file's contents; every problem names the file and the field."""

    def bad(why: str) -> AimriError:
        return AimriError(f"concept file '{source}': {why}")

    if not isinstance(doc, dict):
        raise bad("the top level must be a JSON object; see the built-in files for the layout")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise bad(f"schema_version is {doc.get('schema_version')!r}; this aimri reads version 1")
    fields = ("concept", "version", "description", "positive_label", "negative_label")
    for key in fields:
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise bad(f"'{key}' must be a non-empty string")
    pairs = _items(doc, "pairs", ("positive", "negative"), bad)
    behaviour = _items(doc, "behaviour", ("prompt", "positive", "negative"), bad)
    concept = ConceptSet(
        name=doc["concept"],
        version=doc["version"],
        description=doc["description"],
        positive_label=doc["positive_label"],
        negative_label=doc["negative_label"],
        pairs=tuple((p["positive"], p["negative"]) for p in pairs),
        behaviour=tuple(
            BehaviourItem(b["prompt"], b["positive"], b["negative"]) for b in behaviour
        ),
        source=source,
    )
    require_pairs(concept)
    same = [i for i, (p, n) in enumerate(concept.pairs) if p == n]
    if same:
        raise bad(f"pairs {same[:5]} have the same positive and negative text: make them differ")
    return concept


def require_pairs(
    concept: ConceptSet, *, n_train: int | None = None, n_test: int | None = None
) -> None:
    """Raise the too-small error when `concept` has too few pairs (or too few for a split of
    `n_train`/`n_test` pairs) or too few behaviour items."""
    n = len(concept.pairs)
    where = "" if concept.source == "builtin" else f" (file '{concept.source}')"
    if n < MIN_PAIRS:
        raise AimriError(
            f"concept '{concept.name}'{where} has {n} pairs ({n} positive and {n} negative "
            f"texts); at least {MIN_PAIRS} pairs are needed to fit directions on a train split "
            "and measure them on a held-out one: add pairs to its 'pairs' list"
        )
    if (
        n_train is not None
        and n_test is not None
        and (n_train < MIN_TRAIN_PAIRS or n_test < MIN_TEST_PAIRS)
    ):
        raise AimriError(
            f"concept '{concept.name}'{where}: a split of its {n} pairs leaves {n_train} to "
            f"train and {n_test} to test; at least {MIN_TRAIN_PAIRS} and {MIN_TEST_PAIRS} are "
            "needed: choose a test_fraction nearer 0.3, or add pairs"
        )
    require_behaviour(concept)


def require_behaviour(concept: ConceptSet) -> None:
    """Raise when `concept` has too few behaviour items for a causal check."""
    if len(concept.behaviour) < MIN_BEHAVIOUR:
        where = "" if concept.source == "builtin" else f" (file '{concept.source}')"
        raise AimriError(
            f"concept '{concept.name}'{where} has {len(concept.behaviour)} behaviour items; at "
            f"least {MIN_BEHAVIOUR} are needed for the causal check: add items to its "
            "'behaviour' list (a prompt with a positive and a negative completion)"
        )


def _items(
    doc: dict, key: str, fields: tuple[str, ...], bad: Callable[[str], AimriError]
) -> list[dict[str, str]]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise bad(f"'{key}' must be a list of objects with {', '.join(fields)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(
            not isinstance(item.get(f), str) or not item[f].strip() for f in fields
        ):
            raise bad(f"{key}[{i}] needs non-empty strings {', '.join(fields)}")
    return items
