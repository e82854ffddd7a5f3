"""The held-out ledger: every query of the diagnostic signal for a model, append-only.

Interpretability findings are a test set. If a probe, a scan or a feature search is consulted
while a model is being changed (fine-tune until the deception probe is quiet), the finding stops
being an independent test of that model. So each query appends one JSON line to
`runs/<name>/ledger.jsonl`, and `consultations` counts them per model (by weights sha256), the
way one counts peeks at a test set. See docs/held-out.md.

A line is {"time", "kind", "model_sha256", "aimri_version", "detail"}: UTC ISO time, one of
`KINDS`, the weights' sha256 (None when unknown), and a JSON object describing the query (its
text, its site, the catalog it read): never secrets or environment variables. Lines are written
with O_APPEND, one write each, then fsync: earlier lines are never rewritten, and a crash leaves
at most one torn line, which readers skip with a warning.

Not here: what is queried (the scanner, the check-up, the catalog record their own queries),
showing the count (the report). The ledger never feeds training: nothing reads it but people
and the report.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aimri.errors import AimriError

log = logging.getLogger(__name__)

LEDGER = "ledger.jsonl"
KINDS = ("scan", "probe", "diff", "search", "monitor", "audit")
"""scan: a check-up scan; probe: a concept probe read on the model; diff: a model compared with
another; search: a feature catalog searched; monitor: generation watched by probes or features;
audit: a planted-behaviour audit."""


@dataclass(frozen=True)
class LedgerEntry:
    """One consultation of the diagnostic signal."""

    time: str
    """UTC, ISO 8601 with milliseconds, e.g. 2025-05-01T12:00:00.123+00:00."""
    kind: str
    """One of `KINDS`."""
    model_sha256: str | None
    """`Model.weights_sha256` of the model consulted about; None when unknown."""
    aimri_version: str
    detail: dict[str, Any]
    """What was asked: a JSON object (query text, site, probe name, catalog path, ...)."""


@dataclass(frozen=True)
class LedgerSummary:
    """How often the diagnostic signal has been consulted for one model, over all runs."""

    model_sha256: str
    total: int
    by_kind: dict[str, int]
    """Kind → count, only kinds that occur, in `KINDS` order."""
    runs: list[str]
    """Names of the run directories with at least one consultation, sorted."""
    first: str | None
    """Time of the earliest consultation (None when there is none)."""
    last: str | None


def record_query(
    run_dir: Path, kind: str, *, model_sha256: str | None, detail: Mapping[str, Any]
) -> LedgerEntry:
    """Append one consultation to `run_dir/ledger.jsonl` (created if missing) and return it."""
    if kind not in KINDS:
        raise AimriError(
            f"ledger kind '{kind}' is unknown: use one of {', '.join(KINDS)} "
            "(add a kind to aimri.ledger.KINDS for a new sort of query)"
        )
    entry = LedgerEntry(_now(), kind, model_sha256, _version(), dict(detail))
    try:
        line = json.dumps(asdict(entry), ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise AimriError(
            f"the {kind} query's detail cannot be written to the ledger ({e}): give plain "
            "strings, numbers, lists and dicts"
        ) from e
    _append(Path(run_dir) / LEDGER, line.encode())
    return entry


def read_ledger(run_dir: Path) -> list[LedgerEntry]:
    """Every entry of `run_dir/ledger.jsonl`, oldest first; [] when there is no ledger yet.

    A line that does not parse (torn by a crash mid-write) is skipped with a warning."""
    path = Path(run_dir) / LEDGER
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    entries: list[LedgerEntry] = []
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        entry = _parse(line)
        if entry is None:
            log.warning("skipping unreadable line %d of %s (a write torn by a crash?)", n, path)
        else:
            entries.append(entry)
    return entries


def consultations(runs_root: Path, model_sha256: str) -> LedgerSummary:
    """Count the consultations for the model with weights `model_sha256` in every
    `runs_root/*/ledger.jsonl`."""
    mine: list[LedgerEntry] = []
    runs: list[str] = []
    for ledger in sorted(Path(runs_root).glob(f"*/{LEDGER}")):
        found = [e for e in read_ledger(ledger.parent) if e.model_sha256 == model_sha256]
        if found:
            runs.append(ledger.parent.name)
            mine += found
    counts = {k: sum(e.kind == k for e in mine) for k in KINDS}
    times = sorted(datetime.fromisoformat(e.time) for e in mine)
    return LedgerSummary(
        model_sha256=model_sha256,
        total=len(mine),
        by_kind={k: n for k, n in counts.items() if n},
        runs=runs,
        first=_iso(times[0]) if times else None,
        last=_iso(times[-1]) if times else None,
    )


def _append(path: Path, data: bytes) -> None:
    """One O_APPEND write of `data` (a whole line), then fsync; a torn last line is first
    closed with a newline so that this line stays whole."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size and _torn(path):
                data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):  # a regular file takes it whole unless the disk is full
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise AimriError(
            f"cannot append to the ledger '{path}' ({e.strerror or e}): every query of the "
            "diagnostic signal must be recorded; make the run directory writable (or free "
            "disk space) and ask again"
        ) from e


def _torn(path: Path) -> bool:
    """True when the file does not end with a newline (a torn line from a crash)."""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _parse(line: bytes) -> LedgerEntry | None:
    try:
        obj = json.loads(line)
        return LedgerEntry(
            time=str(obj["time"]),
            kind=str(obj["kind"]),
            model_sha256=obj["model_sha256"],
            aimri_version=str(obj["aimri_version"]),
            detail=dict(obj["detail"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _now() -> str:
    return _iso(datetime.now(UTC))


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


def _version() -> str:
    try:
        return metadata.version("aimri")
    except metadata.PackageNotFoundError:
        return "unknown"
