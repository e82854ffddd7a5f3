"""Export to other tools: `aimri export neuronpedia`.

Same rules as every config module: a small frozen dataclass, the Python API takes it and the CLI
is generated from it (tyro); nothing heavy is imported; `__post_init__` only validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aimri.errors import AimriError

NEURONPEDIA_API = "https://www.neuronpedia.org/api"
_MODEL_ID = re.compile(r"[a-z][a-z0-9.-]{0,30}[a-z0-9]")
"""Neuronpedia's rule for a model id (its model/new route): 2-32 characters, a lowercase letter
first, then letters, digits, '.' and '-', not last, never doubled."""
_SOURCE_SET = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?|[0-9]")
"""Its rule for a source-set name: letters, digits and '-', a letter first, '-' not last."""


@dataclass(frozen=True, kw_only=True)
class ExportNeuronpediaConfig:
    """Write a run's attribution graphs, described features and dictionary in the formats
    Neuronpedia and circuit-tracer's graph viewer read; with --upload, send them to Neuronpedia
    (the API key comes only from the environment variable NEURONPEDIA_API_KEY)."""

    run: Path | None = None
    """A scan run folder (graphs/, features/catalog.sqlite, dicts/<site>/). The first bare
    argument: `aimri export neuronpedia runs/demo --out np`."""
    dictionary: Path | None = None
    """Instead of --run: a dictionary folder (with --catalog)."""
    catalog: Path | None = None
    """Instead of --run: the catalog describing --dictionary's features (`aimri features
    describe` wrote it)."""
    graphs: Path | None = None
    """A folder of graph JSON files (`aimri circuit --out`); default: the run's graphs/."""
    out: Path
    """Folder the export is written to."""
    model_id: str = ""
    """The model's id on Neuronpedia (graphs' `scan`; created there by --upload where it is
    missing); default: the run's model name."""
    source_set: str = ""
    """Neuronpedia source-set name for the dictionary (lowercase letters, digits, '-'); its
    source is `<layer>-<source-set>`. Default: aimri-<hook>-<width>, e.g. aimri-res-4608."""
    upload: bool = False
    """Also upload graphs and features with the `neuronpedia` client (pip install
    'aimri[export]'); the key is read from NEURONPEDIA_API_KEY and never written anywhere."""
    upload_url: str = NEURONPEDIA_API
    """Neuronpedia's API root: the public site, or your own instance (http://127.0.0.1:3000/api)."""
    overwrite: bool = False
    """Replace an earlier export in --out."""

    def __post_init__(self) -> None:
        pair = (self.dictionary is None, self.catalog is None)
        if self.run is None and pair != (False, False):
            raise AimriError(
                "nothing to export: give a scan run folder (`aimri export neuronpedia runs/<name> "
                "--out np`), or both --dictionary and --catalog"
            )
        if self.run is not None and pair != (True, True):
            raise AimriError(
                "--run was given with --dictionary/--catalog: the run names its own; pass either "
                "the run, or --dictionary and --catalog without it"
            )
        out = self.out.resolve()
        for path in self._inputs():
            if out == path.resolve() or out in path.resolve().parents:
                raise AimriError(
                    f"--out '{self.out}' holds '{path}', which the export reads: nothing was "
                    f"changed; write the export to a folder of its own, e.g. --out "
                    f"{(self.run or out.parent) / 'neuronpedia'}"
                )
        rules = [("--model-id", self.model_id, _MODEL_ID, "smollm2-135m")]
        rules += [("--source-set", self.source_set, _SOURCE_SET, "aimri-res-4608")]
        for flag, name, rule, example in rules:
            if name and (not rule.fullmatch(name) or "--" in name or ".." in name):
                raise AimriError(
                    f"{flag} '{name}' is not a name Neuronpedia takes: use lowercase letters, "
                    f"digits and '-' (no '--'), a letter first and not '-' last, e.g. {example}"
                )
        if not re.match(r"https?://[^/\s]+", self.upload_url):
            raise AimriError(
                f"--upload-url '{self.upload_url}' is not an http(s) URL: give the API root, e.g. "
                f"{NEURONPEDIA_API}"
            )

    def _inputs(self) -> list[Path]:
        if self.run is not None:
            return [self.run / "graphs", self.run / "features", self.run / "dicts"]
        return [p for p in (self.dictionary, self.catalog, self.graphs) if p is not None]
