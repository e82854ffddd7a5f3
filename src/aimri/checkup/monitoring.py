"""Probe directions as watches for monitoring, with thresholds set per token.

`aimri probe` sets a direction's threshold on texts' mean activations; a monitor scores every
token, and single tokens spread much wider than means of many. So a watch's threshold here is
recalibrated: the (1 − `token_fpr`) quantile of the direction's per-token score on neutral text.
Not here: generating and alerting (`aimri.steer.monitor`), fitting the directions (`probes.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from aimri.checkup.probes import ProbeDirection
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.directions import token_activations
from aimri.steer.monitor import Watch

MIN_TOKENS = 200


def probe_watches(
    model: Model,
    directions: Mapping[str, ProbeDirection],
    neutral_texts: Sequence[str],
    *,
    token_fpr: float = 0.001,
) -> list[Watch]:
    """One watch per direction, alerting on at most `token_fpr` of neutral tokens."""
    if not 0 < token_fpr < 1:
        raise AimriError(f"token_fpr={token_fpr}: give a rate in (0, 1), e.g. 0.001")
    by_site: dict[str, torch.Tensor] = {}
    for site in sorted({p.site for p in directions.values()}):
        by_site[site] = torch.cat(token_activations(model, site, neutral_texts))  # [n, d]
    watches = []
    for name, p in directions.items():
        acts = by_site[p.site]
        if len(acts) < MIN_TOKENS:
            raise AimriError(
                f"{len(acts)} neutral tokens are too few to set a threshold at {token_fpr:g} "
                f"false positives per token: give at least {MIN_TOKENS} (more text)"
            )
        scores = acts @ p.direction.float()
        threshold = float(torch.quantile(scores, 1 - token_fpr))
        watches.append(Watch.of_direction(name, p.site, p.direction, threshold))
    return watches
