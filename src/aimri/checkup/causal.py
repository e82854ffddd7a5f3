"""Causal check of a flagged direction or feature: does moving it move behaviour, beyond chance?

The behaviour metric, on the concept's held-out behaviour items (never used for fitting), is
the mean over prompts of [log P(positive completion | prompt) − log P(negative completion |
prompt)], each a per-token mean log-probability of the completion (nats per token). It is
measured unsteered, then with an edit on every position:
- a direction: `AddDirection` at ± each strength, in units of `scale` (default the site's mean
  activation norm on the prompts, `site_norm`), and projected out (x − (x·u)u: ablation);
- a dictionary feature: `ClampFeature` to strength × `scale` (default its largest activation on
  the prompts with their positive completions; a negative strength clamps to a negative value)
  and `AblateFeature`.
The baseline repeats the largest ± strength (and, if asked, the ablation) with `n_random`
random directions (Gaussian, seeded) or random other features of the same dictionary. `effect`
is half the difference between the metric at +s and −s for the largest s, which cancels what
any large edit does to both completions alike; `z` compares it with the random effects. A check
counts as "beyond random" when |z| ≥ 3 and |effect| exceeds every random effect: with a few
random draws this is a screen, not a significance test. This is evidence about these prompts,
never a certification of the model. Cost: one forward pass over the prompts (each prompt once,
its KV cache shared by both completions) per strength, ablation and random draw.

Not here: finding the direction (`probes.py`), the edits themselves (`aimri.steer.edits`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from aimri.checkup.concepts import BehaviourItem, ConceptSet, require_behaviour
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model, PatchFn
from aimri.model.sites import parse_site
from aimri.steer.directions import site_norm, token_activations
from aimri.steer.edits import AblateFeature, AddDirection, ClampFeature, feature_activation
from aimri.steer.generate import prompt_ids, right_pad

DEFAULT_STRENGTHS = (-0.5, -0.25, 0.25, 0.5)
"""Direction strengths in units of the site's mean norm (SmolLM2's resid_post norms are
inflated by a few very large dimensions, so half a norm already moves the text a lot)."""
N_RANDOM = 4
Z_BEYOND = 3.0
Patches = dict[str, PatchFn]


@dataclass(frozen=True, kw_only=True)
class CausalSettings:
    """How `probe_concepts` runs its causal checks (each setting multiplies the cost: one
    forward pass over the behaviour items per strength and per random draw)."""

    strengths: tuple[float, ...] = (-0.5, 0.5)
    """Direction strengths, in units of the site's mean norm on neutral text."""
    feature_strengths: tuple[float, ...] = (-2.0, 2.0)
    """Feature clamp values, in units of the feature's peak activation on positive texts."""
    n_random: int = 4
    """Random directions (or features) in the baseline."""
    random_ablation: bool = False
    """Also ablate each random direction (one more pass each); projecting out a random
    direction removes about 1/d_model of the activation, so this baseline is near 0."""


@dataclass(frozen=True)
class CausalPoint:
    strength: float
    metric: float


@dataclass(frozen=True)
class CausalCheck:
    """What steering and ablating one direction or feature did to the behaviour metric."""

    concept: str
    target: Literal["direction", "feature"]
    site: str
    feature: int | None
    scale: float
    """Length of one unit of strength (activation units, or the feature's activation)."""
    n_prompts: int
    unsteered: float
    """Behaviour metric without edits: mean log P(positive) − log P(negative), nats per token."""
    points: list[CausalPoint]
    """The metric at each strength, in the order given."""
    ablated: float
    """The metric with the direction projected out (or the feature ablated)."""
    effect: float
    """(metric at +s − metric at −s) / 2 for the largest strength s."""
    random_effects: list[float]
    """The same for each random direction (or feature)."""
    random_effect_mean: float
    random_effect_sd: float
    random_ablation_shifts: list[float]
    """metric − unsteered when a random direction is projected out (or a random feature
    ablated); empty when not measured."""
    z: float
    """(effect − random mean) / random sd."""
    beyond_random: bool
    verdict: str
    finding: str


def causal_check(
    model: Model,
    concept: ConceptSet,
    *,
    site: str,
    direction: Tensor | None = None,
    dictionary: Dictionary | None = None,
    feature: int | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    scale: float | None = None,
    n_random: int = N_RANDOM,
    random_ablation: bool = True,
    seed: int = 0,
) -> CausalCheck:
    """Steer and ablate `direction` at `site`, or `feature` of `dictionary` (whose input site is
    `site`), on the concept's behaviour items, against `n_random` random baselines (each
    also ablated when `random_ablation`)."""
    require_behaviour(concept)
    if n_random < 2:
        raise AimriError(f"n_random={n_random}: the random baseline needs at least 2 draws")
    batch = behaviour_batch(model, concept.behaviour)
    s_max = max((abs(float(s)) for s in strengths), default=0.0)
    if s_max == 0:
        raise AimriError("strengths are all 0: give non-zero strengths, e.g. (-1, 1)")
    if direction is not None and dictionary is None and feature is None:
        target: Literal["direction", "feature"] = "direction"
        if scale is None:
            scale = site_norm(model, site, [b.prompt for b in concept.behaviour])
        edits = _direction_edits(model, site, direction, scale)
        gen = torch.Generator().manual_seed(seed)
        draws = torch.randn(n_random, direction.shape[-1], generator=gen)
        others = [_direction_edits(model, site, r, scale) for r in draws]
    elif direction is None and dictionary is not None and feature is not None:
        target = "feature"
        if site != dictionary.cfg.site:
            raise AimriError(
                f"site '{site}' is not where the dictionary reads ('{dictionary.cfg.site}'): "
                "pass the dictionary's own site"
            )
        if scale is None:
            scale = _feature_scale(model, dictionary, feature, concept)
        edits = _feature_edits(model, dictionary, feature, scale)
        pool = [f for f in range(dictionary.cfg.d_sae) if f != feature]
        picks = random.Random(seed).sample(pool, min(n_random, len(pool)))
        others = [_feature_edits(model, dictionary, f, scale) for f in picks]
    else:
        raise AimriError(
            "causal_check needs either a direction, or a dictionary and a feature index: "
            "pass exactly one of the two"
        )
    head = (site, target, feature, float(scale))
    return _measure(model, concept, batch, head, strengths, s_max, edits, others, random_ablation)


class _Edits(NamedTuple):
    steer: Callable[[float], Patches]
    """strength → patches."""
    ablate: Callable[[], Patches]


class BehaviourBatch(NamedTuple):
    """Behaviour items tokenized for `behaviour_metric`: prompts once, completions twice each."""

    prompts: Tensor
    """[n, Tp] right-padded prompts, BOS first."""
    prompt_lens: Tensor
    """[n] real tokens per prompt."""
    completions: Tensor
    """[2n, Tc] right-padded completions: row 2i = prompt i's positive one, 2i + 1 negative."""
    completion_lens: Tensor
    """[2n] real tokens per completion."""


def behaviour_batch(model: Model, items: Sequence[BehaviourItem]) -> BehaviourBatch:
    """Tokenize prompt (with BOS) and completion apart, so the completion's tokens are its own."""
    bos = prompt_ids(model, "")  # the BOS prefix, looked up once
    tok = model.tokenizer
    prompts = [bos + tok(b.prompt, add_special_tokens=False)["input_ids"] for b in items]
    tails = [
        tok(c, add_special_tokens=False)["input_ids"]
        for b in items
        for c in (b.positive, b.negative)
    ]
    if not all(tails):
        raise AimriError("a behaviour item has an empty completion: give every item two")
    return BehaviourBatch(
        right_pad(prompts).ids,
        torch.tensor([len(p) for p in prompts]),
        right_pad(tails).ids,
        torch.tensor([len(t) for t in tails]),
    )


def behaviour_metric(model: Model, batch: BehaviourBatch, patches: Patches) -> float:
    """Mean over items of (mean log-prob per token of the positive completion − the same for
    the negative one), with `patches` applied to every forward pass.

    Each prompt runs once; its KV cache serves both completions (a second pass whose attention
    mask hides the prompt's padding and whose positions continue each prompt), which saves
    about a third of the tokens of running prompt + completion twice."""
    return _two_passes(model, batch, patches).metric


class BehaviourRunner:
    """`behaviour_metric` for one batch under many edits, each computed from the first block
    it touches on: blocks before it give the same output under every edit, so they are
    replayed from one recorded unpatched run (their KV cache entries included) instead of
    recomputed. For an edit at the middle of the model this halves the cost; the result is
    the same as `behaviour_metric` (tested)."""

    def __init__(self, model: Model, batch: BehaviourBatch) -> None:
        self.model, self.batch = model, batch
        self._reference: _Passes | None = None

    def metric(self, patches: Patches) -> float:
        if self._reference is None:
            self._reference = _two_passes(self.model, self.batch, {}, record=True)
        if not patches:
            return self._reference.metric
        first = min(parse_site(site).layer for site in patches)
        return _two_passes(self.model, self.batch, patches, self._reference, first).metric


class _Passes(NamedTuple):
    metric: float
    block_outputs: list[tuple[Any, Any]]
    """Per block, what it returned in the prompt pass and in the completion pass (recorded
    only for the unpatched reference run)."""
    prompt_cache: list[Any]
    """Per layer, the prompt pass's KV cache entry, repeated for the two completions."""


@torch.no_grad()
def _two_passes(
    model: Model,
    batch: BehaviourBatch,
    patches: Patches,
    reference: _Passes | None = None,
    replay_below: int = 0,
    *,
    record: bool = False,
) -> _Passes:
    """The prompt pass, then the completion pass on its cache; blocks below `replay_below`
    return `reference`'s outputs (and cache) instead of running."""
    dev = model.device
    Tp, Tc = batch.prompts.shape[1], batch.completions.shape[1]
    prompt_mask = (torch.arange(Tp) < batch.prompt_lens[:, None]).long()  # [n, Tp]
    comp_mask = (torch.arange(Tc) < batch.completion_lens[:, None]).long()  # [2n, Tc]
    mask = torch.cat([prompt_mask.repeat_interleave(2, 0), comp_mask], dim=1)
    positions = batch.prompt_lens.repeat_interleave(2)[:, None] + torch.arange(Tc)
    blocks: list[nn.Module] = list(model.layout.layers)
    replay = reference is not None and replay_below > 0
    outputs: list[list[Any]] = [[] for _ in blocks] if record else []
    last_ids = batch.prompt_lens - 1
    keep = torch.unique(last_ids)  # only these prompt positions need logits
    kwargs = {"logits_to_keep": keep.to(dev)} if _keeps_logits(model) else {}
    with model.hooks([], patches, {}), _recording(blocks, outputs):
        with _replaying(blocks[:replay_below], reference, 0, replay):
            first = model.hf(input_ids=batch.prompts.to(dev), use_cache=True, **kwargs)  # type: ignore[operator]
        cache = first.past_key_values
        cache.batch_repeat_interleave(2)
        if replay and reference is not None:
            for i in range(replay_below):
                cache.layers[i] = copy.copy(reference.prompt_cache[i])
        # the completion pass extends each layer's entry: keep the prompt's as it is now
        prompt_cache = [copy.copy(layer) for layer in cache.layers] if record else []
        with _replaying(blocks[:replay_below], reference, 1, replay):
            second = model.hf(  # type: ignore[operator]
                input_ids=batch.completions.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                past_key_values=cache,
                use_cache=False,
            )
    rows = torch.arange(len(batch.prompt_lens), device=dev)
    at = torch.searchsorted(keep, last_ids) if kwargs else last_ids
    last = first.logits[rows, at.to(dev)]  # [n, V]: the first completion token
    logits = torch.cat([last.repeat_interleave(2, 0)[:, None], second.logits[:, :-1]], dim=1)
    logp = logits.float().log_softmax(-1)  # [2n, Tc, V]
    target = batch.completions.to(dev)[..., None]
    token_lp = logp.gather(-1, target)[..., 0] * comp_mask.to(dev)  # [2n, Tc]
    per_row = token_lp.sum(1) / batch.completion_lens.to(dev)  # [2n]
    metric = float((per_row[0::2] - per_row[1::2]).mean())
    recorded = [(o[0], o[1]) for o in outputs] if record else []
    return _Passes(metric, recorded, prompt_cache)


def _keeps_logits(model: Model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most transformers causal LMs)."""
    return "logits_to_keep" in inspect.signature(model.hf.forward).parameters


@contextlib.contextmanager
def _recording(blocks: Sequence[nn.Module], outputs: list[list[Any]]) -> Iterator[None]:
    """Append what each block returns to `outputs[i]` (nothing when `outputs` is empty)."""
    handles = [
        b.register_forward_hook(lambda m, a, out, i=i: outputs[i].append(out))
        for i, b in enumerate(blocks[: len(outputs)])
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _replaying(
    blocks: Sequence[nn.Module], reference: _Passes | None, which: int, on: bool
) -> Iterator[None]:
    """Blocks return their recorded output of pass `which` instead of running (their hooks
    still run around it)."""
    if not on or reference is None:
        yield
        return
    for i, b in enumerate(blocks):
        out = reference.block_outputs[i][which]
        b.forward = lambda *a, _out=out, **k: _out  # type: ignore[method-assign]
    try:
        yield
    finally:
        for b in blocks:
            del b.forward


def _direction_edits(model: Model, site: str, direction: Tensor, scale: float) -> _Edits:
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)

    def steer(strength: float) -> Patches:
        return AddDirection(site, unit, strength, scale=scale).patches(model)

    def ablate() -> Patches:
        u = unit.to(model.device, next(model.hf.parameters()).dtype)
        return {site: lambda t: t - (t @ u)[..., None] * u}

    return _Edits(steer, ablate)


def _feature_edits(model: Model, dictionary: Dictionary, feature: int, scale: float) -> _Edits:
    def steer(strength: float) -> Patches:
        return ClampFeature(dictionary, feature, strength * scale).patches(model)

    def ablate() -> Patches:
        return AblateFeature(dictionary, feature).patches(model)

    return _Edits(steer, ablate)


def _feature_scale(
    model: Model, dictionary: Dictionary, feature: int, concept: ConceptSet
) -> float:
    """The feature's largest activation on the behaviour prompts with positive completions."""
    texts = [b.prompt + b.positive for b in concept.behaviour]
    x = torch.cat(token_activations(model, dictionary.cfg.site, texts))
    peak = float(feature_activation(dictionary, x, feature).max())
    if peak <= 0:
        raise AimriError(
            f"feature {feature} never fires on concept '{concept.name}''s behaviour prompts, so "
            "there is no natural unit for clamping it: pass scale (e.g. its maximum activation)"
        )
    return peak


def _measure(
    model: Model,
    concept: ConceptSet,
    batch: BehaviourBatch,
    head: tuple[str, Literal["direction", "feature"], int | None, float],
    strengths: Sequence[float],
    s_max: float,
    edits: _Edits,
    others: list[_Edits],
    random_ablation: bool,
) -> CausalCheck:
    site, target, feature, scale = head

    runner = BehaviourRunner(model, batch)

    def metric(patches: Patches) -> float:
        return runner.metric(patches)

    def effect(e: _Edits) -> float:
        return (metric(e.steer(s_max)) - metric(e.steer(-s_max))) / 2

    base = metric({})
    points = [CausalPoint(float(s), metric(edits.steer(float(s)))) for s in strengths]
    at = {p.strength: p.metric for p in points}
    both = s_max in at and -s_max in at
    own = (at[s_max] - at[-s_max]) / 2 if both else effect(edits)
    ablated = metric(edits.ablate())
    rand = [effect(o) for o in others]
    shifts = [metric(o.ablate()) - base for o in others] if random_ablation else []
    mean, sd = statistics.mean(rand), statistics.stdev(rand)
    z = (own - mean) / max(sd, 1e-9)
    beyond = abs(z) >= Z_BEYOND and abs(own) > max(abs(e) for e in rand)
    verdict = _verdict(concept, target, beyond, own)
    check = CausalCheck(
        concept=concept.name,
        target=target,
        site=site,
        feature=feature,
        scale=scale,
        n_prompts=len(concept.behaviour),
        unsteered=base,
        points=points,
        ablated=ablated,
        effect=own,
        random_effects=rand,
        random_effect_mean=mean,
        random_effect_sd=sd,
        random_ablation_shifts=shifts,
        z=z if math.isfinite(z) else math.copysign(1e9, z),
        beyond_random=beyond,
        verdict=verdict,
        finding="",
    )
    return _with_finding(check, concept, s_max)


def _verdict(
    concept: ConceptSet, target: Literal["direction", "feature"], beyond: bool, effect: float
) -> str:
    others = "random directions" if target == "direction" else "random features"
    if not beyond:
        return f"no effect beyond {others}"
    if effect > 0:
        return f"moves behaviour toward '{concept.positive_label}' beyond {others}"
    return f"moves behaviour toward '{concept.negative_label}' (against its sign) beyond {others}"


def _with_finding(c: CausalCheck, concept: ConceptSet, s_max: float) -> CausalCheck:
    what = (
        f"the {concept.name} direction at {c.site}"
        if c.target == "direction"
        else f"feature {c.feature} at {c.site}"
    )
    how = "steering along" if c.target == "direction" else "clamping"
    unit = "the site's mean norm" if c.target == "direction" else "its peak activation"
    removal = "projecting it out" if c.target == "direction" else "ablating it"
    rand_shift = (
        f"random: {statistics.mean(c.random_ablation_shifts):+.3f}"
        if c.random_ablation_shifts
        else "random ablations not measured"
    )
    finding = (
        f"On {c.n_prompts} held-out prompts, {how} {what} at ±{s_max:g} × {c.scale:.3g} "
        f"({unit}) shifts log P({concept.positive_label}) − log P({concept.negative_label}) by "
        f"{c.effect:+.3f} nats per token (half the difference between + and −; "
        f"{len(c.random_effects)} random baselines: {c.random_effect_mean:+.3f} ± "
        f"{c.random_effect_sd:.3f}, z = {c.z:.1f}); {removal} shifts it by "
        f"{c.ablated - c.unsteered:+.3f} ({rand_shift}). Verdict: {c.verdict}. "
        "Evidence about these prompts, not a certification of the model."
    )
    return dataclasses.replace(c, finding=finding)
