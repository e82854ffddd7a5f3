"""Site names: TransformerLens/SAELens hook names, parsing and glob expansion.

A site is a plain string such as `blocks.3.hook_resid_post`. This module knows names only;
where a site lives inside a torch module tree is the adapter's business.
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

from aimri.errors import AimriError

# Per-layer site kinds in the order a forward pass produces them.
SEQUENTIAL_KINDS = (
    "hook_resid_pre",
    "attn.hook_pattern",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "hook_mlp_out",
    "hook_resid_post",
)
# Parallel-residual blocks (GPT-NeoX, GPT-J) have no point between attention and MLP.
PARALLEL_KINDS = tuple(k for k in SEQUENTIAL_KINDS if k != "hook_resid_mid")
RESIDUAL_KINDS = frozenset({"hook_resid_pre", "hook_resid_mid", "hook_resid_post"})

_SITE_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class Site(NamedTuple):
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"


def parse_site(name: str) -> Site:
    m = _SITE_RE.match(name)
    if not m:
        raise AimriError(
            f"site '{name}' is not a site name: sites look like 'blocks.<layer>.<kind>', "
            f"e.g. 'blocks.3.hook_resid_post'; kinds: {', '.join(SEQUENTIAL_KINDS)}"
        )
    return Site(int(m.group(1)), m.group(2))


def all_sites(n_layers: int, parallel: bool) -> list[str]:
    kinds = PARALLEL_KINDS if parallel else SEQUENTIAL_KINDS
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds]


def expand_sites(patterns: tuple[str, ...] | list[str], valid: list[str]) -> list[str]:
    """Expand names and globs against `valid`, keeping forward-pass order and no duplicates."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [s for s in valid if fnmatch.fnmatchcase(s, pattern)]
        if not hits:
            raise AimriError(_unknown_site_message(pattern, valid))
        chosen.update(hits)
    return [s for s in valid if s in chosen]


def _unknown_site_message(pattern: str, valid: list[str]) -> str:
    n_layers = max(parse_site(s).layer for s in valid) + 1
    kinds = list(dict.fromkeys(parse_site(s).kind for s in valid))
    m = _SITE_RE.match(pattern)
    if m and m.group(1).isdigit() and int(m.group(1)) >= n_layers:
        reason = f"this model has {n_layers} layers (0-{n_layers - 1})"
    elif m and m.group(2) not in kinds and not any(c in m.group(2) for c in "*?["):
        reason = f"'{m.group(2)}' is not a site kind of this model (kinds: {', '.join(kinds)})"
    else:
        reason = f"it matches none of this model's sites (kinds: {', '.join(kinds)})"
    return (
        f"site '{pattern}' not found: {reason}; use e.g. 'blocks.*.hook_resid_post' for every "
        f"layer, or `aimri sites` to list all"
    )
