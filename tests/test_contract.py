"""Every command, one output contract (issue 24).

The commands come from the CLI's own registry (`COMMANDS`, `GROUPS`), so a new command cannot
skip this: it must declare what it writes (`cli.WRITES`) and have a row in `TARGETS` saying how
to point it at a target. Each writing command is then run against an existing file, a folder
of unrelated files, an earlier output of its own kind made with other settings, a path inside a
file and a path the system will not let anyone write (/proc). Each must exit 2 with one error
line that names a flag the command has, and leave the target byte-identical. Then the clean
replace (--overwrite leaves nothing of the old) and the other cases of the issue, each with the
fix its message gives run and seen to work where that is cheap.
The setting is test_bad_input's: a tiny random gpt2, a 1,024-token store, a small SAE.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aimri._io import to_jsonable
from aimri.cli import COMMANDS, GROUPS, WRITES, _GroupHelp, main
from aimri.config import ScanConfig
from aimri.outputs import LOCK, writer_lock
from tests import test_bad_input
from tests.test_bad_input import World, snapshot

world = test_bad_input.world  # the same fixture: a tiny gpt2, its store and a small SAE

CASES = ("a file", "a folder of other files", "an earlier run", "inside a file", "unwritable")


@dataclass(frozen=True)
class Target:
    """How to point a command at a target, and the target each case makes."""

    argv: Callable[[World, Path], list[str]]
    """The command line writing to `target` (the path the declaration checks)."""
    shape: str
    """'folder' or 'file': what the command writes at `target`."""
    earlier: Callable[[World, Path], list[str]] | None
    """Makes an earlier output of the command's own kind at the path, and returns the argv of a
    run with other settings; None where the command continues its own kind by design."""


def _registry() -> dict[str, type]:
    """Every command the CLI runs, by the words typed: `collect`, `features describe`..."""
    commands = {name: cls for name, cls in COMMANDS.items()}
    for group, subs in GROUPS.items():
        commands |= {f"{group} {name}": cls for name, cls in subs.items()}
    return commands


def _fake_run(path: Path, marker: str, config: object = None) -> None:
    path.mkdir(parents=True)
    (path / marker).write_text(json.dumps({"config": to_jsonable(config) if config else {}}))
    (path / "report.html").write_text("<p>an earlier run</p>")


def _scan_earlier(w: World, t: Path) -> list[str]:
    _fake_run(t, "run.json", ScanConfig(name=t.name, runs_dir=t.parent, n_features=8))
    (t / "scan.json").write_text("{}")
    return ["scan", "--runs-dir", str(t.parent), "--name", t.name, "--n-features", "12"]


def _graph(w: World, t: Path) -> list[str]:
    t.parent.mkdir(parents=True, exist_ok=True)
    t.write_text(json.dumps({"metadata": {"slug": t.stem}}))
    return [*_circuit(w, t), "--node-threshold", "0.5"]


def _circuit(w: World, t: Path) -> list[str]:
    return [
        *("circuit", "--prompt", "hi", "--transcoders", str(w.root / "tc")),
        *("--out", str(t.parent), "--slug", t.stem),
    ]


def _catalog(w: World, t: Path) -> list[str]:
    t.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(t).execute("CREATE TABLE meta (k, v)").connection.commit()
    return [*w.describe(w.dictionary, t), "--n-features", "3"]


def _train_earlier(w: World, t: Path) -> list[str]:
    shutil.copytree(w.dictionary, t)  # trained with --k 4
    return w.train(t, "--k", "8")


def _collect_earlier(w: World, t: Path) -> list[str]:
    shutil.copytree(w.store, t)  # 1,024 tokens
    return w.collect(t, "--corpus.max-tokens", "2048")


def _marked(marker: str, argv: Callable[[World, Path], list[str]], *more: str):
    def earlier(w: World, t: Path) -> list[str]:
        _fake_run(t, marker)
        return [*argv(w, t), *more]

    return earlier


def _diff(w: World, t: Path) -> list[str]:
    return ["diff", str(w.model), str(w.model), "--runs-dir", str(t.parent), "--name", t.name]


def _probe(w: World, t: Path) -> list[str]:
    return ["probe", "--model.spec", str(w.model), "--out", str(t)]


def _plant(w: World, t: Path) -> list[str]:
    return ["plant", "--plant", "trigger", "--model.spec", str(w.model), "--out", str(t)]


def _export(w: World, t: Path) -> list[str]:
    catalog = ("--catalog", str(w.root / "catalog.sqlite"))
    return ["export", "neuronpedia", "--dictionary", str(w.dictionary), *catalog, "--out", str(t)]


TARGETS: dict[str, Target | None] = {
    "scan": Target(
        lambda w, t: ["scan", "--runs-dir", str(t.parent), "--name", t.name],
        "folder",
        _scan_earlier,
    ),
    "collect": Target(lambda w, t: w.collect(t), "folder", _collect_earlier),
    "train": Target(lambda w, t: w.train(t), "folder", _train_earlier),
    "eval": Target(
        lambda w, t: ["eval", "--dictionary", str(t.parent)], "file", None
    ),  # refreshes the metrics.json inside the dictionary it evaluates
    "steer": None,
    "circuit": Target(_circuit, "file", _graph),
    "sites": None,
    "probe": Target(_probe, "folder", _marked("probes.json", _probe, "--neutral.seed", "3")),
    "diff": Target(_diff, "folder", _marked("diff.json", _diff, "--corpus.seed", "4")),
    "plant": Target(_plant, "folder", _marked("plant.json", _plant, "--seed", "3")),
    "audit": Target(
        lambda w, t: ["audit", str(w.model), str(w.model), "--out", str(t)], "folder", None
    ),  # an earlier audit is kept: the new one goes to `<out>-2`
    "monitor": Target(
        lambda w, t: [
            *("monitor", "--prompts", "hi", "--probes", str(w.root / "probes")),
            *("--log", str(t)),
        ],
        "file",
        None,
    ),  # appends to its alert log
    "features describe": Target(lambda w, t: w.describe(w.dictionary, t), "file", _catalog),
    "features search": None,
    "features explain-text": None,
    "export neuronpedia": Target(
        _export, "folder", _marked("neuronpedia.json", _export, "--model-id", "other")
    ),
}
"""Commands that write nothing have None (their declaration must say so too)."""


def test_every_command_declares_its_outputs_and_has_a_row_here():
    registry = _registry()
    assert set(TARGETS) == set(registry), "add the command to TARGETS (and to cli.WRITES)"
    for name, cls in registry.items():
        if cls is _GroupHelp:
            continue
        assert cls in WRITES, f"{name}: declare its outputs in cli/outputs.WRITES"


def _flags_of(command: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    return set(re.findall(r"--[a-z][\w.-]*", capsys.readouterr().out))


def _make(case: str, w: World, command: str, target: Target) -> tuple[Path, list[str]] | None:
    base = w.root / "contract" / command.replace(" ", "-") / case.replace(" ", "-")
    name = "catalog.sqlite" if command == "features describe" else "out.jsonl"
    t = base / (name if target.shape == "file" else "out")
    if command == "eval":
        t = base / "dict" / "metrics.json"  # what eval writes; --dictionary is its folder
    if case == "a file":
        (t if command != "eval" else t.parent).parent.mkdir(parents=True)
        (t if command != "eval" else t.parent).write_text("a user's notes\n")
    elif case == "a folder of other files":
        t.mkdir(parents=True)
        (t / "notes.txt").write_text("a user's notes\n")
    elif case == "an earlier run":
        if target.earlier is None:
            return None
        return t, target.earlier(w, t)
    elif case == "inside a file":
        base.mkdir(parents=True)
        (base / "notes.txt").write_text("a user's notes\n")
        t = base / "notes.txt" / t.relative_to(base)
    else:
        t = Path("/proc/aimri-contract") / t.relative_to(base)
    return t, target.argv(w, t)


ROWS = [(c, case) for c, t in TARGETS.items() if t is not None for case in CASES]


@pytest.mark.parametrize(("command", "case"), ROWS, ids=[f"{c}: {k}" for c, k in ROWS])
def test_a_command_never_writes_over_what_is_there(world, command, case, capsys, monkeypatch):
    monkeypatch.setenv("AIMRI_CACHE_DIR", str(world.root / "cache"))
    target = TARGETS[command]
    assert target is not None
    made = _make(case, world, command, target)
    if made is None:
        pytest.skip(f"{command} continues an earlier output of its own kind by design")
    t, argv = made
    before = snapshot(world.root)  # every target but /proc lies under it
    t0 = time.perf_counter()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("aimri: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 30, "refused late"
    named = set(re.findall(r"--[a-z][\w.-]*", errors[0]))
    assert named, f"the error names no flag: {errors[0]}"
    assert named <= _flags_of(command, capsys), f"not flags of `aimri {command}`: {errors[0]}"
    after = snapshot(world.root)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed and not (case == "unwritable" and t.exists()), changed


# --- a clean replace ------------------------------------------------------------------------


def test_train_overwrite_leaves_no_old_metrics(world, capsys):
    out = world.root / "replace" / "dict"
    assert main(world.train(out)) == 0
    old = (out / "metrics.jsonl").read_text().splitlines()
    assert main(world.train(out, "--k", "8")) == 2  # other settings: refused, with the fix
    assert "--overwrite" in capsys.readouterr().err
    assert main(world.train(out, "--k", "8", "--overwrite")) == 0
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and len(steps) == len(old), "old rows left in front"
    assert json.loads((out / "aimri.json").read_text())["training"]["config"]["k"] == 8


def test_train_overwrite_over_a_store_leaves_no_shards(world):
    out = world.root / "replace" / "store-copy"
    shutil.copytree(world.store, out)
    assert main(world.train(out, "--overwrite")) == 0
    assert not (out / "manifest.json").exists() and not list(out.glob("shard-*"))
    assert (out / "sae_weights.safetensors").is_file()


def test_collect_overwrite_over_other_files_leaves_none_of_them(world, capsys):
    out = world.root / "replace" / "mixed"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("unrelated\n")
    assert main(world.collect(out)) == 2
    assert main(world.collect(out, "--overwrite")) == 0
    assert not (out / "notes.txt").exists() and (out / "manifest.json").is_file()


def test_overwrite_never_deletes_an_input(world, capsys):
    parent = world.root / "replace" / "holds-store"
    shutil.copytree(world.store, parent / "store")
    before = snapshot(parent)
    argv = [*world.train(parent, "--overwrite"), "--store", str(parent / "store")]
    assert main(argv) == 2
    assert "which this command reads" in capsys.readouterr().err
    assert snapshot(parent) == before


# --- the other cases of the issue -----------------------------------------------------------


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("aimri: error: "), err
    return lines[0]


def test_a_killed_run_with_other_settings_is_refused_at_once_and_overwrite_works(world, capsys):
    out = world.root / "killed"
    assert main(world.train(out, "--keep-checkpoint", "--checkpoint-every", "2")) == 0
    for name in ("cfg.json", "sae_weights.safetensors", "aimri.json"):
        (out / name).unlink()  # what a run killed before its end leaves: checkpoint, metrics
    before = snapshot(out)
    t0 = time.perf_counter()
    err = _one_error(capsys, world.train(out, "--k", "8"))
    assert "checkpoint of an unfinished training run" in err and "--overwrite" in err
    assert "--k 4 → 8" in err and time.perf_counter() - t0 < 5
    assert snapshot(out) == before
    assert main(world.train(out, "--k", "8", "--overwrite")) == 0  # the fix works
    assert not (out / "checkpoint").exists()


def test_a_slug_stays_inside_out(world, capsys):
    out = world.root / "graphs"
    argv = ["circuit", "--prompt", "hi", "--transcoders", str(world.root), "--out", str(out)]
    err = _one_error(capsys, [*argv, "--slug", "../u/notes"])
    assert "--slug '../u/notes' is not a plain name" in err
    assert not (world.root / "u").exists() and not out.exists()


def test_monitor_refuses_a_text_file_as_its_log(world, capsys):
    argv = ["monitor", "--prompts", "hi", "--probes", str(world.root), "--log", str(world.notes)]
    before = world.notes.read_bytes()
    err = _one_error(capsys, argv)
    assert "not an alert log (JSON lines)" in err and "--log" in err
    assert world.notes.read_bytes() == before


@pytest.mark.parametrize(
    "argv",
    [
        ["features", "describe", "--dictionary", "D", "--out", "/proc/cat.sqlite"],
        ["circuit", "--prompt", "hi", "--transcoders", "T", "--out", "/sys/kernel/graphs"],
        ["monitor", "--prompts", "hi", "--probes", "P", "--log", "/proc/alerts.jsonl"],
    ],
    ids=["describe /proc", "circuit /sys", "monitor /proc"],
)
def test_a_system_folder_is_refused_before_any_work(argv, capsys):
    t0 = time.perf_counter()
    assert "is not writable" in _one_error(capsys, argv)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--site", "s", "--out", "o", "--k", "abc"], r"--k: invalid literal .*'abc'"),
        (["train", "--site", "s", "--out", "o", "--kk", "3"], r"Unrecognized options: --kk"),
        (["train", "--site", "s", "--out", "o", "--k"], r"Missing value for argument '--k'"),
        (["train"], r"Missing from aimri train: --site, --out"),
        (["steer", "--strengths", "inf"], r"--strengths inf: every strength must be a finite"),
    ],
    ids=["--k abc", "unknown flag", "missing value", "missing flags", "steer inf"],
)
def test_a_flag_the_parser_refuses_is_one_line(argv, message, capsys):
    err = _one_error(capsys, argv)
    assert re.search(message, err), err


def test_a_model_of_unknown_type_is_one_line(world, capsys):
    bad = world.root / "unknown-type"
    shutil.copytree(world.model, bad)
    (bad / "config.json").write_text(
        json.dumps({**json.loads((bad / "config.json").read_text()), "model_type": "no-such-arch"})
    )
    err = _one_error(capsys, ["sites", "--model.spec", str(bad)])
    assert "model_type" in err and "--model.spec" in err


def test_a_local_folder_with_a_broken_config_is_not_called_unreachable(world, capsys):
    bad = world.root / "broken-config"
    shutil.copytree(world.model, bad)
    (bad / "config.json").write_text("{")
    err = _one_error(capsys, ["sites", "--model.spec", str(bad)])
    assert "neither cached nor reachable" not in err and "is damaged or missing" in err


def test_a_lock_that_is_a_folder_gets_its_own_fix(world, capsys):
    out = world.root / "lock-folder"
    (out / LOCK).mkdir(parents=True)
    err = _one_error(capsys, world.train(out))
    assert "is a folder, but aimri keeps its writer lock file there" in err
    (out / LOCK).rmdir()  # the fix
    assert main(world.train(out)) == 0


def test_training_on_a_store_being_collected_says_so(world, capsys):
    with writer_lock(world.store, what="activation store"):
        err = _one_error(capsys, world.train(world.root / "d-busy"))
    assert "is being collected right now" in err and "interrupted" not in err


def test_a_k_wider_than_the_dictionary_names_the_fix(world, capsys):
    err = _one_error(capsys, world.train(world.root / "d-wide", "--k", "100000"))
    assert "lower --k" in err and "--expansion" in err
