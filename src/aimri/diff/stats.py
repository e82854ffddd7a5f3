"""Streaming statistics of two models read on the same tokens: residual differences per layer and
per-token KL of next-token distributions, for `models.py`.

Texts are tokenized once (BOS + tokens, as prompts are in `aimri.steer.generate`) and batched
right-padded; every statistic skips position 0 (BOS, whose norm dwarfs the rest) and padding.
The accumulators keep sums and small per-token records, never a batch's full activations or
logits, so memory does not grow with the number of texts × the vocabulary.
Not here: the result of a whole diff (`models.py`), dictionaries (`features.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from aimri.corpus.text import TokenText
from aimri.model.adapter import Model
from aimri.steer.generate import prompt_ids, right_pad

ROWS = 256  # tokens per chunk when a [tokens, vocab] tensor is needed


@dataclass(frozen=True)
class Tolerances:
    """What counts as "no difference": below these, nothing is ranked or listed."""

    rel_change: float = 1e-4
    """A layer changed when mean ||h_B − h_A|| / ||h_A|| exceeds this."""
    kl: float = 1e-6
    """Nats: the outputs changed when the mean per-token KL(B‖A) exceeds this; a context or
    input token is listed only above it."""
    prob: float = 1e-5
    """An output token is promoted/demoted when its mean probability change exceeds this."""
    feature_z: float = 3.0
    """A feature changed when its paired z (mean per-token activation change over its standard
    error) exceeds this in absolute value."""


class TextBatch(NamedTuple):
    ids: Tensor
    """[B, T] token ids, right-padded."""
    mask: Tensor
    """[B, T] bool: a real token that is not BOS (position 0)."""
    text_index: Tensor
    """[B] index of each row's text."""


@dataclass(frozen=True)
class TokenScore:
    """A token and a number about it (a probability, a logit effect)."""

    token: str
    id: int
    score: float


@dataclass(frozen=True)
class FeatureContext:
    """Where a feature fired most: a window of text ending at the token."""

    text_index: int
    position: int
    context: str
    token: str
    act_a: float
    act_b: float


def tokenize(model: Model, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """BOS + each text's tokens, cut to `max_len` tokens."""
    return [prompt_ids(model, t)[:max_len] for t in texts]


def text_batches(seqs: Sequence[list[int]], batch_size: int) -> Iterator[TextBatch]:
    for i in range(0, len(seqs), batch_size):
        padded = right_pad(list(seqs[i : i + batch_size]))
        mask = padded.mask.bool()
        mask[:, 0] = False
        yield TextBatch(padded.ids, mask, torch.arange(i, i + len(padded.ids)))


def window(text: TokenText, seq: list[int], pos: int, size: int = 12) -> str:
    """The text of up to `size` tokens ending at `pos` (BOS left out)."""
    return "".join(text(seq[max(1, pos - size + 1) : pos + 1]))


def token_scores(text: TokenText, ids: Tensor, values: Tensor) -> list[TokenScore]:
    """ids [k], values [k] → TokenScores."""
    return [
        TokenScore(text([int(i)])[0], int(i), float(v)) for i, v in zip(ids, values, strict=True)
    ]


def token_kl(logits_b: Tensor, logits_a: Tensor) -> Tensor:
    """[n, V] logits of B and A at the same positions → [n] KL(B‖A) in nats (float32, ≥ 0)."""
    out = []
    for lb, la in zip(logits_b.split(ROWS), logits_a.split(ROWS), strict=True):
        lp_b, lp_a = lb.float().log_softmax(-1), la.float().log_softmax(-1)
        out.append((lp_b.exp() * (lp_b - lp_a)).sum(-1).clamp_min(0))
    return torch.cat(out) if out else logits_b.new_zeros(0, dtype=torch.float32)


class LayerMoments(NamedTuple):
    rel_change: Tensor
    """[L] mean over tokens of ||h_B − h_A|| / ||h_A||."""
    mean_diff: Tensor
    """[L, d] δ_L = mean over tokens of h_B − h_A (float32)."""
    mean_norm_a: Tensor
    """[L] mean ||h_A||."""
    mean_cos: Tensor
    """[L] mean cosine between h_A and h_B."""
    n_tokens: int


class LayerAccumulator:
    """Sums over tokens of the residual differences at each layer (float64)."""

    def __init__(self, n_layers: int, d_model: int) -> None:
        self.rel = torch.zeros(n_layers, dtype=torch.float64)
        self.cos = torch.zeros(n_layers, dtype=torch.float64)
        self.norm_a = torch.zeros(n_layers, dtype=torch.float64)
        self.diff = torch.zeros(n_layers, d_model, dtype=torch.float64)
        self.n = 0

    def update(self, acts_a: Sequence[Tensor], acts_b: Sequence[Tensor], mask: Tensor) -> None:
        """acts_*: per layer [B, T, d]; mask [B, T]. Layer by layer: the working set stays
        in cache (stacking all layers first is ten times slower on a CPU)."""
        for L, (ha, hb) in enumerate(zip(acts_a, acts_b, strict=True)):
            m = mask.to(ha.device)
            a, b = ha[m].cpu().double(), hb[m].cpu().double()  # [n, d]
            na, nb = a.norm(dim=-1), b.norm(dim=-1)
            self.rel[L] += ((b - a).norm(dim=-1) / na.clamp_min(1e-12)).sum()
            self.cos[L] += ((a * b).sum(-1) / (na * nb).clamp_min(1e-12)).sum()
            self.norm_a[L] += na.sum()
            self.diff[L] += (b - a).sum(0)
        self.n += int(mask.sum())

    def finish(self) -> LayerMoments:
        n = max(self.n, 1)
        return LayerMoments(
            (self.rel / n).float(),
            (self.diff / n).float(),
            (self.norm_a / n).float(),
            (self.cos / n).float(),
            self.n,
        )


@dataclass(frozen=True)
class KLContext:
    """A position where B's next-token distribution departs most from A's."""

    text_index: int
    position: int
    context: str
    """The window of text ending at the token."""
    token: str
    kl: float
    top_a: list[TokenScore]
    """A's most likely next tokens there, with their probabilities."""
    top_b: list[TokenScore]


@dataclass(frozen=True)
class TokenShift:
    """An output token whose next-token probability B moves, on average over all positions."""

    token: str
    id: int
    mean_prob_change: float
    """Mean of p_B − p_A: the ranking key (the log-prob change alone ranks tokens neither model
    ever predicts first: a tail token going from 1e-9 to 1e-8 gains 2.3 nats)."""
    mean_logprob_change: float
    mean_prob_a: float
    mean_prob_b: float


@dataclass(frozen=True)
class TriggerToken:
    """An input token after which B's predictions differ most from A's (a trigger candidate)."""

    token: str
    id: int
    count: int
    mean_kl: float


@dataclass(frozen=True)
class TokenKL:
    """KL(B‖A) of next-token distributions, per position of the texts (BOS excluded)."""

    n_tokens: int
    mean: float
    p50: float
    p95: float
    max: float
    top_contexts: list[KLContext]
    promoted: list[TokenShift]
    """Output tokens B raises most (mean probability change over all positions)."""
    demoted: list[TokenShift]
    triggers: list[TriggerToken]
    """Input tokens with the highest mean KL at their position (seen at least twice)."""


class KLAccumulator:
    """Per-token KL, top next tokens, and per-vocabulary sums, batch by batch."""

    def __init__(self, vocab: int, n_top: int = 3) -> None:
        self.vocab, self.n_top = vocab, n_top
        self.kl: list[Tensor] = []  # per batch [n]
        self.where: list[Tensor] = []  # per batch [n, 2] (text index, position)
        self.top: list[Tensor] = []  # per batch [n, 4, n_top]: ids_a, p_a, ids_b, p_b
        self.dlogp = torch.zeros(vocab, dtype=torch.float64)
        self.p_a = torch.zeros(vocab, dtype=torch.float64)
        self.p_b = torch.zeros(vocab, dtype=torch.float64)
        self.kl_in = torch.zeros(vocab, dtype=torch.float64)
        self.count_in = torch.zeros(vocab, dtype=torch.float64)

    def update(self, logits_a: Tensor, logits_b: Tensor, batch: TextBatch) -> None:
        """logits_*: [B, T, ≥vocab]; only the first `vocab` logits are compared."""
        m = batch.mask.to(logits_a.device)
        la, lb = logits_a[m][:, : self.vocab], logits_b[m][:, : self.vocab]  # [n, V]
        kls, tops = [], []
        for ca, cb in zip(la.split(ROWS), lb.split(ROWS), strict=True):
            lp_a, lp_b = ca.float().log_softmax(-1), cb.float().log_softmax(-1)
            p_a, p_b = lp_a.exp(), lp_b.exp()
            diff = lp_b.sub_(lp_a)  # log p_B − log p_A, in place of log p_B
            kls.append(torch.linalg.vecdot(p_b, diff).clamp_min(0).cpu())
            self.dlogp += diff.sum(0).double().cpu()
            self.p_a += p_a.sum(0).double().cpu()
            self.p_b += p_b.sum(0).double().cpu()
            ta, tb = p_a.topk(self.n_top, dim=-1), p_b.topk(self.n_top, dim=-1)
            tops.append(torch.stack([ta.indices, ta.values, tb.indices, tb.values], 1).cpu())
        kl = torch.cat(kls)
        rows, pos = torch.nonzero(batch.mask, as_tuple=True)
        inputs = batch.ids[rows, pos]
        self.kl_in.index_add_(0, inputs, kl.double())
        self.count_in.index_add_(0, inputs, torch.ones_like(kl, dtype=torch.float64))
        self.kl.append(kl)
        self.where.append(torch.stack([batch.text_index[rows], pos], 1))
        self.top.append(torch.cat(tops))

    def per_token(self) -> tuple[Tensor, Tensor]:
        """([n] KL per token, [n, 2] its (text index, position)) in pass order."""
        if not self.kl:
            return torch.zeros(0), torch.zeros(0, 2, dtype=torch.long)
        return torch.cat(self.kl), torch.cat(self.where)

    def finish(
        self, seqs: Sequence[list[int]], tokenizer: Any, tol: Tolerances, top_k: int
    ) -> TokenKL:
        kl, where = self.per_token()
        text = TokenText(tokenizer)
        n = len(kl)
        if n == 0:
            return TokenKL(0, 0.0, 0.0, 0.0, 0.0, [], [], [], [])
        q = torch.quantile(kl.double(), torch.tensor([0.5, 0.95], dtype=torch.float64))
        mean = float(kl.double().mean())
        return TokenKL(
            n_tokens=n,
            mean=mean,
            p50=float(q[0]),
            p95=float(q[1]),
            max=float(kl.max()),
            top_contexts=self._contexts(kl, where, seqs, text, tol, top_k),
            promoted=self._shifts(n, text, tol, top_k, sign=1.0),
            demoted=self._shifts(n, text, tol, top_k, sign=-1.0),
            triggers=self._triggers(text, tol, top_k),
        )

    def _contexts(
        self,
        kl: Tensor,
        where: Tensor,
        seqs: Sequence[list[int]],
        text: TokenText,
        tol: Tolerances,
        top_k: int,
    ) -> list[KLContext]:
        top = torch.cat(self.top)  # [n, 4, n_top]
        out = []
        for i in kl.topk(min(top_k, len(kl))).indices.tolist():
            if float(kl[i]) <= tol.kl:
                break
            t, p = (int(v) for v in where[i])
            ids_a, p_a, ids_b, p_b = top[i]
            out.append(
                KLContext(
                    text_index=t,
                    position=p,
                    context=window(text, seqs[t], p),
                    token=text([seqs[t][p]])[0],
                    kl=float(kl[i]),
                    top_a=token_scores(text, ids_a, p_a),
                    top_b=token_scores(text, ids_b, p_b),
                )
            )
        return out

    def _shifts(
        self, n: int, text: TokenText, tol: Tolerances, top_k: int, sign: float
    ) -> list[TokenShift]:
        p_a, p_b = self.p_a / n, self.p_b / n
        vals, ids = (sign * (p_b - p_a)).topk(min(top_k, self.vocab))
        return [
            TokenShift(
                token=text([i])[0],
                id=i,
                mean_prob_change=float(p_b[i] - p_a[i]),
                mean_logprob_change=float(self.dlogp[i] / n),
                mean_prob_a=float(p_a[i]),
                mean_prob_b=float(p_b[i]),
            )
            for v, i in zip(vals.tolist(), ids.tolist(), strict=True)
            # raised (lowered) means both: the mean probability and the mean log-probability
            if v > tol.prob and sign * float(self.dlogp[i]) > 0
        ]

    def _triggers(
        self, text: TokenText, tol: Tolerances, top_k: int, min_count: int = 2
    ) -> list[TriggerToken]:
        mean = torch.where(
            self.count_in >= min_count, self.kl_in / self.count_in.clamp_min(1), -1.0
        )
        vals, ids = mean.topk(min(top_k, self.vocab))
        return [
            TriggerToken(text([i])[0], i, int(self.count_in[i]), v)
            for v, i in zip(vals.tolist(), ids.tolist(), strict=True)
            if v > tol.kl
        ]
