"""What each command writes, checked before it starts; its input paths made absolute.

Part of the CLI: `check_outputs` runs before a command's handler, so a wrong `--out` (a file,
a read-only disk, another artifact) is refused in a second, not after minutes of work, and
nothing is replaced without `--overwrite`. `absolute_inputs` resolves input paths against the
directory the command was typed in (a scan would otherwise read them from its run folder).
Not here: the rules themselves (`outputs.py`), or anything heavy (`aimri --help` stays light).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from aimri.config import (
    AuditConfig,
    CircuitConfig,
    CollectConfig,
    DiffConfig,
    EvalConfig,
    FeaturesConfig,
    MonitorConfig,
    PlantConfig,
    ProbeConfig,
    ScanConfig,
    TrainConfig,
)
from aimri.errors import AimriError
from aimri.outputs import check_output, check_writable
from aimri.store.manifest import check_store_before_work

CHECKPOINT_STATE = Path("checkpoint") / "state.json"


def check_inputs(cfg: object) -> None:
    """Open a command's --dictionary now, so that a broken one is refused in a second rather
    than after the model is loaded or, in a scan, after minutes of collection."""
    dictionary = getattr(cfg, "dictionary", None)
    if isinstance(dictionary, Path):
        from aimri.dicts.formats import load_dictionary

        load_dictionary(dictionary)


def check_outputs(cfg: object) -> None:
    """Refuse `cfg`'s outputs that cannot or must not be written (see `outputs.check_output`)."""
    if isinstance(cfg, CollectConfig):
        check_output(
            cfg.out,
            flag="--out",
            kind="activation store",
            same_kind=("activation store",),
            overwrite=cfg.overwrite,
        )
        check_store_before_work(cfg.out, cfg.overwrite)
    elif isinstance(cfg, TrainConfig):
        _check_train(cfg)
    elif isinstance(cfg, FeaturesConfig):
        check_output(cfg.out, flag="--out", kind="catalog", shape="file", overwrite=cfg.overwrite)
    elif isinstance(cfg, ScanConfig):
        check_writable(cfg.runs_dir, flag="--runs-dir", shape="folder")
        if cfg.name:
            check_output(
                cfg.runs_dir / cfg.name,
                flag="--name",
                kind="scan run",
                same_kind=("scan run",),
                overwrite=cfg.overwrite,
            )
    elif isinstance(cfg, DiffConfig):
        check_writable(cfg.runs_dir, flag="--runs-dir", shape="folder")
        if cfg.name:
            check_output(
                cfg.runs_dir / cfg.name, flag="--name", kind="diff", same_kind=("diff results",)
            )
    elif isinstance(cfg, ProbeConfig):
        check_output(cfg.out, flag="--out", kind="probe results", same_kind=("probe results",))
    elif isinstance(cfg, AuditConfig):
        if cfg.out is not None:  # None: the audit picks a new folder, never an earlier one
            check_output(cfg.out, flag="--out", kind="audit results", same_kind=("audit results",))
    elif isinstance(cfg, PlantConfig):
        check_output(cfg.out, flag="--out", kind="model", overwrite=cfg.overwrite)
    elif isinstance(cfg, CircuitConfig):
        check_output(cfg.out, flag="--out", kind="graph", same_kind=("folder with other files",))
    elif isinstance(cfg, MonitorConfig):
        check_writable(cfg.log, flag="--log", shape="file")
    elif isinstance(cfg, EvalConfig):
        check_writable(cfg.dictionary, flag="--dictionary", shape="folder")


def _check_train(cfg: TrainConfig) -> None:
    if cfg.store is not None and cfg.out.resolve() == cfg.store.resolve():
        raise AimriError(
            f"--out '{cfg.out}' is the activation store being read (--store): nothing was "
            "changed; give the dictionary its own folder, e.g. --out dicts/<site>"
        )
    # A run with a checkpoint resumes, and one aimri trained to the end is found done (the
    # trainer checks either is the same run); any other dictionary is work training would replace.
    folders = [cfg.out, *(cfg.out.iterdir() if cfg.out.is_dir() else ())]
    resumable = any(_ours_to_resume(p) for p in folders)
    check_output(
        cfg.out,
        flag="--out",
        kind="dictionary",
        same_kind=("dictionary", "dictionary set") if resumable else (),
        overwrite=cfg.overwrite,
    )


def _ours_to_resume(folder: Path) -> bool:
    """A checkpoint, or a dictionary whose aimri.json records how aimri trained it."""
    if (folder / CHECKPOINT_STATE).is_file():
        return True
    record = folder / "aimri.json"
    try:
        return record.is_file() and bool(json.loads(record.read_text()).get("training"))
    except (OSError, ValueError, AttributeError):
        return False  # a damaged record is not ours to resume; check_output says what is there


def absolute_inputs(cfg: object) -> object:
    """`cfg` with its input paths resolved against the current directory."""
    if isinstance(cfg, ScanConfig):
        return dataclasses.replace(
            cfg,
            dictionary=_abs(cfg.dictionary),
            transcoders=_abs(cfg.transcoders),
            concept_files=tuple(p.resolve() for p in cfg.concept_files),
        )
    return cfg


def _abs(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser().resolve()
