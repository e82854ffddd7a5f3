"""Probe directions become per-token watches whose thresholds hold their false-positive rate."""

from __future__ import annotations

import pytest
import torch

from aimri.checkup.concepts import builtin_neutral_texts
from aimri.checkup.monitoring import probe_watches
from aimri.checkup.probes import ProbeDirection
from aimri.errors import AimriError
from aimri.steer.directions import token_activations


def _direction(model, site="blocks.1.hook_resid_post"):
    u = torch.nn.functional.normalize(torch.randn(model.info.d_model), dim=0)
    return ProbeDirection("c", site, "diff_of_means", u, threshold=0.0, auroc=0.9)


def test_per_token_threshold_flags_the_asked_share_of_neutral_tokens(tiny_model):
    model = tiny_model("llama")
    torch.manual_seed(0)
    p = _direction(model)
    texts = builtin_neutral_texts()
    (w,) = probe_watches(model, {"c": p}, texts, token_fpr=0.01)
    scores = torch.cat(token_activations(model, p.site, texts)) @ p.direction
    share = float((scores >= w.threshold).float().mean())
    assert w.site == p.site and 0 < share <= 0.01 + 1 / len(scores)


def test_too_little_neutral_text_is_refused(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(AimriError, match="too few"):
        probe_watches(model, {"c": _direction(model)}, ["User: hi"], token_fpr=0.01)
