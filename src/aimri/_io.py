"""Boring, safe persistence: atomic writes, checksums, JSON with a schema version.

Not here: anything that knows about models or activations. Tensors go through safetensors in
the modules that own them; this module only moves bytes safely.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aimri.errors import AimriError

SCHEMA_VERSION = 1


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    Readers never see a half-written file, and a full disk leaves the old file untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own:
        # give what was written the user's usual permissions
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise AimriError(
                f"disk full while writing '{path}': the partial file was removed and nothing "
                "already written was lost; free some space and run the same command again "
                "to resume"
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically. Dicts get `schema_version` if they lack it."""
    if isinstance(obj, dict) and "schema_version" not in obj:
        obj = {"schema_version": SCHEMA_VERSION, **obj}
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path, what: str, *, fix: str = "") -> Any:
    """Read JSON, turning a missing or broken file into an AimriError that says what it was;
    `fix` says how to get a good file back (default: re-create it with its command)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise AimriError(f"{what} '{path}' not found: check the path") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise AimriError(
            f"{what} '{path}' is not valid JSON ({where}): the file is damaged; "
            + (fix or "re-create it with the command that wrote it")
        ) from e


def read_safetensors(path: Path, fix: str) -> dict[str, Any]:
    """A safetensors file's tensors; a missing, truncated or foreign file is an AimriError that
    names the file and ends with `fix`. (torch is imported only when this is called.)"""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise AimriError(f"'{path}' not found: {fix}") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise AimriError(
            f"'{path}' cannot be read as safetensors ({str(e).splitlines()[0][:120]}): it is "
            f"truncated or not a tensor file; {fix}"
        ) from e


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cleanup_temp_files(directory: Path) -> int:
    """Remove leftovers of interrupted atomic writes (`.name.XXXX.tmp`) in `directory`."""
    removed = 0
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def finite(obj: Any) -> Any:
    """NaN and inf become null, so scan.json is strict JSON that any parser (and the report's
    JavaScript) reads; a missing number is shown as missing, never as a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
