"""The CLI: quick help without torch, one-line errors, the same flags as the configs."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys

from aimri.cli import COMMANDS, GROUPS, main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aimri.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_help_does_not_import_torch():
    code = "import sys; from aimri.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("False"), out.stdout


def test_every_config_field_is_a_flag(capsys):
    commands = {(name,): cls for name, cls in COMMANDS.items()}
    commands |= {(g, name): cls for g, sub in GROUPS.items() for name, cls in sub.items()}
    for name, cls in commands.items():
        with contextlib.suppress(SystemExit):
            main([*name, "--help"])
        text = capsys.readouterr().out
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in text or f"{flag}." in text or f"--{f.name}." in text, (name, flag)


def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = run_cli(
        "collect", "--out", str(tmp_path / "x"), "--model.spec", str(tmp_path / "missing.gguf")
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("aimri: error: GGUF file")
    assert "Traceback" not in out.stderr
    verbose = run_cli(
        "collect",
        "--out",
        str(tmp_path / "x"),
        "--model.spec",
        str(tmp_path / "missing.gguf"),
        "--traceback",
    )
    assert "Traceback" in verbose.stderr and "AimriError" in verbose.stderr


def test_sites_lists_the_model(tiny_model_dir):
    out = run_cli("sites", "--model.spec", str(tiny_model_dir("gpt2")), "--pattern", "blocks.2.*")
    assert out.returncode == 0, out.stderr
    assert "gpt2, 3 layers, d_model 32" in out.stdout
    assert "blocks.2.hook_resid_post" in out.stdout and "blocks.1." not in out.stdout
