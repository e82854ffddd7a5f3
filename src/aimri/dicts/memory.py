"""The scan's memory of past scans: per model, the dictionaries its last scan trained, so that
the next scan of the same model continues training them on text they have not read yet, and
its image gets sharper each time.

```
$AIMRI_CACHE_DIR/memory/<model sha256[:16]>/<identity sha256[:16]>/
    memory.json     the identity, where fresh text starts, tokens per dictionary, the scans
    <name>/         each dictionary (hard links to the run folder's files where the disk allows)
```
The identity is the model's weights (sha256), the corpus (source, split, field, context
length, BOS, boundary, seed; a local file's size and time too) and every dictionary's
configuration (site, architecture, width, k, skip). A changed model, site or corpus is another
identity, so it never continues a stale dictionary; a damaged entry is ignored with a warning,
and an entry is replaced whole (a new folder renamed into place) or not at all.
Not here: training (`trainer.py` continues from a dictionary through
`TrainConfig.continue_from`), the read (`aimri.scanner.read`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimri._io import read_json, write_json_atomic
from aimri.config import CorpusConfig, DictConfig
from aimri.dicts.formats import WEIGHTS, load_dictionary
from aimri.errors import AimriError
from aimri.model.load import cache_dir

log = logging.getLogger(__name__)
FILES = ("cfg.json", WEIGHTS, "aimri.json")
"""What a dictionary folder holds that the memory keeps (not metrics, not checkpoints)."""


@dataclass(frozen=True)
class Recall:
    """What the memory holds for one identity."""

    entry: Path
    start: int
    """Context of the corpus's stream where text no remembered scan has read begins."""
    scans: int
    """Scans that trained these dictionaries before."""
    tokens: dict[str, int]
    """Dictionary name → tokens it has trained on over those scans."""

    def dictionary(self, name: str) -> Path:
        return self.entry / name


def memory_root() -> Path:
    return cache_dir() / "memory"


def memory_identity(
    model_sha256: str, corpus: CorpusConfig, dicts: Mapping[str, DictConfig]
) -> dict[str, Any]:
    """What must be equal for a scan to continue the remembered dictionaries."""
    text = {
        k: v
        for k, v in dataclasses.asdict(corpus).items()
        if k not in ("max_tokens",)  # how much is read is not what is read
    }
    source = Path(corpus.source)
    if source.is_file():
        st = source.stat()
        text["file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {
        "model_sha256": model_sha256,
        "corpus": text,
        "dictionaries": {name: dataclasses.asdict(d) for name, d in sorted(dicts.items())},
    }


def entry_for(identity: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return memory_root() / str(identity["model_sha256"])[:16] / digest[:16]


def recall(identity: Mapping[str, Any]) -> Recall | None:
    """The remembered dictionaries of this identity, or None (never trained, or unusable)."""
    entry = entry_for(identity)
    meta_path = entry / "memory.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path, "scan memory", fix="")
        if meta.get("identity") != identity:
            raise AimriError("its identity does not match its folder")
        for name in identity["dictionaries"]:
            load_dictionary(entry / name)  # checks the recorded sha256 of the weights
        return Recall(entry, int(meta["start"]), int(meta["scans"]), dict(meta["tokens"]))
    except (AimriError, KeyError, TypeError, ValueError, OSError) as e:
        log.warning("the scan memory at '%s' is unusable (%s): training anew", entry, e)
        return None


def remember(
    identity: Mapping[str, Any],
    dictionaries: Mapping[str, Path],
    *,
    start: int,
    tokens: Mapping[str, int],
    before: Recall | None,
) -> Recall:
    """Keep `dictionaries` (name → a finished dictionary folder) as this identity's memory:
    fresh text now starts at context `start`, each has trained `tokens` more."""
    entry = entry_for(identity)
    staging = entry.with_name(f".{entry.name}.{os.getpid()}.new")
    shutil.rmtree(staging, ignore_errors=True)
    for name, src in dictionaries.items():
        (staging / name).mkdir(parents=True)
        for f in FILES:
            _link_or_copy(Path(src) / f, staging / name / f)
    total = {n: (before.tokens.get(n, 0) if before else 0) + tokens.get(n, 0) for n in dictionaries}
    scans = (before.scans if before else 0) + 1
    meta = {"identity": identity, "start": start, "scans": scans, "tokens": total}
    write_json_atomic(staging / "memory.json", meta)
    old = entry.with_name(f".{entry.name}.{os.getpid()}.old")
    if entry.exists():
        entry.rename(old)
    staging.rename(entry)
    shutil.rmtree(old, ignore_errors=True)
    return Recall(entry, start, scans, total)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
