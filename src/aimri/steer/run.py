"""The steer stage: `steer(SteerConfig)` builds the edit the config names and sweeps it.

- `--dictionary D --feature F --mode clamp`: clamp F to strength × its maximum activation, the
  maximum measured on a sample of the corpus (`feature_max`, BOS excluded);
- `--mode ablate`: clamp F to 0 (one point; strengths are ignored);
- `--mode add`: add F's decoder row (or `--direction FILE` at `--site`), strength in multiples
  of the site's mean activation norm on the neutral texts (`site_norm`).
The concept is `--concept`, else the words the edit's direction promotes most through the
unembedding (an unlabelled feature's best self-description). Not here: the CLI's printing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from aimri._io import read_safetensors
from aimri.config import CorpusConfig, SteerConfig
from aimri.corpus.contexts import iter_contexts
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.features.effects import logit_effects
from aimri.model.adapter import Model
from aimri.steer.directions import site_norm
from aimri.steer.edits import AblateFeature, AddDirection, ClampFeature, Edit, feature_activation
from aimri.steer.sweep import NEUTRAL_TEXTS, SweepResult, TextEmbedder, sweep

log = logging.getLogger(__name__)
MAX_SAMPLE = CorpusConfig(max_tokens=16384)


def steer(
    cfg: SteerConfig, *, model: Model | None = None, embedder: TextEmbedder | None = None
) -> SweepResult:
    """Sweep the edit `cfg` describes over its strengths (see the module docstring)."""
    if model is None:
        from aimri.model.load import load_model

        model = load_model(cfg.model)
    dictionary, direction, site = _edit_source(cfg, model)
    if cfg.mode == "add":
        scale = site_norm(model, site, NEUTRAL_TEXTS)
        log.info("one unit of strength = the mean norm of '%s': %.3f", site, scale)

        def make_edit(s: float) -> Edit:
            return AddDirection(site, direction, s, scale=scale)

    elif dictionary is None or cfg.feature is None:
        raise AimriError(f"--mode {cfg.mode} needs --dictionary and --feature")
    elif cfg.mode == "clamp":
        top = feature_max(model, dictionary, cfg.feature)
        log.info("feature %d: maximum activation %.3f on the sample", cfg.feature, top)
        d, f = dictionary, cfg.feature

        def make_edit(s: float) -> Edit:
            return ClampFeature(d, f, s * top)

    else:
        d, f = dictionary, cfg.feature

        def make_edit(s: float) -> Edit:
            return AblateFeature(d, f)

    strengths = (1.0,) if cfg.mode == "ablate" else cfg.strengths
    return sweep(
        model,
        make_edit,
        strengths,
        cfg.prompts,
        concept=cfg.concept or promoted_words(model, direction),
        neutral_texts=NEUTRAL_TEXTS,
        feature=None if dictionary is None or cfg.feature is None else (dictionary, cfg.feature),
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        embedder=embedder,
    )


def _edit_source(cfg: SteerConfig, model: Model) -> tuple[Dictionary | None, Tensor, str]:
    """(dictionary or None, the direction the edit writes, the site it writes at)."""
    if (cfg.dictionary is None) == (cfg.direction is None):
        raise AimriError(
            "name what steers: either --dictionary with --feature, or --direction with --site"
        )
    if cfg.direction is not None:
        if cfg.mode != "add" or not cfg.site:
            raise AimriError("--direction needs --mode add and the --site to add it at")
        return None, _load_direction(cfg.direction), cfg.site
    assert cfg.dictionary is not None
    d = load_dictionary(cfg.dictionary).to(model.device)
    if cfg.feature is None or not 0 <= cfg.feature < d.cfg.d_sae:
        raise AimriError(
            f"--feature must be a feature index of the dictionary (0-{d.cfg.d_sae - 1})"
        )
    site = d.cfg.site_out if d.cfg.transcoder else d.cfg.site
    return d, d.W_dec[cfg.feature].detach().float(), site


def _load_direction(path: Path) -> Tensor:
    if not path.is_file():
        raise AimriError(f"direction file '{path}' does not exist: save one with safetensors")
    tensors = read_safetensors(path, "save the vector as save_file({'direction': v}, path)")
    if "direction" not in tensors:
        raise AimriError(
            f"'{path}' holds {sorted(tensors)} but no tensor 'direction': save the vector "
            "as save_file({'direction': v}, path)"
        )
    return tensors["direction"].float()


@torch.no_grad()
def feature_max(
    model: Model, dictionary: Dictionary, feature: int, corpus: CorpusConfig = MAX_SAMPLE
) -> float:
    """Largest activation of `feature` over the corpus's contexts (BOS excluded)."""
    site = dictionary.cfg.site
    top = 0.0
    contexts = iter_contexts(model.tokenizer, corpus)
    while batch := [c for _, c in zip(range(16), contexts, strict=False)]:
        acts = model.run(torch.stack(batch), read=[site], logits=False).acts[site]
        top = max(top, float(feature_activation(dictionary, acts[:, 1:], feature).max()))
    if top <= 0:
        raise AimriError(
            f"feature {feature} never fires on {corpus.max_tokens} tokens of '{corpus.source}', "
            "so 'multiples of its maximum' mean nothing: pick a live feature, or use --mode add"
        )
    return top


def promoted_words(model: Model, direction: Tensor, k: int = 5) -> str:
    """The k tokens the direction raises most through the final norm and unembedding."""
    ids = logit_effects(model, direction[None].to(model.device), k).promoted[0].tolist()
    words = [model.tokenizer.decode([i]).strip() for i in ids]
    return ", ".join(dict.fromkeys(w for w in words if w)) or "(no concept)"
