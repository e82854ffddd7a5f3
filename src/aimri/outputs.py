"""Output paths, checked before any work starts, and a lock for each writer of a folder.

A command that writes calls `check_output` for each of its outputs first: the path must be
writable, must be a folder where a folder is written (and a file where a file is), and must
not hold another artifact (or anything else) unless the user passed `--overwrite`. What counts
as "the same kind" is told by `artifact_kind`, from file names alone (nothing is opened but a
file's first bytes). `clear_for_overwrite` empties a folder that `--overwrite` replaces, so
nothing of the old is left mixed in. `writer_lock` keeps two runs from writing one store or
dictionary at once. Not here: which command writes what (`aimri.cli.outputs` declares it), or
what a command does with an existing artifact of its own kind (resume, refuse a different
configuration): that is the command's own business.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from aimri.errors import AimriError

LOCK = ".aimri.lock"
_SQLITE = b"SQLite format 3\x00"

# (a file that marks the kind, the kind's name), tried in order on a folder's entries.
_MARKERS: tuple[tuple[str, str], ...] = (
    ("manifest.json", "activation store"),
    ("shard-00000.safetensors", "activation store"),
    ("shard-00000.json", "activation store"),
    ("sae_weights.safetensors", "dictionary"),
    ("aimri.json", "dictionary"),
    ("checkpoint", "dictionary"),
    ("run.json", "scan run"),
    ("scan.json", "scan run"),
    ("probes.json", "probe results"),
    ("audit.json", "audit results"),
    ("diff.json", "diff results"),
    ("plant.json", "model"),
    ("sae.safetensors", "dictionary"),
    ("params.npz", "dictionary"),
    ("ae.pt", "dictionary"),
    ("ae.safetensors", "dictionary"),
    ("config.json", "model"),
    ("catalog.sqlite", "features folder"),
    ("neuronpedia.json", "neuronpedia export"),
)


def artifact_kind(path: Path) -> str | None:
    """What `path` holds, in words ("activation store", "dictionary", "catalog", "file"...);
    None when it does not exist or is a folder holding nothing but hidden leftovers."""
    if path.is_file():
        return _file_kind(path)
    if not path.is_dir():
        return None if not path.exists() else "special file"
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if not names:
        return None
    for marker, kind in _MARKERS:
        if marker in names:
            return kind
    subs = [path / n for n in names if (path / n).is_dir()]
    if subs and len(subs) == len(names):
        kinds = {artifact_kind(s) for s in subs}
        if kinds == {"dictionary"}:
            return "dictionary set"
    return "folder with other files"


def _file_kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        head = b""
    if head == _SQLITE:
        return "catalog" if path.suffix == ".sqlite" else "SQLite database"
    if path.suffix == ".safetensors":
        return "tensor file"
    return "file"


def check_output(
    path: Path,
    *,
    flag: str,
    kind: str,
    shape: Literal["folder", "file"] = "folder",
    same_kind: tuple[str, ...] = (),
    overwrite: bool | None = None,
    example: str = "out.json",
) -> None:
    """Refuse an output path before any work: unwritable, of the wrong shape, or holding
    something this command would replace or mix into.

    `kind` names what the command writes; an existing artifact whose kind is in `same_kind` is
    left to the command (it resumes it, or checks it matches). `overwrite` is the value of the
    command's --overwrite flag, or None if it has none (then the fix is another path). `example`
    is a file name to suggest where a file is written and a folder was given.
    """
    check_writable(path, flag=flag, shape=shape, example=example)
    found = artifact_kind(path)
    if found is None or found in same_kind or overwrite:
        return
    fix = (
        f"choose another {flag}, or pass --overwrite to replace it"
        if overwrite is not None
        else f"choose another {flag}, or move it away first"
    )
    what = (
        f"already holds {_a(found)}, which this command would replace"
        if found == kind
        else f"already holds {_a(found)}, and this command would write {_a(kind)} there"
    )
    raise AimriError(f"{flag} '{path}' {what}: nothing was changed; {fix}")


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def check_writable(
    path: Path, *, flag: str, shape: Literal["folder", "file"], example: str = "out.json"
) -> None:
    """Refuse a path that cannot be written as a `shape` (a file where a folder goes, a
    read-only disk, a parent that is a file, /proc). `example` is a file name to suggest when a
    file is asked for and a folder given. Tried for real: a file is created and removed."""
    if shape == "folder" and path.exists() and not path.is_dir():
        raise AimriError(
            f"{flag} '{path}' is a file, but a folder is written there: nothing was changed; "
            f"give a folder's path (new or empty) as {flag}"
        )
    if shape == "file" and path.is_dir():
        raise AimriError(
            f"{flag} '{path}' is a folder, but a file is written there: give a file's path as "
            f"{flag}, e.g. '{path / example}' (nothing was changed)"
        )
    # A file is replaced by renaming onto it, so its folder must be writable; a folder must be.
    existing = path if shape == "folder" and path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise AimriError(
            f"{flag} '{path}' cannot be created: '{existing}' is a file, not a folder; "
            f"choose another {flag}"
        )
    if not _can_create_in(existing) or (shape == "file" and not _can_append(path)):
        raise AimriError(
            f"{flag} '{path}' is not writable ('{existing}' is read-only or not yours): "
            f"nothing was changed; choose a {flag} on a writable disk"
        )


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`: asked of the system itself, since permission bits
    say nothing of root, /proc, /sys, immutable folders or read-only mounts."""
    try:
        fd, name = tempfile.mkstemp(prefix=".aimri-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _can_append(path: Path) -> bool:
    """Whether an existing file can be opened for writing (opening changes nothing)."""
    if not path.is_file():
        return True
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def clear_for_overwrite(folder: Path, *, flag: str, keep: Iterable[Path] = ()) -> None:
    """Empty `folder`, which --overwrite replaces, so the new output is not mixed with the old.

    Refused when that would delete something still needed: the folder the command runs in (or
    one above it), the home folder, an input of the command (`keep`), or a folder another aimri
    process is writing (its writer lock is held while clearing).
    """
    if not folder.is_dir():
        return
    home = Path.home()
    for needed, what in [(Path.cwd(), "the folder you are working in"), (home, "your home")]:
        if inside(needed, folder):
            raise AimriError(
                f"{flag} '{folder}' holds {what}; --overwrite would delete it: nothing was "
                f"changed; choose another {flag}"
            )
    for path in keep:
        if inside(path, folder):
            raise AimriError(
                f"{flag} '{folder}' holds '{path}', which this command reads; --overwrite would "
                f"delete it: nothing was changed; choose another {flag}"
            )
    with writer_lock(folder, what="folder"):
        for entry in folder.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def lock_holder(folder: Path) -> str | None:
    """The pid of the aimri process writing `folder` now, or None when no one is."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # closing releases a shared lock taken just to look
    return None


@contextlib.contextmanager
def writer_lock(folder: Path, *, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold `<folder>/.aimri.lock` while writing `folder`; a second writer is refused at once.

    An advisory lock (flock): the operating system releases it when the process ends, however
    it ends, so a killed run never leaves a stale lock behind.
    """
    if not enabled:
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / LOCK).is_dir():
        raise AimriError(
            f"'{folder / LOCK}' is a folder, but aimri keeps its writer lock file there: nothing "
            f"was changed; remove that folder (rmdir '{folder / LOCK}') and run the command again"
        )
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise AimriError(
                f"{what} '{folder}' is being written by another aimri process (pid {holder}): "
                "wait for it to finish, or use another --out"
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if created and [p.name for p in folder.iterdir()] == [LOCK]:
                # A run that failed before writing anything leaves no folder behind.
                (folder / LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
    finally:
        os.close(fd)  # closing the descriptor releases the lock
