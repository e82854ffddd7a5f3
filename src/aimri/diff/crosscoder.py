"""An acausal crosscoder for a model diff: one BatchTopK dictionary over [h_A ; h_B] at one layer.

Both models read the same tokens; each token's residual vectors at `blocks.{L}.hook_resid_post`
are concatenated ([2·d_model]) and a BatchTopK dictionary is trained on those rows with the
ordinary trainer (`aimri.dicts.train.train`, fed by an in-memory source). Each latent's decoder
row splits into an A half and a B half; its relative decoder norm
r = ||W_dec_B|| / (||W_dec_A|| + ||W_dec_B||) says whose feature it is: r < 0.1 A-only,
r > 0.9 B-only, else shared. Latents that never fire on the rows (dead) are counted apart,
since their decoder rows are still random. It is small by design (the diff's texts, a few
passes): a first look, not a converged crosscoder. Measured on SmolLM2 at that size, decoder
rows stay close to their random init (row cosine 0.97) and r stays within 0.43-0.55 even for a
planted change, so the A-only/B-only counts come out 0; `b_leaning`/`a_leaning` list the most
one-sided latents anyway. Without a sparsity cost on the sum of per-model decoder norms
(Anthropic's crosscoders) nothing pushes a latent to one side; the trainer has none.
Not here: the diff's other statistics (`models.py`, `stats.py`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aimri.config import OptimConfig, TrainConfig
from aimri.corpus.text import TokenText
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import train
from aimri.diff.stats import text_batches, window
from aimri.model.adapter import Model
from aimri.store.reader import BatchSource

log = logging.getLogger(__name__)
A_ONLY, B_ONLY = 0.1, 0.9
N_CONTEXTS = 3


@dataclass(frozen=True, kw_only=True)
class CrosscoderSettings:
    """How the crosscoder is trained (small and fast by default)."""

    expansion: int = 4
    """Latents = expansion × 2·d_model."""
    k: int = 32
    """Active latents per token, on average over a batch (BatchTopK)."""
    passes: int = 8
    """Passes over the texts' tokens."""
    batch_size: int = 256
    lr: float = 1e-3


@dataclass(frozen=True)
class CrosscoderContext:
    text_index: int
    position: int
    context: str
    token: str
    activation: float


@dataclass(frozen=True)
class CrosscoderFeature:
    feature: int
    rel_norm_b: float
    """||W_dec_B|| / (||W_dec_A|| + ||W_dec_B||)."""
    rate: float
    """Share of tokens where it fires."""
    mean_activation: float
    """Over all tokens (zeros included): the ranking key within a class."""
    contexts: list[CrosscoderContext]


@dataclass(frozen=True)
class CrosscoderDiff:
    layer: int
    site: str
    d_sae: int
    k: int
    n_tokens: int
    train_tokens: int
    fvu: float
    """On the rows it was trained on (no held-out set: the texts are few)."""
    n_dead: int
    n_a_only: int
    n_b_only: int
    n_shared: int
    rel_norm_histogram: list[int]
    """Live latents per tenth of r, from [0, 0.1) to [0.9, 1]."""
    b_only: list[CrosscoderFeature]
    """B-only latents (r > 0.9), most active first."""
    a_only: list[CrosscoderFeature]
    b_leaning: list[CrosscoderFeature]
    """The live latents with the largest r, whatever the threshold: a change that always comes
    with something A also has (a planted direction added to one token) shares a latent with it
    and leans toward B without crossing 0.9."""
    a_leaning: list[CrosscoderFeature]
    seconds: float


class _Rows(BatchSource):
    """Rows held in memory as a training source (one chunk; the trainer's buffer shuffles)."""

    def __init__(self, rows: Tensor, site: str) -> None:
        self.rows, self.site = rows, site

    @property
    def identity(self) -> dict[str, Any]:
        return {"sites": {self.site: int(self.rows.shape[1])}, "ctx_len": 1}

    @property
    def n_tokens(self) -> int:
        return len(self.rows)

    def _chunks(
        self, sites: list[str], g: torch.Generator | None, exclude_sinks: bool
    ) -> Iterator[Tensor]:
        for s in sites:
            self.width(s)
        yield self.rows

    def __str__(self) -> str:
        return "the crosscoder's rows"


def crosscoder_diff(
    base: Model,
    other: Model,
    seqs: Sequence[list[int]],
    layer: int,
    *,
    settings: CrosscoderSettings = CrosscoderSettings(),
    batch_size: int = 8,
    top_k: int = 20,
    seed: int = 0,
) -> CrosscoderDiff:
    """Train the crosscoder at `layer` on the tokens of `seqs` (BOS excluded) and classify its
    latents by relative decoder norm."""
    t0 = time.perf_counter()
    site = f"blocks.{layer}.hook_resid_post"
    rows, where = _paired_rows(base, other, seqs, site, batch_size)
    log.info("crosscoder: %d tokens of [h_A ; h_B] at '%s'", len(rows), site)
    d, train_tokens = _train(rows, site, settings, seed, str(base.device))
    W = d.W_dec.detach().float().cpu()
    half = W.shape[1] // 2
    na, nb = W[:, :half].norm(dim=-1), W[:, half:].norm(dim=-1)
    r = nb / (na + nb).clamp_min(1e-12)  # [F]
    stats = _latent_stats(d, rows)
    live = stats.fired > 0
    hist = torch.histc(r[live], bins=10, min=0.0, max=1.0).long().tolist()
    text = TokenText(base.tokenizer)
    a_only, b_only = (r < A_ONLY) & live, (r > B_ONLY) & live

    def listed(score: Tensor) -> list[CrosscoderFeature]:
        """The top_k latents by score (negative: left out), with their contexts."""
        out = []
        for f in score.topk(min(top_k, len(score))).indices.tolist():
            if score[f] < 0:
                break
            n = len(rows)
            fired, mean = float(stats.fired[f] / n), float(stats.mean[f])
            ctx = _contexts(stats, f, where, seqs, text)
            out.append(CrosscoderFeature(f, float(r[f]), fired, mean, ctx))
        return out

    return CrosscoderDiff(
        layer=layer,
        site=site,
        d_sae=d.cfg.d_sae,
        k=settings.k,
        n_tokens=len(rows),
        train_tokens=train_tokens,
        fvu=stats.fvu,
        n_dead=int((~live).sum()),
        n_a_only=int(a_only.sum()),
        n_b_only=int(b_only.sum()),
        n_shared=int((live & ~a_only & ~b_only).sum()),
        rel_norm_histogram=[int(h) for h in hist],
        b_only=listed(torch.where(b_only, stats.mean, -1.0)),
        a_only=listed(torch.where(a_only, stats.mean, -1.0)),
        b_leaning=listed(torch.where(live, r, -1.0)),
        a_leaning=listed(torch.where(live, 1 - r, -1.0)),
        seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def _paired_rows(
    base: Model, other: Model, seqs: Sequence[list[int]], site: str, batch_size: int
) -> tuple[Tensor, Tensor]:
    """([N, 2d] rows [h_A ; h_B] float32 CPU, [N, 2] their (text index, position))."""
    rows, where = [], []
    for b in text_batches(seqs, batch_size):
        ha = base.run(b.ids, read=[site], logits=False).acts[site]
        hb = other.run(b.ids, read=[site], logits=False).acts[site]
        m = b.mask
        rows.append(torch.cat([ha.cpu()[m], hb.cpu()[m]], dim=-1).float())
        t, p = torch.nonzero(m, as_tuple=True)
        where.append(torch.stack([b.text_index[t], p], 1))
    return torch.cat(rows), torch.cat(where)


def _train(
    rows: Tensor, site: str, s: CrosscoderSettings, seed: int, device: str
) -> tuple[Dictionary, int]:
    """(the trained crosscoder, tokens trained on), through the ordinary trainer."""
    name = f"crosscoder.{site}"
    batch = min(s.batch_size, len(rows))
    optim = OptimConfig(
        batch_size=batch, tokens=s.passes * len(rows), lr=s.lr, dead_after_tokens=len(rows)
    )
    with tempfile.TemporaryDirectory(prefix="aimri-crosscoder-") as tmp:
        cfg = TrainConfig(
            site=name,
            out=Path(tmp),
            architecture="batchtopk",
            expansion=s.expansion,
            k=s.k,
            optim=optim,
            seed=seed,
            checkpoint_every=1 << 30,
            exclude_sinks=False,
            device=device,
        )
        result = train(cfg, _Rows(rows, name))
        return load_dictionary(result.path).to(rows.device), result.tokens


@dataclass(frozen=True)
class _LatentStats:
    fired: Tensor
    """[F] tokens where each latent fires."""
    mean: Tensor
    """[F] mean activation over all tokens."""
    top_vals: Tensor
    """[N_CONTEXTS, F] largest activations."""
    top_rows: Tensor
    """[N_CONTEXTS, F] their row indices."""
    fvu: float


@torch.no_grad()
def _latent_stats(d: Dictionary, rows: Tensor, chunk: int = 1024) -> _LatentStats:
    F = d.cfg.d_sae
    fired, total = torch.zeros(F), torch.zeros(F, dtype=torch.float64)
    top_vals, top_rows = torch.zeros(0, F), torch.zeros(0, F, dtype=torch.long)
    err = 0.0
    for start in range(0, len(rows), chunk):
        x = rows[start : start + chunk]
        codes = d.encode(x)
        err += float((d.decode(codes, x) - x).double().pow(2).sum())
        dense = codes.to_dense(F).float()  # [n, F]
        fired += (dense > 0).sum(0)
        total += dense.sum(0).double()
        idx = torch.arange(start, start + len(x))[:, None].expand(-1, F)
        vals, rows_ = torch.cat([top_vals, dense]), torch.cat([top_rows, idx])
        best = vals.topk(min(N_CONTEXTS, len(vals)), dim=0)
        top_vals, top_rows = best.values, rows_.gather(0, best.indices)
    var = float((rows.double() - rows.double().mean(0)).pow(2).sum())
    return _LatentStats(
        fired, (total / len(rows)).float(), top_vals, top_rows, err / max(var, 1e-12)
    )


def _contexts(
    stats: _LatentStats, f: int, where: Tensor, seqs: Sequence[list[int]], text: TokenText
) -> list[CrosscoderContext]:
    out = []
    for v, row in zip(stats.top_vals[:, f].tolist(), stats.top_rows[:, f].tolist(), strict=True):
        if v <= 0:
            break
        t, p = (int(x) for x in where[row])
        out.append(CrosscoderContext(t, p, window(text, seqs[t], p), text([seqs[t][p]])[0], v))
    return out
