"""The `aimri` command: a thin shell over the API, generated from the config dataclasses.

Each subcommand is one config class (see `aimri.config`); tyro turns its fields and docstrings
into flags and help, so the CLI and the API cannot drift. Heavy imports happen inside the
handlers, so `aimri --help` never imports torch. This package is the only code that prints.
`AimriError` is shown as one line; `--traceback` or AIMRI_TRACEBACK=1 shows the traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import tyro

from aimri.cli.checkup import CHECKUP_COMMANDS, dispatch_checkup, with_pair_positional
from aimri.cli.outputs import WRITES as _WRITES
from aimri.cli.outputs import absolute_inputs as _absolute_inputs
from aimri.cli.outputs import check_inputs as _check_inputs
from aimri.cli.outputs import check_outputs as _check_outputs
from aimri.cli.outputs import declared_outputs as _declared_outputs
from aimri.cli.outputs import replace_outputs as _replace_outputs
from aimri.config import (
    CircuitConfig,
    CollectConfig,
    EvalConfig,
    ExplainTextConfig,
    FeaturesConfig,
    ModelConfig,
    ScanConfig,
    SearchConfig,
    SteerConfig,
    TrainConfig,
)
from aimri.config.export import ExportNeuronpediaConfig
from aimri.errors import AimriError


@dataclass(frozen=True, kw_only=True)
class SitesConfig:
    """List a model's sites (names to pass to --sites) and its shape."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pattern: str = "*"
    """Only sites matching this glob, e.g. 'blocks.3.*'."""


T = TypeVar("T")

COMMANDS = {
    "scan": ScanConfig,
    "collect": CollectConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "steer": SteerConfig,
    "circuit": CircuitConfig,
    "sites": SitesConfig,
    **CHECKUP_COMMANDS,
}
# Commands with subcommands of their own: `aimri features search "…"`.
GROUPS = {
    "features": {
        "describe": FeaturesConfig,
        "search": SearchConfig,
        "explain-text": ExplainTextConfig,
    },
    "export": {"neuronpedia": ExportNeuronpediaConfig},
}
# A first bare argument of these subcommands fills this field: `aimri features search dogs`.
POSITIONAL = {"search": "--query", "explain-text": "--text", "neuronpedia": "--run"}
# What each command writes (cli/outputs.py); `sites` only prints.
WRITES = {**_WRITES, SitesConfig: lambda cfg: ()}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = os.environ.get("AIMRI_TRACEBACK") == "1"
    if "--traceback" in args:
        args.remove("--traceback")
        show_traceback = True
    try:
        cfg = _parse(args)  # a flag refused by a config's __post_init__ raises AimriError here
        _setup_logging()
        cfg = _absolute_inputs(cfg)
        outputs = _declared_outputs(cfg, WRITES)
        _check_outputs(cfg, outputs)
        _check_inputs(cfg)
        _replace_outputs(cfg, outputs)  # only with --overwrite, and only after every check
        _dispatch(cfg)
    except AimriError as e:
        if show_traceback:
            raise
        print(f"aimri: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the system refused: say which file, in one line
        if show_traceback:
            raise
        where = f" '{e.filename}'" if e.filename else ""
        print(
            f"aimri: error: {e.strerror or e}{where}: check that the path exists and is "
            "writable, then run the same command again (--traceback shows where it happened)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("aimri: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _parse(args: list[str]) -> object:
    """The config `args` describe. tyro's errors (a value of the wrong type, an unknown flag, a
    missing value) come back as one AimriError line instead of its boxed panel; --help still
    prints and exits as tyro does."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = _parse_with_tyro(args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AimriError(_parse_error(err.getvalue(), args)) from None
        sys.stderr.write(err.getvalue())
        raise
    sys.stderr.write(err.getvalue())  # warnings, if any
    return cfg


def _parse_error(panel: str, args: list[str]) -> str:
    """tyro's error panel as one sentence: its title, each section's text with the flags listed
    under it (their help texts dropped), and where the help is."""
    unboxed = (re.sub(r"^[│╭╰]\s?|\s*[│╮╯]$", "", line.rstrip()) for line in panel.splitlines())
    lines = [line for line in unboxed if line.strip()]
    title = lines[0].strip("─ ").lower() if lines else "cannot read the command line"
    sections: list[list[str]] = [[]]
    for line in lines[1:]:
        if set(line.strip()) <= set("-─"):
            sections.append([])
        else:
            sections[-1].append(line)
    parts = [_section_text(s) for s in sections if s and not s[0].strip().startswith(_SKIPPED)]
    command = " ".join(a for a in args[:2] if a in COMMANDS or a in GROUPS or _in_group(args, a))
    detail = "; ".join(p for p in parts if p) or "the command line cannot be read"
    if detail.lower().startswith(title):  # "unrecognized options: Unrecognized options: …"
        return f"{detail}; see `aimri {command + ' ' if command else ''}--help` for the flags"
    return f"{title}: {detail}; see `aimri {command + ' ' if command else ''}--help` for the flags"


_SKIPPED = ("For full helptext", "Argument helptext")


def _in_group(args: list[str], arg: str) -> bool:
    return bool(args) and args[0] in GROUPS and arg in GROUPS[args[0]]


def _section_text(section: list[str]) -> str:
    """A panel section's head (with its wrapped continuation) and the first word of each entry
    indented under it: `Missing from aimri train: --site, --out`."""
    depth = [len(line) - len(line.lstrip()) for line in section]
    head = " ".join(line.strip() for line, d in zip(section, depth, strict=True) if d == depth[0])
    entry = min((d for d in depth if d > depth[0]), default=None)
    names = [line.split()[0] for line, d in zip(section, depth, strict=True) if d == entry]
    return f"{head} {', '.join(dict.fromkeys(names))}" if names else head


def _parse_with_tyro(args: list[str]) -> object:
    if args and args[0] in GROUPS:
        group, rest = args[0], args[1:]
        if len(rest) >= 2 and rest[0] in POSITIONAL and not rest[1].startswith("-"):
            rest = [rest[0], POSITIONAL[rest[0]], *rest[1:]]
        return tyro.extras.subcommand_cli_from_dict(
            GROUPS[group],  # type: ignore[arg-type]
            args=rest,
            prog=f"aimri {group}",
            description=f"aimri {group}: " + _GROUP_HELP[group],
        )
    commands = {**COMMANDS, **{g: _GROUP_CLASS.get(g, _GroupHelp) for g in GROUPS}}
    return tyro.extras.subcommand_cli_from_dict(
        commands,  # type: ignore[arg-type]
        args=with_pair_positional(args),
        prog="aimri",
        description="aimri: an MRI for AI models. Add --traceback to any command for full errors.",
    )


_GROUP_HELP = {
    "features": "describe a dictionary's features (statistics, labels with scores, catalog), "
    "search the catalog, see which features fire on a text. Run `aimri features <command> --help`.",
    "export": "write a run's graphs, features and dictionary for other tools: `aimri export "
    "neuronpedia RUN --out DIR [--upload]`. Run `aimri export neuronpedia --help`.",
}


@dataclass(frozen=True)
class _GroupHelp:
    """Describe, search and explain features: `aimri features describe|search|explain-text`."""


@dataclass(frozen=True)
class _ExportHelp:
    """Export a run for other tools: `aimri export neuronpedia RUN --out DIR [--upload]`."""


_GROUP_CLASS: dict[str, type] = {"export": _ExportHelp}


def _dispatch(cfg: object) -> None:
    if isinstance(cfg, ScanConfig):
        from aimri.scanner.run import scan

        r = scan(cfg)
        print(f"scan complete in {r.seconds:.0f}s: {r.run_dir}")
        print(f"report: {r.report.resolve()}")
    elif isinstance(cfg, CollectConfig):
        from aimri.store.collect import collect

        _on_all_ranks(
            lambda: collect(cfg),  # which holds the store's writer lock itself
            lambda c: (
                f"{c.n_tokens:,} tokens in {c.n_shards} shard(s) at {c.path} "
                f"({c.resumed_shards} reused; {c.tokens_per_second:,.0f} tokens/s on this rank)"
            ),
        )
    elif isinstance(cfg, TrainConfig):
        from aimri.dicts.train import train_many

        if cfg.cross_layer:
            from aimri.dicts.clt_train import train_clt as train_many
        _on_all_ranks(
            _locked(cfg.out, "dictionary", lambda: train_many(cfg)),
            lambda results: "\n".join(map(_describe_training, results)),
        )
    elif isinstance(cfg, EvalConfig):
        _print_eval(cfg)
    elif isinstance(cfg, SitesConfig):
        _print_sites(cfg)
    elif isinstance(cfg, FeaturesConfig | SearchConfig | ExplainTextConfig):
        from aimri.cli.features import dispatch_features

        dispatch_features(cfg)
    elif isinstance(cfg, SteerConfig):
        from aimri.cli.features import print_steering

        print_steering(cfg)
    elif isinstance(cfg, CircuitConfig):
        from aimri.cli.features import print_circuit

        print_circuit(cfg)
    elif isinstance(cfg, ExportNeuronpediaConfig):
        from aimri.cli.export import print_export

        print_export(cfg)
    elif isinstance(cfg, tuple(CHECKUP_COMMANDS.values())):
        dispatch_checkup(cfg)
    else:  # pragma: no cover - tyro only returns the classes above
        raise AssertionError(type(cfg))


def _describe_training(t: object) -> str:
    from aimri.dicts.train import TrainResult

    assert isinstance(t, TrainResult)
    if t.resumed_from_step == t.steps and math.isnan(t.fvu):  # nothing was left to train
        return f"already trained ({t.steps} steps, {t.tokens:,} tokens): {_logged_fit(t.path)} → {t.path}"
    resumed = f"; resumed at step {t.resumed_from_step}" if t.resumed_from_step else ""
    return (
        f"trained {t.steps} steps ({t.tokens:,} tokens, {t.tokens_per_second:,.0f} tokens/s{resumed}): "
        f"FVU {t.fvu:.3f}, L0 {t.l0:.1f}, dead {100 * t.dead_fraction:.1f}% → {t.path}"
    )


def _logged_fit(path: Path) -> str:
    """The last logged FVU and L0 of a finished run (its metrics.jsonl)."""
    log = path / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    if not lines:
        return "no metrics logged"
    row = json.loads(lines[-1])
    return f"FVU {row['fvu']:.3f}, L0 {row['l0']:.1f} at its last step"


def _locked(out: Path, what: str, job: Callable[[], T]) -> Callable[[], T]:
    """`job` run while holding the writer lock of `out` (rank 0 only under torchrun)."""
    from aimri.outputs import writer_lock

    def run() -> T:
        with writer_lock(out, what=what, enabled=os.environ.get("RANK", "0") == "0"):
            return job()

    return run


def _on_all_ranks(job: Callable[[], T], describe: Callable[[T], str]) -> None:
    """Run a job that may run under torchrun; rank 0 prints; the process group is closed."""
    from aimri.distributed import shutdown, world

    try:
        result = job()
        if world().rank == 0:
            print(describe(result))
    finally:
        shutdown()


def _print_eval(cfg: EvalConfig) -> None:
    from aimri.dicts.evaluate import evaluate

    r = evaluate(cfg)
    rows = {"dictionary": r.metrics, **r.baselines}
    print(f"{'':<12}{'FVU':>8}{'L0':>8}{'CE loss':>10}{'recovered':>11}{'KL':>9}")
    for name, m in rows.items():
        perf = m["model_performance_preservation"]
        print(
            f"{name:<12}{m['reconstruction_quality']['fvu']:>8.3f}{m['sparsity']['l0']:>8.1f}"
            f"{perf['ce_loss_with_sae']:>10.3f}{perf['ce_loss_score']:>11.3f}"
            f"{m['model_behavior_preservation']['kl_div_with_sae']:>9.3f}"
        )
    clean = r.metrics["model_performance_preservation"]
    print(
        f"clean CE {clean['ce_loss_without_sae']:.3f}, zero-ablated CE {clean['ce_loss_with_ablation']:.3f}"
    )
    print(f"metrics: {cfg.dictionary / 'metrics.json'}")


def _print_sites(cfg: SitesConfig) -> None:
    from aimri.model.load import load_model

    model = load_model(cfg.model)
    i = model.info
    print(
        f"{i.spec}: {i.family}, {i.n_layers} layers, d_model {i.d_model}, d_mlp {i.d_mlp}, "
        f"{i.n_heads} heads, vocab {i.vocab_size:,}, {i.n_params:,} parameters"
    )
    for site in model.expand_sites([cfg.pattern]):
        width = (
            "[head, query, key]" if site.endswith("hook_pattern") else str(model.site_width(site))
        )
        print(f"  {site:<34} {width}")


def _setup_logging() -> None:
    level = os.environ.get("AIMRI_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("transformers", "accelerate", "gguf", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
