"""Head detection: scores are attention means in [0, 1], exactly 1 for a head that does only the
behaviour, and SmolLM2 has the induction and previous-token heads a trained model is known for."""

from __future__ import annotations

import pytest
import torch

from aimri.circuits.heads import (
    HeadScores,
    induction_score,
    previous_token_score,
    repeated_random_tokens,
    score_heads,
)


def one_hot_pattern(keys: list[int]) -> torch.Tensor:
    """[1, 1, query, key]: query q attends only to keys[q]."""
    n = len(keys)
    return torch.eye(n)[keys].reshape(1, 1, n, n)


def causal_uniform(n: int) -> torch.Tensor:
    p = torch.tril(torch.ones(n, n))
    return (p / p.sum(-1, keepdim=True)).reshape(1, 1, n, n)


def test_a_head_doing_only_the_behaviour_scores_exactly_one():
    prev = one_hot_pattern([0, *range(9)])  # q attends to q − 1 (q = 0 to itself)
    assert previous_token_score(prev).tolist() == [1.0]
    n = 4  # [BOS, a b c d, a b c d]: query 5 (a) → key 2 (b), ..., query 8 (d) → key 5 (a)
    induct = one_hot_pattern([0, 0, 0, 0, 0, 2, 3, 4, 5])
    assert induction_score(induct, n, start=1).tolist() == [1.0]
    assert induction_score(prev[..., :9, :9], n, start=1).tolist() == [0.0]
    uniform = causal_uniform(9)
    assert 0 < induction_score(uniform, n, start=1).item() < 0.25
    assert previous_token_score(uniform).item() == pytest.approx(
        sum(1 / (q + 1) for q in range(1, 9)) / 8
    )


def test_top_names_the_best_heads_first():
    scores = HeadScores(
        previous_token=torch.tensor([[0.1, 0.9], [0.2, 0.3]]),
        induction=torch.tensor([[0.0, 0.1], [0.7, 0.4]]),
    )
    assert [(h.layer, h.head) for h in scores.top(2)] == [(1, 0), (1, 1)]
    assert scores.top(1, "previous_token")[0] == (0, 1, pytest.approx(0.9))
    assert len(scores.top(10)) == 4


def test_scores_of_a_tiny_model_lie_in_the_unit_interval(tiny_model):
    m = tiny_model("llama")
    text = torch.randint(0, m.info.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = score_heads(m, text, length=8, batch=2)
    for s in (scores.previous_token, scores.induction):
        assert s.shape == (m.info.n_layers, m.info.n_heads)
        assert bool(((s >= 0) & (s <= 1)).all())
    ids = repeated_random_tokens(m, length=8, batch=2)
    assert ids.shape == (2, 17) and torch.equal(ids[:, 1:9], ids[:, 9:])
    assert not set(ids[:, 1:].flatten().tolist()) & set(m.tokenizer.all_special_ids)


@pytest.mark.e2e
def test_smollm2_has_induction_and_previous_token_heads(smollm2):
    from aimri.config import CorpusConfig
    from aimri.corpus.contexts import take_contexts

    text = take_contexts(smollm2.tokenizer, CorpusConfig(max_tokens=4 * 128))
    scores = score_heads(smollm2, text, batch=4)
    # Measured (8 sequences, seeds 0-2): induction L18H6 0.89-0.90, L17H3 0.75-0.80, 10 heads
    # above 0.3, all in layers 17-23; previous-token L16H0 0.80, L11H1 0.75, L1H2 0.64.
    assert scores.top(1)[0].score > 0.6
    assert all(h.score > 0.3 and 15 <= h.layer <= 25 for h in scores.top(5))
    assert scores.top(1, "previous_token")[0].score > 0.6
    assert len([h for h in scores.top(10, "previous_token") if h.score > 0.5]) >= 3
