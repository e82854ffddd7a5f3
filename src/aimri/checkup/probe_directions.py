"""Flagged concept directions on disk, for monitoring: `probe_directions.safetensors` (one
[d_model] unit vector per concept) beside `probe_directions.json` (schema_version, the model,
the concepts library version, and per concept its site, method, threshold and AUROC).

Not here: fitting the directions (`probes.py`), using them during generation
(`aimri.steer.monitor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from aimri._io import atomic_path, read_json, read_safetensors, write_json_atomic
from aimri.errors import AimriError

TENSORS_FILE = "probe_directions.safetensors"
SIDECAR_FILE = "probe_directions.json"
_FIELDS = ("site", "method", "threshold", "auroc")


@dataclass(frozen=True)
class ProbeDirection:
    """A flagged direction: unit vector, site, and the score above which a text is flagged."""

    concept: str
    site: str
    method: str
    """`diff_of_means` or `probe`."""
    direction: Tensor = field(repr=False)
    """[d_model] unit vector pointing toward the concept's positive side."""
    threshold: float
    """Flag a text when its mean activation at `site` projected on `direction` exceeds this
    (at most 1% of the calibration neutral texts did)."""
    auroc: float
    """Held-out AUROC, positive vs negative test texts."""


def write_directions(
    directions: Mapping[str, ProbeDirection], folder: Path, *, model: str, concepts_version: str
) -> Path:
    """Write both files atomically; returns the sidecar's path."""
    from safetensors.torch import save_file

    tensors = {n: d.direction.float().contiguous().cpu() for n, d in directions.items()}
    with atomic_path(folder / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        n: {"site": d.site, "method": d.method, "threshold": d.threshold, "auroc": d.auroc}
        for n, d in directions.items()
    }
    sidecar = folder / SIDECAR_FILE
    write_json_atomic(
        sidecar,
        {
            "schema_version": 1,
            "model": model,
            "concepts_version": concepts_version,
            "d_model": next((len(t) for t in tensors.values()), 0),
            "directions": meta,
        },
    )
    return sidecar


def load_probe_directions(folder: str | Path) -> dict[str, ProbeDirection]:
    """Concept → `ProbeDirection`, as written by `save_probe_directions`."""
    folder = Path(folder)
    meta = read_json(folder / SIDECAR_FILE, "probe directions sidecar")
    entries = meta.get("directions") if isinstance(meta, dict) else None
    if not isinstance(entries, dict) or meta.get("schema_version") != 1:
        raise AimriError(
            f"'{folder / SIDECAR_FILE}' is not a version-1 probe directions file: re-create it "
            "with save_probe_directions"
        )
    path = folder / TENSORS_FILE
    if not path.is_file():
        raise AimriError(f"'{path}' not found beside its sidecar: save the directions again")
    tensors = read_safetensors(path, "save the directions again (`aimri probe`)")
    odd = sorted(set(entries) ^ set(tensors))
    broken = sorted(n for n, m in entries.items() if not all(k in m for k in _FIELDS))
    if odd or broken:
        raise AimriError(
            f"'{folder}': the sidecar and the tensors disagree on concepts {odd or broken}: the "
            "files come from different runs or were edited; save the directions again"
        )
    return {
        n: ProbeDirection(
            n, m["site"], m["method"], tensors[n], float(m["threshold"]), float(m["auroc"])
        )
        for n, m in entries.items()
    }
