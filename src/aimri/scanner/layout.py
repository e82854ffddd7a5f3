"""One scan's run folder, and what the stages share while they run.

```
<run>/run.json                    config, model identity, versions, timings (written first)
<run>/ledger.jsonl                every query on this model (aimri.ledger)
<run>/activations/                the scan's activation store (statistics, lens, heads)
<run>/activations-dict/           the SAE's site on its first tokens (feature examples)
<run>/dicts/<site>/               the scan's SAE
<run>/transcoders/layer_<L>/      a transcoder per layer
<run>/features/catalog.sqlite     labelled features
<run>/graphs/<slug>.json          attribution graphs
<run>/probes/                     concept probe directions
<run>/toy/                        the ground-truth check's toy data and SAE
<run>/scan.json, report.html      the results and their page
```
`RunLayout` owns every one of these paths; `ScanRun` carries the configuration, the model, the
layout, the stages' results so far and the scan's dictionary once loaded. Not here: the stages themselves, or what goes in the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from aimri.config import ScanConfig
from aimri.dicts.dictionary import Dictionary
from aimri.model.adapter import Model
from aimri.scanner.read import ReadProducts


class Removed(TypedDict):
    path: str
    mb: float


class Storage(TypedDict):
    """What the scan removed from its run folder at the end (`run.tidy_run_folder`)."""

    activations_kept: bool
    removed: list[Removed]
    run_folder_mb: float
    note: str


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def scan_json(self) -> Path:
        return self.root / "scan.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def activations(self) -> Path:
        return self.root / "activations"

    @property
    def dict_activations(self) -> Path:
        return self.root / "activations-dict"

    @property
    def caches(self) -> tuple[Path, ...]:
        """The activation stores, removed at the end unless --keep-activations."""
        return (self.activations, self.dict_activations)

    def dictionary(self, site: str) -> Path:
        return self.root / "dicts" / site

    @property
    def toy(self) -> Path:
        """The ground-truth check's toy store and SAE (redone every scan)."""
        return self.root / "toy"

    @property
    def transcoders(self) -> Path:
        return self.root / "transcoders"

    @property
    def catalog(self) -> Path:
        return self.root / "features" / "catalog.sqlite"

    @property
    def graphs(self) -> Path:
        return self.root / "graphs"

    @property
    def probes(self) -> Path:
        return self.root / "probes"

    def relative(self, path: Path) -> str:
        """`path` as scan.json records it: relative to the run folder when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def resolve(self, recorded: str | Path) -> Path:
        """A path scan.json recorded, back to one that opens."""
        path = Path(recorded)
        return path if path.is_absolute() else self.root / path


@dataclass
class ScanRun:
    """What every stage gets: the scan's configuration, the model, the run folder, and the
    results of the stages before it (by stage name; a stage reads another's through that stage:
    `Stage.required`, `Stage.result`)."""

    cfg: ScanConfig
    model: Model
    layout: RunLayout
    results: dict[str, object] = field(default_factory=dict[str, object])
    read: ReadProducts | None = None
    """What the activations stage's one read trained (`read.py`), for the stages after it."""
    dictionary: Dictionary | None = field(default=None, repr=False)
    """The dictionary stage's dictionary, loaded from disk once per scan
    (`dictionary.scan_dictionary`)."""
