"""The store's on-disk format: manifest.json, shard files and their sidecars.

```
<store>/manifest.json            identity (model, sites, corpus...), shard list, complete flag
<store>/shard-NNNNN.safetensors  per site [n_tokens, width]; tokens, positions, context_ids
<store>/shard-NNNNN.json         sidecar written after its shard: n_tokens, sha256
```
A shard counts as written only when its sidecar exists; sidecars make resumption and
multi-rank writing safe without a shared lock. Not here: forward passes (`collect.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aimri._io import read_json
from aimri.errors import AimriError

KIND = "aimri.activations"
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def sidecar_path(store: Path, index: int) -> Path:
    return store / f"shard-{index:05d}.json"


def read_sidecars(store: Path) -> dict[int, dict[str, Any]]:
    """Shards whose sidecar exists and whose file is present with the recorded size."""
    done: dict[int, dict[str, Any]] = {}
    for side in sorted(store.glob("shard-*.json")):
        try:
            record = json.loads(side.read_text())
        except json.JSONDecodeError:
            continue  # a damaged sidecar: the shard is redone
        shard = store / record["file"]
        if shard.is_file() and shard.stat().st_size == record["bytes"]:
            done[int(record["index"])] = record
    return done


def read_manifest(store: Path) -> dict[str, Any]:
    manifest = read_json(store / MANIFEST, "activation store manifest")
    if manifest.get("kind") != KIND:
        raise AimriError(f"'{store}' is not an aimri activation store (manifest kind missing)")
    return manifest


def identity_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Name the first field where a stored identity differs from the requested one."""
    for key in new:
        if old.get(key) != new[key]:
            return f"{key}: stored {json.dumps(old.get(key))[:120]}, requested {json.dumps(new[key])[:120]}"
    return None
