"""Bad input never destroys data and never shows a traceback (issue 16).

One table: each row is a command a user might type with a mistake in it, run through the CLI's
`main` in this process (one row also through the real entry point). Every row must end with a
non-zero exit and exactly one `aimri: error:` line that matches the row's message, no
traceback, and every file that existed before the command byte-identical after it. Rows that
a second, corrected command must then fix (a failed collect, a damaged store) run that too.
The setting: a tiny random gpt2, a 1,024-token store and a small SAE trained on it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aimri.cli import main
from aimri.cli.outputs import absolute_inputs
from aimri.config import ScanConfig
from aimri.outputs import writer_lock
from aimri.report.render import render_report
from aimri.scanner.stages import SECTIONS

SITE = "blocks.1.hook_resid_post"


@dataclass(frozen=True)
class World:
    root: Path
    model: Path
    corpus: Path
    store: Path
    dictionary: Path
    saelens: Path
    """A SAELens-layout copy of the dictionary: cfg.json + weights, no checkpoint."""
    notes: Path
    """A user's text file."""
    readonly: Path | None
    """An immutable folder (chattr +i), None where that cannot be made."""

    def collect(self, out: Path | None = None, *more: str) -> list[str]:
        return [
            *("collect", "--out", str(out or self.store), "--model.spec", str(self.model)),
            *("--model.device", "cpu", "--corpus.source", str(self.corpus)),
            *("--corpus.ctx-len", "16", "--corpus.max-tokens", "1024", "--sites", SITE),
            *more,
        ]

    def train(self, out: Path, *more: str) -> list[str]:
        return [
            *("train", "--store", str(self.store), "--site", SITE, "--out", str(out)),
            *("--expansion", "2", "--k", "4", "--optim.batch-size", "64", "--device", "cpu"),
            *more,
        ]

    def describe(self, dictionary: Path, out: Path, *more: str) -> list[str]:
        return [
            *("features", "describe", "--dictionary", str(dictionary), "--out", str(out)),
            *("--model.spec", str(self.model), "--model.device", "cpu", "--store", str(self.store)),
            *("--n-features", "2", "--no-baselines", "--explainers", "tokens", "--scorers", "rule"),
            *more,
        ]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def assert_untouched(before: dict[Path, str], root: Path) -> None:
    after = snapshot(root)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or removed: {changed}"


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> Iterator[World]:
    from tests.conftest import TRAINING_TEXT

    root = tmp_path_factory.mktemp("bad-input")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"Document {i}: " + " ".join([TRAINING_TEXT[i % 5]] * 4) for i in range(40))
    )
    notes = root / "notes.txt"
    notes.write_text("my notes, which no command may replace\n")
    (root / "readonly").mkdir()
    made = subprocess.run(["chattr", "+i", str(root / "readonly")], capture_output=True)
    readonly = root / "readonly" if made.returncode == 0 else None
    w = World(
        root, tiny_model_dir("gpt2"), corpus, root / "store", root / "dict", root / "saelens",
        notes, readonly,
    )  # fmt: skip
    assert main(w.collect()) == 0
    assert main(w.train(w.dictionary)) == 0
    w.saelens.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy(w.dictionary / name, w.saelens / name)
    yield w
    if readonly is not None:
        subprocess.run(["chattr", "-i", str(readonly)], check=True)


def _file(w: World) -> Path:
    return w.notes


def _ro(w: World, name: str) -> Path:
    if w.readonly is None:
        pytest.skip("chattr +i is not available here (needs root on ext4 or similar)")
    return w.readonly / name


def _broken_dict(w: World, name: str, edit: Callable[[Path], object], ours: bool = False) -> Path:
    """A copy of the dictionary (SAELens layout, or ours with aimri.json) with one defect."""
    path = w.root / "broken" / name
    if not path.exists():
        path.mkdir(parents=True)
        names = ["cfg.json", "sae_weights.safetensors"] + (["aimri.json"] if ours else [])
        for n in names:
            shutil.copy(w.dictionary / n, path / n)
        edit(path)
    return path


def _edit_json(file: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / file).write_text(json.dumps(change(json.loads((path / file).read_text()))))

    return edit


def _truncate(path: Path) -> None:
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _flip_last_byte(path: Path) -> None:
    weights = path / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x40
    weights.write_bytes(bytes(data))


def _bad_manifest_store(w: World) -> Path:
    path = w.root / "stores" / "no-identity"
    if not path.exists():
        shutil.copytree(w.store, path)
        manifest = json.loads((path / "manifest.json").read_text())
        del manifest["identity"]
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _broken_checkpoint(w: World, damage: str) -> Path:
    """A finished training run whose checkpoint was kept (rerunning it resumes), damaged."""
    path = w.root / "checkpoints" / damage
    if not path.exists():
        assert main(w.train(path, "--keep-checkpoint")) == 0
        ckpt = path / "checkpoint"
        if damage == "truncated":
            (ckpt / "state.safetensors").write_bytes((ckpt / "state.safetensors").read_bytes()[:99])
        else:
            (ckpt / "state.json").write_text("[]")
    return path


def _truncated_gguf(w: World) -> Path:
    path = w.root / "truncated.gguf"
    # A GGUF v3 header that promises 5 tensors and 1 key, and then ends.
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + b"\x01")
    return path


@dataclass(frozen=True)
class Row:
    name: str
    argv: Callable[[World], list[str]]
    message: str
    """A regular expression the one error line must match."""


ROWS = [
    # --- silent data loss ----------------------------------------------------------------
    Row(
        "describe --out <a text file>",
        lambda w: w.describe(w.dictionary, w.notes),
        r"--out '.*notes.txt' already holds a file, and this command would write a catalog "
        r"there: nothing was changed; choose another --out, or pass --overwrite",
    ),
    Row(
        "describe --out <a dictionary's weights>",
        lambda w: w.describe(w.dictionary, w.dictionary / "sae_weights.safetensors"),
        r"already holds a tensor file, and this command would write a catalog there",
    ),
    Row(
        "train --out <a SAELens dictionary without checkpoint>",
        lambda w: w.train(w.saelens),
        r"--out '.*saelens' already holds a dictionary, which this command would replace: "
        r"nothing was changed; choose another --out, or pass --overwrite",
    ),
    Row(
        "train --out <the activation store>",
        lambda w: w.train(w.store),
        r"--out '.*store' is the activation store being read \(--store\)",
    ),
    Row(
        "train --out <another activation store>",
        lambda w: [*w.train(w.saelens), "--store", str(w.root / "other"), "--out", str(w.store)],
        r"already holds an activation store, and this command would write a dictionary there",
    ),
    # --- flags refused at parse time --------------------------------------------------------
    Row(
        "collect --batch-size 0",
        lambda w: w.collect(None, "--batch-size", "0"),
        r"--batch-size 0: a forward pass needs at least 1 context",
    ),
    Row(
        "collect --corpus.max-tokens 10",
        lambda w: w.collect(None, "--corpus.max-tokens", "10"),
        r"max_tokens=10 is smaller than one context \(ctx_len=16\): raise --corpus.max-tokens",
    ),
    Row("collect --sites <none>", lambda w: w.collect(None, "--sites"), r"no sites given"),
    Row(
        "collect --corpus.ctx-len 1",
        lambda w: w.collect(None, "--corpus.ctx-len", "1"),
        r"corpus ctx_len=1 is too small: a context needs at least 2 tokens; raise --corpus.ctx-len",
    ),
    Row(
        "describe --llm.concurrency 0",
        lambda w: w.describe(w.dictionary, w.root / "c.sqlite", "--llm.concurrency", "0"),
        r"--llm.concurrency 0 / --llm.max-retries 4: requests in flight must be at least 1",
    ),
    Row(
        "audit --k 0",
        lambda w: ["audit", str(w.model), str(w.model), "--k", "0"],
        r"k=0: ask for at least one hypothesis",
    ),
    Row(
        "describe --n-features -5",
        lambda w: [*w.describe(w.dictionary, w.root / "c.sqlite"), "--n-features", "-5"],
        r"--n-features -5: give a positive number of features, or leave it out",
    ),
    Row(
        "features search --limit -1",
        lambda w: ["features", "search", "dogs", "--catalog", str(w.root / "c"), "--limit", "-1"],
        r"--limit -1: show at least 1 match",
    ),
    Row(
        "train --expansion 0",
        lambda w: w.train(w.root / "d0", "--expansion", "0"),
        r"--expansion 0: it must be at least 1",
    ),
    Row(
        "train --optim.lr -1",
        lambda w: w.train(w.root / "d0", "--optim.lr", "-1"),
        r"--optim.lr -1.0: a learning rate must be positive",
    ),
    Row(
        "eval --batch-size 0",
        lambda w: ["eval", "--dictionary", str(w.dictionary), "--batch-size", "0"],
        r"--batch-size 0: it must be at least 1",
    ),
    Row(
        "steer --max-new-tokens -1",
        lambda w: [
            "steer",
            "--dictionary",
            str(w.dictionary),
            "--feature",
            "1",
            "--max-new-tokens",
            "-1",
        ],
        r"--max-new-tokens -1: it must be at least 1",
    ),
    Row(
        "features explain-text --top 0",
        lambda w: ["features", "explain-text", "hi", "--catalog", str(w.root / "c"), "--top", "0"],
        r"--top 0: it must be at least 1",
    ),
    Row(
        "circuit --node-threshold 2",
        lambda w: [
            "circuit",
            "--prompt",
            "hi",
            "--transcoders",
            str(w.root),
            "--node-threshold",
            "2",
        ],
        r"--node-threshold 2.0: it is a share, in \(0, 1\]",
    ),
    # --- unwritable outputs: a file where a folder goes, a read-only folder ----------------
    *(
        Row(f"{cmd} --out <a file>", argv, r"is a file, but a folder is written there")
        for cmd, argv in [
            ("collect", lambda w: w.collect(_file(w))),
            ("train", lambda w: w.train(_file(w))),
            ("probe", lambda w: ["probe", "--out", str(_file(w))]),
            ("scan", lambda w: ["scan", "--runs-dir", str(_file(w))]),
            ("plant", lambda w: ["plant", "--plant", "trigger", "--out", str(_file(w))]),
        ]
    ),
    Row(
        "plant --out <a dictionary>, before any fine-tuning",
        lambda w: ["plant", "--plant", "trigger", "--out", str(w.dictionary)],
        r"already holds a dictionary, and this command would write a model there: nothing was "
        r"changed; choose another --out, or pass --overwrite",
    ),
    Row(
        "train --store <a store with a damaged manifest>",
        lambda w: w.train(w.root / "d-bad-store", "--store", str(_bad_manifest_store(w))),
        r"manifest '.*manifest.json' is damaged \(fields missing or of the wrong type\): run the "
        r"same `aimri collect` command with --overwrite",
    ),
    Row(
        "features search --catalog <not a catalog>",
        lambda w: ["features", "search", "dogs", "--catalog", str(w.notes)],
        r"'.*notes.txt' is not an aimri catalog \(file is not a database\)",
    ),
    Row(
        "train resuming a truncated checkpoint",
        lambda w: w.train(_broken_checkpoint(w, "truncated")),
        r"state.safetensors' cannot be read as safetensors \(.*\): it is truncated or not a "
        r"tensor file; delete the checkpoint folder to start over",
    ),
    Row(
        "train resuming a checkpoint whose state.json is damaged",
        lambda w: w.train(_broken_checkpoint(w, "json")),
        r"training checkpoint '.*state.json' is damaged: delete the checkpoint folder",
    ),
    Row(
        "steer --direction <not a tensor file>",
        lambda w: [
            "steer",
            "--direction",
            str(w.notes),
            "--mode",
            "add",
            "--site",
            SITE,
            "--model.spec",
            str(w.model),
            "--model.device",
            "cpu",
        ],
        r"'.*notes.txt' cannot be read as safetensors \(.*\): it is truncated or not a tensor",
    ),
    Row(
        "describe --out <a folder>",
        lambda w: w.describe(w.dictionary, w.root),
        r"is a folder, but a file is written there: give a file's path",
    ),
    Row(
        "collect --out <below a file>",
        lambda w: w.collect(w.notes / "store"),
        r"cannot be created: '.*notes.txt' is a file, not a folder",
    ),
    *(
        Row(f"{cmd} --out <read-only>", argv, r"is not writable \('.*readonly' is read-only")
        for cmd, argv in [
            ("collect", lambda w: w.collect(_ro(w, "store"))),
            ("train", lambda w: w.train(_ro(w, "dict"))),
            ("describe", lambda w: w.describe(w.dictionary, _ro(w, "catalog.sqlite"))),
            ("probe", lambda w: ["probe", "--out", str(_ro(w, "probes"))]),
            ("scan", lambda w: ["scan", "--runs-dir", str(_ro(w, "runs"))]),
            ("plant", lambda w: ["plant", "--plant", "trigger", "--out", str(_ro(w, "m"))]),
        ]
    ),
    # --- loaders ------------------------------------------------------------------------------
    Row(
        "a truncated GGUF",
        lambda w: ["sites", "--model.spec", str(_truncated_gguf(w))],
        r"cannot read GGUF file '.*truncated.gguf' \(.*\): it is truncated, damaged",
    ),
    Row(
        "dictionary: truncated weights",
        lambda w: w.describe(_broken_dict(w, "truncated", _truncate), w.root / "c.sqlite"),
        r"sae_weights.safetensors' cannot be read as safetensors \(.*\): it is truncated",
    ),
    Row(
        "dictionary: cfg.json without d_in",
        lambda w: w.describe(
            _broken_dict(w, "no-d-in", _edit_json("cfg.json", lambda c: c.pop("d_in") and c)),
            w.root / "c.sqlite",
        ),
        r"cfg.json' lacks 'd_in': the file is incomplete",
    ),
    Row(
        "dictionary: cfg.json holds a list",
        lambda w: w.describe(
            _broken_dict(w, "list", _edit_json("cfg.json", lambda c: [c])), w.root / "c.sqlite"
        ),
        r"cfg.json' holds a list, not a SAELens config object",
    ),
    Row(
        "dictionary: a width that is not a whole number",
        lambda w: w.describe(
            _broken_dict(w, "width", _edit_json("cfg.json", lambda c: {**c, "d_sae": 64.5})),
            w.root / "c.sqlite",
        ),
        r"'d_sae' is 64.5, not a positive whole number",
    ),
    Row(
        "dictionary: aimri.json not JSON",
        lambda w: w.describe(
            _broken_dict(w, "json", lambda p: (p / "aimri.json").write_text("{"), ours=True),
            w.root / "c.sqlite",
        ),
        r"dictionary record '.*aimri.json' is not valid JSON \(.*\): the file is damaged; train "
        r"it again",
    ),
    Row(
        "dictionary: aimri.json without its config",
        lambda w: w.describe(
            _broken_dict(w, "nodict", _edit_json("aimri.json", lambda r: {"dict": 3}), True),
            w.root / "c.sqlite",
        ),
        r"aimri.json' has no 'dict' object",
    ),
    Row(
        "dictionary: aimri.json with a damaged config",
        lambda w: w.describe(
            _broken_dict(
                w, "baddict", _edit_json("aimri.json", lambda r: {"dict": {"x": 1}}), True
            ),
            w.root / "c.sqlite",
        ),
        r"aimri.json': its 'dict' object is damaged",
    ),
    Row(
        "dictionary: weights changed after saving (sha256)",
        lambda w: w.describe(_broken_dict(w, "sha", _flip_last_byte, True), w.root / "c.sqlite"),
        r"does not match the sha256 recorded in '.*aimri.json'",
    ),
    Row(
        "scan --dictionary <broken>, checked before any work",
        lambda w: [
            "scan",
            "--dictionary",
            str(w.root / "broken" / "list"),
            "--runs-dir",
            str(w.root / "runs"),
        ],
        r"cfg.json' holds a list",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(world, row, capsys, monkeypatch):
    monkeypatch.setenv("AIMRI_CACHE_DIR", str(world.root / "cache"))
    argv = row.argv(world)  # may build the broken input, which is part of "before"
    before = snapshot(world.root)
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, argv)
    assert rc != 0
    errors = [line for line in err.splitlines() if line.startswith("aimri: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].count("\n") == 0
    assert __import__("re").search(row.message, errors[0]), errors[0]
    assert time.perf_counter() - t0 < 30, "refused late"
    assert_untouched(before, world.root)


def test_the_real_entry_point_prints_one_line(world):
    """Through `python -m aimri.cli`: nothing on stderr but the one line, before any work."""
    for argv in (
        world.collect(None, "--batch-size", "0"),
        world.describe(world.dictionary, world.notes),
    ):
        before = snapshot(world.root)
        out = subprocess.run(
            [sys.executable, "-m", "aimri.cli", *argv], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aimri: error: "), out.stderr
        assert_untouched(before, world.root)


# --- recovery: the corrected command works -----------------------------------------------------


def _store_copy(w: World, name: str) -> Path:
    path = w.root / "stores" / name
    shutil.copytree(w.store, path)
    return path


def test_a_failed_collect_does_not_block_the_corrected_one(world, capsys):
    out = world.root / "stores" / "fresh"
    missing = [*world.collect(out), "--corpus.source", str(world.root / "missing.txt")]
    rc, _, err = _run(capsys, missing)
    assert rc == 2 and err.count("aimri: error:") == 1 and "missing.txt" in err
    rc, stdout, _ = _run(capsys, world.collect(out))
    assert rc == 0 and "1,024 tokens" in stdout


@pytest.mark.parametrize("damage", ["damaged manifest", "deleted manifest"])
def test_a_store_without_a_readable_manifest_is_rebuilt_as_the_error_says(world, capsys, damage):
    store = _store_copy(world, damage.replace(" ", "-"))
    if damage == "deleted manifest":
        (store / "manifest.json").unlink()
    else:
        (store / "manifest.json").write_text('{"kind": ')
    before = snapshot(store)
    rc, _, err = _run(capsys, world.collect(store))
    assert rc == 2 and err.count("aimri: error:") == 1 and "--overwrite" in err, err
    assert_untouched(before, store)
    rc, stdout, _ = _run(capsys, [*world.collect(store), "--overwrite"])  # the advice works
    assert rc == 0 and "1,024 tokens" in stdout
    fresh = json.loads((store / "manifest.json").read_text())
    assert (
        fresh["complete"]
        and fresh["shards"][0]["sha256"] == _manifest(world)["shards"][0]["sha256"]
    )


def _manifest(w: World) -> dict:
    return json.loads((w.store / "manifest.json").read_text())


def test_a_same_size_corrupt_shard_is_collected_again(world, capsys):
    store = _store_copy(world, "corrupt-shard")
    shard = store / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, stdout, _ = _run(capsys, world.collect(store))
    assert rc == 0 and "(0 reused" in stdout
    good = _manifest(world)["shards"][0]["sha256"]
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == good


def test_a_finished_training_run_says_so(world, capsys):
    rc, stdout, _ = _run(capsys, world.train(world.dictionary))
    assert rc == 0 and "already trained" in stdout and "nan" not in stdout.lower(), stdout


def test_two_writers_of_one_store_are_refused(world, capsys):
    before = snapshot(world.store)
    with writer_lock(world.store, what="activation store"):
        rc, _, err = _run(capsys, world.collect())
    assert rc == 2 and "is being written by another aimri process" in err, err
    assert_untouched(before, world.store)


# --- other defects -------------------------------------------------------------------------------


def test_a_relative_dictionary_is_read_from_where_the_command_was_typed(world, monkeypatch, capsys):
    monkeypatch.chdir(world.root)
    cfg = absolute_inputs(ScanConfig(dictionary=Path("dict"), runs_dir=Path("runs")))
    assert isinstance(cfg, ScanConfig) and cfg.dictionary == world.dictionary.resolve()
    # and it is opened before any work: a broken one is refused at once, by its full path
    broken = _broken_dict(world, "list", _edit_json("cfg.json", lambda c: [c]))
    relative = str(broken.relative_to(world.root))
    rc, _, err = _run(capsys, ["scan", "--dictionary", relative, "--runs-dir", "runs"])
    assert rc == 2 and f"'{broken.resolve() / 'cfg.json'}' holds a list" in err, err
    assert not (world.root / "runs").exists()


def test_an_unreachable_hub_fails_within_seconds(world, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    t0 = time.perf_counter()
    rc, _, err = _run(capsys, ["sites", "--model.spec", "nobody/no-such-model"])
    assert rc == 2 and "the hub (127.0.0.1) cannot be reached" in err, err
    assert time.perf_counter() - t0 < 10


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"error": "invalid api key"}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("endpoint", ["answers 401", "unreachable"])
def test_an_llm_endpoint_that_fails_every_call_is_an_error(world, capsys, endpoint):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    port = server.server_address[1]
    if endpoint == "unreachable":
        server.server_close()  # the port is free again: connections are refused
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    out = world.root / f"llm-{endpoint.replace(' ', '-')}.sqlite"
    argv = [
        *world.describe(world.dictionary, out),
        *("--explainers", "llm", "--llm.base-url", f"http://127.0.0.1:{port}/v1"),
        *("--llm.cache-dir", str(world.root / "llm-cache"), "--llm.max-retries", "1"),
    ]
    t0 = time.perf_counter()
    try:
        rc, _, err = _run(capsys, argv)
    finally:
        if endpoint != "unreachable":
            server.shutdown()
            server.server_close()
    assert rc == 2 and err.count("aimri: error:") == 1, err
    assert "calls to openai:default failed" in err and not out.exists()
    assert time.perf_counter() - t0 < 20


def test_a_right_to_left_override_shows_as_its_code_point(tmp_path):
    from tests.test_report import base_scan

    scan = base_scan()
    scan["stages"]["activations"]["sample_contexts"] = ["price: \u202e0001$"]
    html = render_report(scan, tmp_path / "report.html", SECTIONS).read_text()
    assert "\u202e" not in html and "⟨U+202E⟩0001$" in html


def test_a_run_that_fails_before_writing_leaves_no_folder(world, capsys):
    out = world.root / "never-written"
    rc, _, err = _run(capsys, world.train(out, "--store", str(_bad_manifest_store(world))))
    assert rc == 2 and "is damaged" in err
    assert not out.exists()  # its writer lock was taken, released and cleaned up
