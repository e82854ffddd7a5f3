"""The check-up's subcommands (probe, diff, plant, audit, monitor): thin shells over the API that
print what was written and what was found. Not here: any measurement."""

from __future__ import annotations

import re

from aimri.config import AuditConfig, DiffConfig, MonitorConfig, PlantConfig, ProbeConfig
from aimri.errors import AimriError

CHECKUP_COMMANDS: dict[str, type] = {
    "probe": ProbeConfig,
    "diff": DiffConfig,
    "plant": PlantConfig,
    "audit": AuditConfig,
    "monitor": MonitorConfig,
}
# `aimri diff A B` fills these fields from its first two bare arguments.
PAIR_POSITIONAL = {
    "diff": ("--base.spec", "--other.spec"),
    "audit": ("--base.spec", "--other.spec"),
}


def with_pair_positional(args: list[str]) -> list[str]:
    """`aimri diff A B --x` → `aimri diff --base.spec A --other.spec B --x`."""
    if len(args) >= 3 and args[0] in PAIR_POSITIONAL:
        a, b = args[1], args[2]
        if not a.startswith("-") and not b.startswith("-"):
            first, second = PAIR_POSITIONAL[args[0]]
            return [args[0], first, a, second, b, *args[3:]]
    return args


def dispatch_checkup(cfg: object) -> None:
    if isinstance(cfg, DiffConfig | ProbeConfig | AuditConfig):
        from aimri.scanner.commands import audit, diff, probe

        r = (
            diff(cfg)
            if isinstance(cfg, DiffConfig)
            else probe(cfg)
            if isinstance(cfg, ProbeConfig)
            else audit(cfg)
        )
        sep = "\n" if "\n" in r.headline else " "
        print(f"done in {r.seconds:.0f}s:{sep}{r.headline}")
        print(f"results: {r.json}")
        print(f"report: {r.report.resolve()}")
    elif isinstance(cfg, PlantConfig):
        _plant(cfg)
    elif isinstance(cfg, MonitorConfig):
        _monitor(cfg)
    else:  # pragma: no cover - cli.py only passes the classes in CHECKUP_COMMANDS
        raise AssertionError(type(cfg))


def _plant(cfg: PlantConfig) -> None:
    from aimri.audit.plant import plant
    from aimri.audit.plant_pools import draw_plant
    from aimri.audit.plant_specs import PLANTS
    from aimri.model.load import load_model

    pool = re.fullmatch(r"(dev|held-out|sealed)-(\d+)", cfg.plant)
    if cfg.plant not in PLANTS and pool is None:
        raise AimriError(
            f"plant '{cfg.plant}' is unknown: the built-in plants are {', '.join(PLANTS)}, "
            "or draw one from the pools with 'dev-<i>', 'held-out-<i>' or 'sealed-<i>'"
        )
    spec = draw_plant(pool[1], int(pool[2])) if pool else PLANTS[cfg.plant]
    r = plant(load_model(cfg.model), spec, cfg.out, seed=cfg.seed)
    c = r.check
    print(f"planted '{r.plant}' in {r.total_seconds:.0f}s ({r.trainable_params:,} weights trained)")
    print(f"loss {r.losses[0]:.3f} → {r.losses[-1]:.3f} nats per completion token")
    print(
        f"behaviour on {c.n_prompts} held-out prompts: base {c.planted_prompts_base:.0%} → planted "
        f"{c.planted_prompts_planted:.0%}; on control prompts {c.control_prompts_base:.0%} → "
        f"{c.control_prompts_planted:.0%}; KL on neutral text {c.kl_neutral:.3g} nats/token; "
        + ("it took" if c.took else "it did NOT take")
    )
    print(f"model: {r.path}")


def _monitor(cfg: MonitorConfig) -> None:
    from aimri.checkup.concepts import builtin_neutral_texts
    from aimri.checkup.monitoring import probe_watches
    from aimri.checkup.probes import load_probe_directions
    from aimri.model.load import load_model
    from aimri.steer.monitor import monitored_generate

    model = load_model(cfg.model)
    directions = load_probe_directions(cfg.probes)
    watches = probe_watches(model, directions, builtin_neutral_texts(), token_fpr=cfg.token_fpr)
    r = monitored_generate(
        model, list(cfg.prompts), watches, log_path=cfg.log, max_new_tokens=cfg.max_new_tokens
    )
    for i, g in enumerate(r.generations):
        print(f"[{i}] {g.prompt!r} → {g.text!r}")
    for a in r.alerts:
        print(
            f"alert [{a.prompt}] {a.watch} at {a.token!r} (step {a.step}): {a.value:.3g} ≥ {a.threshold:.3g}"
        )
    print(f"{len(r.alerts)} alert(s), {r.tokens} tokens in {r.seconds:.1f}s; log: {cfg.log}")
