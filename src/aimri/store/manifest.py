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
import logging
from pathlib import Path
from typing import Any

from aimri._io import sha256_file
from aimri.errors import AimriError

log = logging.getLogger(__name__)

KIND = "aimri.activations"
MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def sidecar_path(store: Path, index: int) -> Path:
    return store / f"shard-{index:05d}.json"


def read_sidecars(store: Path, *, verify: bool = True) -> dict[int, dict[str, Any]]:
    """Shards whose sidecar exists and whose file is present with the recorded size and (with
    `verify`) the recorded sha256; any other shard is to be redone."""
    done: dict[int, dict[str, Any]] = {}
    for side in sorted(store.glob("shard-*.json")):
        try:
            record = json.loads(side.read_text())
            shard = store / record["file"]
            ok = shard.is_file() and shard.stat().st_size == record["bytes"]
            index = int(record["index"])
        except (ValueError, KeyError, TypeError):
            continue  # a damaged sidecar: the shard is redone
        if ok and verify and sha256_file(shard) != record.get("sha256"):
            log.warning("%s does not match its recorded sha256: it will be collected again", shard)
            ok = False
        if ok:
            done[index] = record
    return done


def read_manifest(store: Path) -> dict[str, Any]:
    """The store's manifest; a missing, damaged or foreign one is refused with the fix."""
    path = store / MANIFEST
    if not path.is_file():
        raise AimriError(
            f"'{store}' is not an activation store: it has no {MANIFEST}; make one with "
            "`aimri collect --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise AimriError(
            f"activation store manifest '{path}' is damaged ({e}): run the same `aimri collect` "
            "command with --overwrite to rebuild the store"
        ) from e
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise AimriError(
            f"'{store}' is not an aimri activation store (its {MANIFEST} has no kind "
            f"'{KIND}'): point at a folder made by `aimri collect`"
        )
    if not _well_formed(manifest):
        raise AimriError(
            f"activation store manifest '{path}' is damaged (fields missing or of the wrong "
            "type): run the same `aimri collect` command with --overwrite to rebuild the store"
        )
    return manifest


def _well_formed(manifest: dict[str, Any]) -> bool:
    """The fields readers rely on are there, with the types they expect."""
    identity, shards = manifest.get("identity"), manifest.get("shards")
    fields = {"file": str, "n_tokens": int, "bytes": int, "sha256": str}
    return (
        isinstance(identity, dict)
        and isinstance(identity.get("sites"), dict)
        and isinstance(identity.get("ctx_len"), int)
        and isinstance(manifest.get("n_tokens"), int)
        and isinstance(shards, list)
        and all(
            isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in fields.items())
            for r in shards
        )
    )


def _store_files(store: Path) -> list[Path]:
    """The files a store is made of (manifest, shards, sidecars, leftovers of atomic writes)."""
    patterns = (MANIFEST, "shard-*.safetensors", "shard-*.json", ".*.tmp")
    return [p for pattern in patterns for p in store.glob(pattern) if p.is_file()]


def check_store_before_work(store: Path, overwrite: bool) -> None:
    """What `check_existing_store` can tell without the model: a damaged or lost manifest is
    refused before the model is loaded."""
    if overwrite or not store.is_dir():
        return
    if (store / MANIFEST).is_file():
        read_manifest(store)
    elif any(store.glob("shard-*.safetensors")):
        check_existing_store(store, {}, overwrite)


def check_existing_store(store: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Before collecting into `store`: keep a store of this identity (it resumes), clear one
    that holds nothing worth keeping (an empty stub left by a failed run, or anything with
    --overwrite), and refuse to replace anything else."""
    has_shards = any(store.glob("shard-*.safetensors"))
    if (store / MANIFEST).is_file():
        try:
            old: dict[str, Any] | None = read_manifest(store)
        except AimriError:
            if not overwrite:
                raise
            old = None
        mismatch = identity_mismatch(old.get("identity", {}), identity) if old else "damaged"
        if not mismatch:
            return
        if overwrite or not has_shards:  # a stub from a run that failed before its first shard
            _clear(store)
            return
        raise AimriError(
            f"activation store '{store}' was made with a different configuration ({mismatch}); "
            "use another --out, or pass --overwrite to replace it"
        )
    if has_shards or any(store.glob("shard-*.json")):
        if overwrite:
            _clear(store)
            return
        raise AimriError(
            f"activation store '{store}' has shards but no {MANIFEST}, so what they were made "
            "from is unknown and they cannot be reused: pass --overwrite to delete them and "
            "collect again"
        )
    if (
        store.is_dir()
        and any(not p.name.startswith(".") for p in store.iterdir())
        and not overwrite
    ):
        raise AimriError(
            f"'{store}' exists and is not an activation store: choose an empty or new --out"
        )


def _clear(store: Path) -> None:
    for p in _store_files(store):
        p.unlink(missing_ok=True)


def identity_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Name the first field where a stored identity differs from the requested one."""
    for key in new:
        if old.get(key) != new[key]:
            return f"{key}: stored {json.dumps(old.get(key))[:120]}, requested {json.dumps(new[key])[:120]}"
    return None
