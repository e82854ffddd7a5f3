"""Edits of a model's computation: add a direction, clamp a dictionary feature, ablate one.

Each edit is a small frozen dataclass that becomes patch functions (tensor → tensor at a site)
for `Model.hooks`, the one mechanism that changes a forward pass. `steering(model, edits)`
attaches them around any code: `Model.run`, `model.hf.generate`, a custom loop.

- `AddDirection(site, direction, strength)`: x + strength·scale·unit(direction) at every edited
  position. `strength` is in units of `scale` (default 1.0: raw activation units); pass
  `scale=site_norm(model, site, texts)` to count it in multiples of the site's mean norm.
- `ClampFeature(dictionary, feature, value)`: x + (value − a_f(x))·W_dec[f], where a_f(x) is
  the feature's activation from the dictionary's encoder. The dictionary's error term
  (x − reconstruction) is kept, so clamping a feature to its own value is exactly the identity.
  Re-encoding the edited x gives exactly `value` when the feature was active and its encoder
  and decoder rows have unit inner product (TopK/ReLU: pre_f moves by (value − a)·W_enc[f]·W_dec[f]);
  for a trained dictionary it is close, and `sweep` measures it.
  Transcoders: a_f is computed from the input site (`cfg.site`, the MLP's input) and the edit
  writes at the output site (`cfg.site_out`, the MLP's output), which must come later in the
  forward pass.
- `AblateFeature(dictionary, feature)`: clamp to 0; it changes only positions where f fires.

Positions: `"all"` (default), `"prompt"` (positions before `prompt_len`) or `"generated"`
(positions from `prompt_len` on). A patch counts positions itself: a call with one position
continues the sequence it has seen (a KV-cache step); a call with several starts again at
position 0 (a prompt, or a forward without cache). That covers `generate` with and without
the cache; assisted or chunked decoding would break the count. Position 0 (BOS) is edited
like any other. Edits at one site apply in list order.

Not here: generation (`generate.py`), directions from data (`directions.py`), measurement
(`sweep.py`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, final

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model, PatchFn
from aimri.model.sites import parse_site

Positions = Literal["all", "prompt", "generated"]
POSITIONS = ("all", "prompt", "generated")


class Edit(ABC):
    """An edit of one forward pass; `patches` turns it into patch functions by site."""

    positions: Positions

    @abstractmethod
    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        """Site → patch function, restricted to `positions` (needs `prompt_len` unless "all")."""


@final
@dataclass(frozen=True, eq=False)
class AddDirection(Edit):
    """Add `strength · scale · unit(direction)` to the site's activation."""

    site: str
    direction: Tensor = field(repr=False)
    """[d_model] any length; only its direction counts."""
    strength: float
    scale: float = 1.0
    """Length of one unit of strength: 1.0 = raw activation units; `site_norm(...)` makes
    strength a multiple of the site's mean activation norm."""
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _check_positions(self.positions)
        d = self.direction
        if d.dim() != 1 or not bool(torch.isfinite(d).all()) or float(d.norm()) == 0.0:
            raise AimriError(
                f"AddDirection needs a finite, non-zero 1-D direction [d_model]; got shape "
                f"{tuple(d.shape)}: pass one vector, e.g. diff_of_means(...)"
            )

    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        _check_site(model, self.site, len(self.direction), "the direction")
        unit = self.direction.float() / self.direction.float().norm()
        delta = (self.strength * self.scale * unit).to(model.device, _dtype(model))

        def add(t: Tensor) -> Tensor:
            return t + delta

        return {self.site: _at_positions(add, self.positions, prompt_len)}


@final
@dataclass(frozen=True, eq=False)
class ClampFeature(Edit):
    """Set feature `feature` of `dictionary` to `value`, keeping the dictionary's error term."""

    dictionary: Dictionary = field(repr=False)
    feature: int
    value: float
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _check_positions(self.positions)
        n = self.dictionary.cfg.d_sae
        if not 0 <= self.feature < n:
            raise AimriError(
                f"feature {self.feature} is out of range: the dictionary has features 0-{n - 1}"
            )

    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        d = self.dictionary
        site_in, site_out = dictionary_sites(d, model)
        w = d.W_dec[self.feature].detach().to(model.device, _dtype(model))  # [d_out]
        if site_in == site_out:  # an SAE: read and write the same activation

            def clamp(t: Tensor) -> Tensor:
                return t + (self.value - feature_activation(d, t, self.feature))[..., None] * w

            return {site_in: _at_positions(clamp, self.positions, prompt_len)}
        # A transcoder: remember the input site's activation, write at the output site.
        seen: dict[str, Tensor] = {}

        def keep(t: Tensor) -> Tensor:
            seen["x"] = t
            return t

        def clamp_out(t: Tensor) -> Tensor:
            x = seen.pop("x")
            assert x.shape[:-1] == t.shape[:-1], "transcoder input and output positions differ"
            return t + (self.value - feature_activation(d, x, self.feature))[..., None] * w

        return {site_in: keep, site_out: _at_positions(clamp_out, self.positions, prompt_len)}


@final
@dataclass(frozen=True, eq=False)
class AblateFeature(Edit):
    """Clamp `feature` to 0: remove what it writes wherever it fires, nothing elsewhere."""

    dictionary: Dictionary = field(repr=False)
    feature: int
    positions: Positions = "all"

    def __post_init__(self) -> None:
        ClampFeature(self.dictionary, self.feature, 0.0, self.positions)  # the same checks

    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        clamp = ClampFeature(self.dictionary, self.feature, 0.0, self.positions)
        return clamp.patches(model, prompt_len)


@torch.no_grad()
def feature_activation(dictionary: Dictionary, x: Tensor, feature: int) -> Tensor:
    """[..., d_in] activations of the dictionary's input site → [...] activation of `feature`,
    in x's dtype and device (the codes of `encode`, so TopK's selection counts)."""
    d = dictionary
    flat = x.reshape(-1, x.shape[-1]).to(d.W_enc.device, d.W_enc.dtype)
    codes = d.encode(flat)
    if codes.idx is None:
        a = codes.vals[:, feature]
    else:
        a = (codes.vals * (codes.idx == feature).to(codes.vals.dtype)).sum(-1)
    return a.view(x.shape[:-1]).to(x.device, x.dtype)


@contextlib.contextmanager
def steering(
    model: Model, edits: Sequence[Edit], *, prompt_len: int | None = None
) -> Iterator[None]:
    """Apply `edits` to every forward pass of `model` inside the block.

    `prompt_len` (padded prompt length) is needed only by edits restricted to "prompt" or
    "generated" positions. Every entry starts fresh position counts, so open one block per
    generated batch. The hooks are removed on exit, also after an exception.
    """
    by_site: dict[str, list[PatchFn]] = {}
    for edit in edits:
        for site, fn in edit.patches(model, prompt_len).items():
            by_site.setdefault(site, []).append(fn)
    patches = {site: _compose(fns) for site, fns in by_site.items()}
    with model.hooks([], patches, {}):
        yield


def _compose(fns: list[PatchFn]) -> PatchFn:
    if len(fns) == 1:
        return fns[0]

    def chain(t: Tensor) -> Tensor:
        for fn in fns:
            t = fn(t)
        return t

    return chain


def _at_positions(fn: PatchFn, positions: Positions, prompt_len: int | None) -> PatchFn:
    """`fn` applied only to the chosen positions (see the module docstring for the count)."""
    if positions == "all":
        return fn
    if prompt_len is None:
        raise AimriError(
            f"an edit restricted to '{positions}' positions needs the prompt length: pass "
            "prompt_len to steering(...), or use positions='all'"
        )
    seen = 0

    def patch(t: Tensor) -> Tensor:
        nonlocal seen
        T = t.shape[1]
        start = seen if T == 1 else 0  # one position: a KV-cache step; more: a new sequence
        seen = start + T
        pos = torch.arange(start, start + T, device=t.device)
        keep = pos >= prompt_len if positions == "generated" else pos < prompt_len
        if bool(keep.all()):
            return fn(t)
        if not bool(keep.any()):
            return t
        return torch.where(keep[None, :, None], fn(t), t)

    return patch


def dictionary_sites(d: Dictionary, model: Model, site: str | None = None) -> tuple[str, str]:
    """(site the encoder reads, site the decoder writes), checked against the model: names,
    widths, order. The site is the one the dictionary records, or `site` for one that records
    none; a `site` that contradicts the recorded one is refused. One check for every user of a
    dictionary on a model (steering, diffing, concept features)."""
    cfg = d.cfg
    if site and cfg.site and site != cfg.site:
        raise AimriError(
            f"the dictionary reads '{cfg.site}' but site '{site}' was given: pass the site it "
            "was trained on, or leave it out"
        )
    read = site or cfg.site
    if not read:
        raise AimriError(
            "the dictionary does not record which site it reads (its cfg.json has no "
            "hook_name): set DictConfig.site, or pass the site (e.g. 'blocks.12.hook_resid_post')"
        )
    _check_site(model, read, cfg.d_in, "the dictionary's input")
    if not cfg.transcoder:
        return read, read
    if not cfg.site_out:
        raise AimriError(
            f"the transcoder reading '{read}' does not record the site it predicts, so a "
            "feature edit has nowhere to write: set DictConfig.site_out (e.g. the MLP's output)"
        )
    _check_site(model, cfg.site_out, cfg.out_width, "the transcoder's output")
    if model.sites.index(cfg.site_out) <= model.sites.index(read):
        raise AimriError(
            f"the transcoder writes '{cfg.site_out}', which the forward pass reaches before "
            f"its input '{read}': an edit cannot use an activation not yet computed"
        )
    return read, cfg.site_out


def _check_site(model: Model, site: str, width: int, what: str) -> None:
    if site not in model.sites:
        model.expand_sites([site])  # raises the adapter's message for an unknown site
        raise AimriError(
            f"an edit needs one site name, not the pattern '{site}': name one site, "
            "e.g. 'blocks.3.hook_resid_post'"
        )
    if parse_site(site).kind == "attn.hook_pattern":
        raise AimriError(f"site '{site}' is read-only: edit hook_attn_out or the residual")
    if width != model.site_width(site):
        raise AimriError(
            f"{what} has width {width}, but site '{site}' of model '{model.info.spec}' has "
            f"width {model.site_width(site)}: it was made for another model"
        )


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise AimriError(f"positions '{positions}' is unknown: use one of {', '.join(POSITIONS)}")


def _dtype(model: Model) -> torch.dtype:
    return next(model.hf.parameters()).dtype
