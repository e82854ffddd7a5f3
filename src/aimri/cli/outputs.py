"""What each command writes, declared in one table and checked before it starts.

Part of the CLI. Every command in the CLI's registry declares its outputs here (`WRITES`): for
each, the path, the flag that names it, file or folder, the kind of thing written, and the
value of its --overwrite flag. `check_outputs` runs before a command's handler and applies one
rule to all of them (`aimri.outputs.check_output`): a wrong path (a file, a read-only disk,
/proc, another artifact, an earlier run) is refused in a second, and nothing is replaced
without `--overwrite`. `replace_outputs` then empties a folder that --overwrite replaces, so
nothing of the old output stays mixed in with the new. `absolute_inputs` resolves input paths
against the directory the command was typed in (a scan would otherwise read them from its run
folder). Not here: the rules themselves (`outputs.py`), or anything heavy (`aimri --help` stays
light).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aimri._io import to_jsonable
from aimri.config import (
    AuditConfig,
    CircuitConfig,
    CollectConfig,
    DiffConfig,
    EvalConfig,
    ExplainTextConfig,
    FeaturesConfig,
    MonitorConfig,
    PlantConfig,
    ProbeConfig,
    ScanConfig,
    SearchConfig,
    SteerConfig,
    TrainConfig,
)
from aimri.config.export import ExportNeuronpediaConfig
from aimri.errors import AimriError
from aimri.outputs import (
    artifact_kind,
    check_output,
    check_writable,
    clear_for_overwrite,
    lock_holder,
)
from aimri.store.manifest import check_store_before_work

CHECKPOINT_STATE = Path("checkpoint") / "state.json"


@dataclass(frozen=True)
class Output:
    """One thing a command writes."""

    path: Path
    flag: str
    """The flag the user changes to move it (what error messages name)."""
    kind: str
    """What is written, in `artifact_kind`'s words ("activation store", "catalog"...)."""
    shape: Literal["folder", "file"] = "folder"
    overwrite: bool | None = None
    """The command's --overwrite value; None where it has none (nothing is ever replaced)."""
    continues: tuple[str, ...] = ()
    """Kinds found there that the command continues rather than replaces (it resumes them, after
    the settings check below, or adds beside them); anything else needs --overwrite."""
    example: str = "out.json"
    """A file name to suggest when a file is written and a folder was given."""


def _nothing(cfg: Any) -> tuple[Output, ...]:
    return ()


def _collect(cfg: CollectConfig) -> tuple[Output, ...]:
    store = Output(cfg.out, "--out", "activation store", overwrite=cfg.overwrite)
    return (dataclasses.replace(store, continues=("activation store",)),)


def _train(cfg: TrainConfig) -> tuple[Output, ...]:
    # A run with a checkpoint resumes, and one aimri trained to the end is found done (its
    # settings are checked below); any other dictionary is work training would replace.
    folders = [cfg.out, *(cfg.out.iterdir() if cfg.out.is_dir() else ())]
    resumable = any(_ours_to_resume(p) for p in folders)
    ours = ("dictionary", "dictionary set") if resumable else ()
    return (Output(cfg.out, "--out", "dictionary", overwrite=cfg.overwrite, continues=ours),)


def _describe(cfg: FeaturesConfig) -> tuple[Output, ...]:
    return (
        Output(
            cfg.out, "--out", "catalog", "file", overwrite=cfg.overwrite, example="catalog.sqlite"
        ),
    )


def _scan(cfg: ScanConfig) -> tuple[Output, ...]:
    if not cfg.name:  # a new folder named by the clock: only its parent is checked
        return (Output(cfg.runs_dir, "--runs-dir", "scan run", continues=("*",)),)
    run = Output(cfg.runs_dir / cfg.name, "--name", "scan run", overwrite=cfg.overwrite)
    return (dataclasses.replace(run, continues=("scan run",)),)


def _diff(cfg: DiffConfig) -> tuple[Output, ...]:
    if not cfg.name:
        return (Output(cfg.runs_dir, "--runs-dir", "diff results", continues=("*",)),)
    return (Output(cfg.runs_dir / cfg.name, "--name", "diff results", overwrite=cfg.overwrite),)


def _probe(cfg: ProbeConfig) -> tuple[Output, ...]:
    return (Output(cfg.out, "--out", "probe results", overwrite=cfg.overwrite),)


def _audit(cfg: AuditConfig) -> tuple[Output, ...]:
    # An earlier audit is never replaced: the audit writes to `<out>-2`, `-3`... beside it.
    if cfg.out is None:  # a new folder named by the clock, in the current one
        return (Output(Path("audit"), "--out", "audit results", continues=("*",)),)
    return (Output(cfg.out, "--out", "audit results", continues=("audit results",)),)


def _plant(cfg: PlantConfig) -> tuple[Output, ...]:
    return (Output(cfg.out, "--out", "model", overwrite=cfg.overwrite),)


def _circuit(cfg: CircuitConfig) -> tuple[Output, ...]:
    graph = Output(cfg.out / f"{_slug(cfg)}.json", "--slug", "graph", "file", cfg.overwrite)
    # The folder collects graphs (and whatever else the user keeps there).
    return (Output(cfg.out, "--out", "graph folder", continues=("*",)), graph)


def _monitor(cfg: MonitorConfig) -> tuple[Output, ...]:
    # An alert log is appended to, run after run; anything else there is refused below.
    log = Output(cfg.log, "--log", "alert log", "file", continues=("file",))
    return (dataclasses.replace(log, example="alerts.jsonl"),)


def _eval(cfg: EvalConfig) -> tuple[Output, ...]:
    # The dictionary's own metrics.json, refreshed each time it is evaluated.
    metrics = cfg.dictionary / "metrics.json"
    return (Output(metrics, "--dictionary", "evaluation", "file", continues=("file",)),)


def _export(cfg: ExportNeuronpediaConfig) -> tuple[Output, ...]:
    return (Output(cfg.out, "--out", "neuronpedia export", overwrite=cfg.overwrite),)


WRITES: dict[type, Callable[[Any], tuple[Output, ...]]] = {
    ScanConfig: _scan,
    CollectConfig: _collect,
    TrainConfig: _train,
    EvalConfig: _eval,
    SteerConfig: _nothing,  # prints its generations
    CircuitConfig: _circuit,
    ProbeConfig: _probe,
    DiffConfig: _diff,
    PlantConfig: _plant,
    AuditConfig: _audit,
    MonitorConfig: _monitor,
    FeaturesConfig: _describe,
    SearchConfig: _nothing,  # reads a catalog
    ExplainTextConfig: _nothing,
    ExportNeuronpediaConfig: _export,
}
"""Every command's outputs; `aimri.cli` adds its own `sites` (which writes nothing). A command
missing here cannot run (and a test enumerates the registry against this table)."""


def declared_outputs(
    cfg: object, writes: dict[type, Callable[[Any], tuple[Output, ...]]]
) -> tuple[Output, ...]:
    declare = writes.get(type(cfg))
    assert declare is not None, f"{type(cfg).__name__} declares no outputs in cli/outputs.py"
    return declare(cfg)


def check_outputs(cfg: object, outputs: tuple[Output, ...]) -> None:
    """Refuse `cfg`'s outputs that cannot or must not be written (see `outputs.check_output`),
    then what each command checks of an earlier run of its own kind, all before any work."""
    if isinstance(cfg, CircuitConfig):
        _check_slug(cfg)
    if isinstance(cfg, TrainConfig) and cfg.store and cfg.out.resolve() == cfg.store.resolve():
        raise AimriError(
            f"--out '{cfg.out}' is the activation store being read (--store): nothing was "
            "changed; give the dictionary its own folder, e.g. --out dicts/<site>"
        )
    for o in outputs:
        if "*" in o.continues:
            check_writable(o.path, flag=o.flag, shape=o.shape, example=o.example)
        else:
            check_output(
                o.path,
                flag=o.flag,
                kind=o.kind,
                shape=o.shape,
                same_kind=o.continues,
                overwrite=o.overwrite,
                example=o.example,
            )
    if isinstance(cfg, CollectConfig):
        check_store_before_work(cfg.out, cfg.overwrite)
    elif isinstance(cfg, TrainConfig):
        _check_train(cfg)
    elif isinstance(cfg, ScanConfig) and cfg.name and not cfg.overwrite:
        _check_scan_settings(cfg)
    elif isinstance(cfg, MonitorConfig):
        _check_alert_log(cfg.log)


def replace_outputs(cfg: object, outputs: tuple[Output, ...]) -> None:
    """Empty each folder that --overwrite replaces and that holds something, so the new output
    is not mixed with the old (an old run's metrics, a store's shards, unrelated files). Files
    need nothing: each is replaced at once by renaming the new one onto it."""
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 clears
    inputs = [p for p in _paths_in(cfg) if p.exists()]
    for o in outputs:
        if o.overwrite and o.shape == "folder" and artifact_kind(o.path) is not None:
            keep = [p for p in inputs if p != o.path]
            clear_for_overwrite(o.path, flag=o.flag, keep=keep)


def _paths_in(cfg: object) -> Iterator[Path]:
    """Every path a config names (its fields, nested configs included) that exists as given."""
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, Path):
                yield v
            elif isinstance(v, str) and v and "\n" not in v and len(v) < 4096:
                yield Path(v)
            elif dataclasses.is_dataclass(v):
                yield from _paths_in(v)


def check_inputs(cfg: object) -> None:
    """Open a command's --dictionary now, so that a broken one is refused in a second rather
    than after the model is loaded or, in a scan, after minutes of collection; refuse a store
    that is still being collected."""
    store = cfg.store if isinstance(cfg, TrainConfig) else None
    if store is not None and (pid := lock_holder(store)) is not None:
        raise AimriError(
            f"--store '{store}' is being collected right now (aimri process {pid}): nothing was "
            "changed; wait for that `aimri collect` to finish, then run the same command again"
        )
    dictionary = getattr(cfg, "dictionary", None)
    if isinstance(dictionary, Path):
        from aimri.dicts.formats import load_dictionary

        load_dictionary(dictionary)


# --- an earlier run of the command's own kind -------------------------------------------------


def _check_train(cfg: TrainConfig) -> None:
    if cfg.overwrite:
        return
    from aimri.dicts.checkpoint import train_identity

    mine = _comparable(train_identity(cfg))
    for folder in [cfg.out, *(cfg.out.iterdir() if cfg.out.is_dir() else ())]:
        theirs, what = _trained_with(folder)
        if theirs is not None and (changed := _changes(_comparable(theirs), mine)):
            raise AimriError(
                f"--out '{cfg.out}' holds {what} with other settings ({changed}): nothing was "
                "changed; pass --overwrite to start over there, or choose another --out"
            )


def _trained_with(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """The training settings recorded by a checkpoint or a finished dictionary in `folder`."""
    for record, what, key in [
        (folder / CHECKPOINT_STATE, "the checkpoint of an unfinished training run", "identity"),
        (folder / "aimri.json", "a dictionary trained", "training"),
    ]:
        if not record.is_file():
            continue
        try:
            settings = json.loads(record.read_text())[key][
                "train" if key == "identity" else "config"
            ]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # damaged or foreign: the trainer says what is wrong with it
        if isinstance(settings, dict):
            return settings, what
    return None, ""


def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    """Settings a member of a set shares with the command that trains the set."""
    return {k: v for k, v in identity.items() if k not in ("out", "site", "site_out")}


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """The settings that differ, as `--flag old → new`, the first few."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if sub := _changes(a, b, f"{prefix}{key}."):
                diffs.append(sub)
        elif a != b:
            diffs.append(f"--{prefix}{key}".replace("_", "-") + f" {_short(a)} → {_short(b)}")
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _ours_to_resume(folder: Path) -> bool:
    """A checkpoint, or a dictionary whose aimri.json records how aimri trained it."""
    if (folder / CHECKPOINT_STATE).is_file():
        return True
    record = folder / "aimri.json"
    try:
        return record.is_file() and bool(json.loads(record.read_text()).get("training"))
    except (OSError, ValueError, AttributeError):
        return False  # a damaged record is not ours to resume; check_output says what is there


def _check_scan_settings(cfg: ScanConfig) -> None:
    """A scan run of the same settings is continued (its stages reuse what they made); one of
    other settings would be replaced, or worse mixed: its dictionary kept under the new config."""
    run = cfg.runs_dir / cfg.name / "run.json" if cfg.name else None
    if run is None or not (cfg.runs_dir / str(cfg.name)).is_dir():
        return
    try:
        old = json.loads(run.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        old = None
    if not isinstance(old, dict):
        raise AimriError(
            f"--name '{cfg.name}': '{run.parent}' holds a scan run whose settings cannot be read "
            "(run.json is missing or damaged): nothing was changed; choose another --name, or "
            "pass --overwrite to replace it"
        )
    new = to_jsonable(cfg)
    old, new = ({k: v for k, v in d.items() if k != "overwrite"} for d in (old, new))
    if changed := _changes(old, new):
        raise AimriError(
            f"--name '{cfg.name}': '{run.parent}' holds a scan run with other settings "
            f"({changed}): nothing was changed; choose another --name, or pass --overwrite to "
            "replace it"
        )


def _slug(cfg: CircuitConfig) -> str:
    from aimri.circuits.run import slug_of

    return cfg.slug or slug_of(cfg.prompt)


def _check_slug(cfg: CircuitConfig) -> None:
    """A slug is a file name in --out, never a path out of it (or a hidden file)."""
    slug = cfg.slug
    if slug and (Path(slug).name != slug or slug.startswith(".") or "\\" in slug):
        raise AimriError(
            f"--slug '{slug}' is not a plain name: the graph would be written outside --out "
            f"'{cfg.out}' (or hidden); nothing was changed; give a name without '/', '\\' or a "
            "leading '.', e.g. --slug my-graph"
        )


def _check_alert_log(log: Path) -> None:
    """An alert log is JSON lines; appending them to any other file would spoil it."""
    if not log.is_file() or log.stat().st_size == 0:
        return
    with open(log, "rb") as f:
        head = f.read(1 << 16)
    lines = head.splitlines()[:-1] if len(head) == 1 << 16 else head.splitlines()
    try:
        ok = all(isinstance(json.loads(line), dict) for line in lines if line.strip())
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        other = log.parent / ("alerts.jsonl" if log.name != "alerts.jsonl" else "alerts-2.jsonl")
        raise AimriError(
            f"--log '{log}' already holds a file that is not an alert log (JSON lines), and "
            "alerts would be appended to it: nothing was changed; choose another --log, e.g. "
            f"--log '{other}'"
        )


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
