"""Model diffing: what changed between two versions of a model, base A and other B, on the same
texts. `diff_models(base, other, texts)` returns a `ModelDiff`:

- `layers` (one `LayerDiff` per `blocks.{L}.hook_resid_post`): mean relative change
  ||h_B − h_A|| / ||h_A|| over tokens, the mean difference δ_L relative to mean ||h_A||, mean
  cosine; δ_L through A's final norm and unembedding (the tokens it promotes and suppresses);
  and for the `steer_layers` changed layers with the largest ||δ_L||, `steer_recovery` =
  1 − KL(B‖A+δ_L) / KL(B‖A) on the first `steer_texts` texts: how much of B's output change
  adding δ_L to A's residual stream (every position but BOS) reproduces;
- `kl` (`TokenKL`, `stats.py`): per-token KL(B‖A) of next-token distributions, the
  contexts where it peaks, the output tokens B promotes and demotes, the input tokens after
  which it is largest (trigger candidates);
- `features` (`FeatureDiff`, `features.py`) when a dictionary of A is given;
- `crosscoder` (`CrosscoderDiff`, `crosscoder.py`) when asked for.
Each batch costs one forward pass per model (all layers and the logits); statistics stream.
Position 0 (BOS) and padding are left out everywhere.

Identity: a model diffed with itself gives exact zeros, `empty=True` and empty rank lists;
nothing is listed below `Tolerances`. Compatibility: different tokenizers (vocabularies, or
different ids for the texts) raise AimriError; different widths or layer counts fall back to
comparing outputs only, and `compatibility.fallback` says so.
Not here: the CLI, its config and the report (the lead's), the audit game built on this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aimri._io import SCHEMA_VERSION
from aimri.dicts.dictionary import Dictionary
from aimri.diff.crosscoder import CrosscoderDiff, CrosscoderSettings, crosscoder_diff
from aimri.diff.features import FeatureAccumulator, FeatureDiff
from aimri.diff.layers import (
    LayerDiff,
    layer_diffs,
    steer_choice,
    steer_recovery,
)
from aimri.diff.stats import (
    KLAccumulator,
    LayerAccumulator,
    LayerMoments,
    TokenKL,
    TokenScore,
    Tolerances,
    text_batches,
    tokenize,
)
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.steer.edits import dictionary_sites

__all__ = [
    "Compatibility",
    "CrosscoderDiff",
    "DiffSettings",
    "FeatureDiff",
    "LayerDiff",
    "ModelDiff",
    "TokenKL",
    "TokenScore",
    "Tolerances",
    "diff_json",
    "diff_models",
]
log = logging.getLogger(__name__)
DEFAULT_TOLERANCES = Tolerances()
DEFAULT_CROSSCODER = CrosscoderSettings()


@dataclass(frozen=True)
class Compatibility:
    same_tokenizer: bool
    """Always True in a result: different tokenizers raise AimriError."""
    tokenizer_sha256: str
    vocab_size: int
    """Entries in the (shared) tokenizer's vocabulary."""
    logit_vocab: int
    """Logits compared: the first this many (the smaller LM head when they differ)."""
    same_shape: bool
    """Same number of layers and the same width: the layers can be compared."""
    n_layers: list[int]
    """[A, B]."""
    d_model: list[int]
    same_weights: bool
    fallback: str | None
    """What was compared instead, and why (None: everything)."""


@dataclass(frozen=True)
class DiffSettings:
    n_texts: int
    n_tokens: int
    """Tokens compared (BOS excluded)."""
    max_len: int
    batch_size: int
    top_k: int
    seed: int
    steer_layers: list[int]
    """The layers whose δ_L was added to A to measure steer_recovery."""
    steer_texts: int
    tolerances: Tolerances


@dataclass(frozen=True)
class ModelDiff:
    base: str
    """Model A's spec."""
    other: str
    base_sha256: str
    other_sha256: str
    compatibility: Compatibility
    layers: list[LayerDiff]
    kl: TokenKL
    features: FeatureDiff | None
    crosscoder: CrosscoderDiff | None
    empty: bool
    """Nothing changed beyond the tolerances."""
    settings: DiffSettings
    notes: list[str] = field(default_factory=list)
    """What a reader should know: fallbacks, what was skipped and why."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase."""


def diff_json(d: ModelDiff) -> dict[str, Any]:
    """The diff as plain JSON-able data, with a schema version."""
    return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(d)}


def diff_models(
    base: Model,
    other: Model,
    texts: Sequence[str],
    *,
    dictionary: Dictionary | None = None,
    dict_site: str | None = None,
    feature_labels: Mapping[int, str] | None = None,
    crosscoder: bool = False,
    crosscoder_layer: int | None = None,
    top_k: int = 20,
    seed: int = 0,
    max_len: int = 128,
    batch_size: int = 8,
    steer_layers: int = 4,
    steer_texts: int = 16,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    crosscoder_settings: CrosscoderSettings = DEFAULT_CROSSCODER,
) -> ModelDiff:
    """Compare `other` (B) with `base` (A) on `texts` (see the module docstring)."""
    clock, notes, tol = _Clock(), [], tolerances
    seqs, compat = _prepare(base, other, texts, max_len, notes)
    feats = _feature_accumulator(base, dictionary, dict_site, compat, len(seqs), notes)
    run = _main_pass(base, other, seqs, compat, feats, batch_size)
    clock.lap("forward passes")
    kl = run.kl.finish(seqs, base.tokenizer, tol, top_k)
    layers, steered = _layers(base, other, seqs, run, tol, steer_layers, steer_texts, top_k)
    clock.lap("layers and steering")
    features = None
    if feats is not None:
        features = feats.finish(seqs, base.tokenizer, feature_labels, tol, top_k)
    cc = None
    if crosscoder:
        cc = _crosscoder(
            base,
            other,
            seqs,
            run.layers,
            crosscoder_layer,
            tol,
            notes,
            settings=crosscoder_settings,
            batch_size=batch_size,
            top_k=top_k,
            seed=seed,
        )
        clock.lap("crosscoder")
    empty = kl.mean <= tol.kl and not any(ly.changed for ly in layers)
    empty = empty and (features is None or features.n_changed == 0)
    log.info("diff: %s", "no difference" if empty else f"mean KL(B‖A) {kl.mean:.4g} nats")
    settings = DiffSettings(
        n_texts=len(seqs),
        n_tokens=kl.n_tokens,
        max_len=max_len,
        batch_size=batch_size,
        top_k=top_k,
        seed=seed,
        steer_layers=steered,
        steer_texts=min(steer_texts, len(seqs)),
        tolerances=tol,
    )
    return ModelDiff(
        base=base.info.spec,
        other=other.info.spec,
        base_sha256=base.weights_sha256,
        other_sha256=other.weights_sha256,
        compatibility=compat,
        layers=layers,
        kl=kl,
        features=features,
        crosscoder=cc,
        empty=empty,
        settings=settings,
        notes=notes,
        timings=clock.laps,
    )


class _Clock:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 3)
        self.t = now
        log.info("diff: %s done in %.1f s", name, self.laps[name])


def _prepare(
    base: Model, other: Model, texts: Sequence[str], max_len: int, notes: list[str]
) -> tuple[list[list[int]], Compatibility]:
    """(token ids of the texts, the compatibility record); raises for other tokenizers."""
    if max_len < 2:
        raise AimriError(f"max_len={max_len} leaves no token after BOS: use at least 2")
    seqs, seqs_b = tokenize(base, texts, max_len), tokenize(other, texts, max_len)
    ha, hb = _tokenizer_sha256(base.tokenizer), _tokenizer_sha256(other.tokenizer)
    if ha != hb or seqs != seqs_b:
        raise AimriError(
            f"'{base.info.spec}' and '{other.info.spec}' tokenize differently (vocabularies of "
            f"{len(base.tokenizer)} and {len(other.tokenizer)} tokens, sha256 {ha[:12]}… and "
            f"{hb[:12]}…): a diff compares the two models token by token, so both need the "
            "same tokenizer; diff two versions of one model, or retokenize one of them"
        )
    empty = sum(len(s) < 2 for s in seqs)
    if empty == len(seqs):
        raise AimriError("no text has a token after BOS: pass non-empty texts")
    if empty:  # kept, so that text indices are the caller's; they add no token
        notes.append(f"{empty} texts have no token after BOS and count for nothing")
    ia, ib = base.info, other.info
    same_shape = (ia.n_layers, ia.d_model) == (ib.n_layers, ib.d_model)
    fallback = None
    if not same_shape:
        fallback = (
            f"the models differ in shape (A: {ia.n_layers} layers of width {ia.d_model}, B: "
            f"{ib.n_layers} of {ib.d_model}), so only their outputs are compared: per-token KL "
            "and token shifts; no layers, features or crosscoder"
        )
        notes.append(fallback)
    vocab = min(ia.vocab_size, ib.vocab_size)
    if ia.vocab_size != ib.vocab_size:
        notes.append(
            f"LM heads of {ia.vocab_size} and {ib.vocab_size} rows: the first {vocab} "
            "logits (the shared tokenizer's) are compared"
        )
    compat = Compatibility(
        same_tokenizer=True,
        tokenizer_sha256=ha,
        vocab_size=len(base.tokenizer),
        logit_vocab=vocab,
        same_shape=same_shape,
        n_layers=[ia.n_layers, ib.n_layers],
        d_model=[ia.d_model, ib.d_model],
        same_weights=base.weights_sha256 == other.weights_sha256,
        fallback=fallback,
    )
    return seqs, compat


def _tokenizer_sha256(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()


def _feature_accumulator(
    base: Model,
    dictionary: Dictionary | None,
    dict_site: str | None,
    compat: Compatibility,
    n_texts: int,
    notes: list[str],
) -> FeatureAccumulator | None:
    if dictionary is None:
        return None
    if not compat.same_shape:
        notes.append("the dictionary was not used: the models differ in shape")
        return None
    site, target = dictionary_sites(dictionary, base, dict_site)
    return FeatureAccumulator(dictionary, site, target, n_texts)


class _Pass(NamedTuple):
    layers: LayerMoments | None
    kl: KLAccumulator


def _main_pass(
    base: Model,
    other: Model,
    seqs: list[list[int]],
    compat: Compatibility,
    feats: FeatureAccumulator | None,
    batch_size: int,
) -> _Pass:
    """One forward pass per model per batch: every layer's residual, the dictionary's sites
    and the logits."""
    n = base.info.n_layers
    resid = [f"blocks.{L}.hook_resid_post" for L in range(n)] if compat.same_shape else []
    extra = [feats.site, feats.target] if feats is not None else []
    read = list(dict.fromkeys(resid + extra))
    layer_acc = LayerAccumulator(n, base.info.d_model) if resid else None
    kl = KLAccumulator(compat.logit_vocab)
    log.info("diff: %d texts, %d sites read per model", len(seqs), len(read))
    for b in text_batches(seqs, batch_size):
        ra, rb = base.run(b.ids, read=read), other.run(b.ids, read=read)
        assert ra.logits is not None and rb.logits is not None
        kl.update(ra.logits, rb.logits, b)
        if layer_acc is not None:
            layer_acc.update([ra.acts[s] for s in resid], [rb.acts[s] for s in resid], b.mask)
        if feats is not None:
            feats.update(ra.acts, rb.acts, b)
    return _Pass(layer_acc.finish() if layer_acc is not None else None, kl)


def _layers(
    base: Model,
    other: Model,
    seqs: list[list[int]],
    run: _Pass,
    tol: Tolerances,
    steer_layers: int,
    steer_texts: int,
    top_k: int,
) -> tuple[list[LayerDiff], list[int]]:
    """(per-layer results, the layers steered with δ_L); nothing when shapes differ."""
    if run.layers is None:
        return [], []
    steered = steer_choice(run.layers, tol, steer_layers)
    subset = seqs[:steer_texts]
    per_token, where = run.kl.per_token()
    before = float(per_token[where[:, 0] < len(subset)].double().mean())
    recovery = {}
    if steered and before > tol.kl:
        recovery = steer_recovery(base, other, subset, before, run.layers, steered, run.kl.vocab)
    return layer_diffs(base, run.layers, recovery, tol, top_k), steered


def _crosscoder(
    base: Model,
    other: Model,
    seqs: list[list[int]],
    moments: LayerMoments | None,
    layer: int | None,
    tol: Tolerances,
    notes: list[str],
    **kwargs: Any,
) -> CrosscoderDiff | None:
    """The crosscoder at `layer` (default: the largest change), or None, said in the notes."""
    if moments is None:
        notes.append("no crosscoder: the models differ in shape")
        return None
    n = len(moments.rel_change)
    if layer is None:
        layer = int(moments.rel_change.argmax())
    if not 0 <= layer < n:
        raise AimriError(f"crosscoder_layer={layer} is not a layer of these models (0-{n - 1})")
    if float(moments.rel_change[layer]) <= tol.rel_change:
        notes.append(f"no crosscoder: layer {layer} does not differ between the models")
        return None
    return crosscoder_diff(base, other, seqs, layer, **kwargs)
