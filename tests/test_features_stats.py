"""Feature statistics: streamed numbers equal brute force, examples are where they claim to be."""

from __future__ import annotations

import pytest
import torch

from aimri.config import CorpusConfig, DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.errors import AimriError
from aimri.features.basis import DictionaryBasis, RandomBasis, ResidualBasis
from aimri.features.effects import logit_effects
from aimri.features.records import explain_split, score_split
from aimri.features.sources import ModelContexts
from aimri.features.stats import ExampleSpec, feature_statistics

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from tests.conftest import TRAINING_TEXT

    model = tiny_model("llama")
    path = tmp_path_factory.mktemp("stats") / "corpus.txt"
    path.write_text(
        "\n\n".join(
            f"Doc {i}: " + " ".join(TRAINING_TEXT[(i * 7 + j) % 5] for j in range(5))
            for i in range(60)
        )
    )
    corpus = CorpusConfig(source=str(path), ctx_len=24, max_tokens=24 * 40)
    d = build_dictionary(DictConfig(d_in=32, d_sae=48, k=3, site=SITE), seed=1)
    return model, corpus, DictionaryBasis(d)


def _all_acts(model, corpus, basis, batch_size=16):
    """Brute force: [contexts, T, F] activations with sinks zeroed, the token ids, and the
    [contexts, T] sink mask."""
    src = ModelContexts(model, corpus, SITE, batch_size=batch_size)
    acts, toks, sinks = [], [], []
    for b in src:
        B, T, _ = b.acts.shape
        a = basis.activations(b.acts.reshape(B * T, -1)).view(B, T, -1)
        assert b.sink[:, 0].all(), "position 0 is always a sink"
        a[b.sink] = 0
        acts.append(a)
        toks.append(b.tokens)
        sinks.append(b.sink)
    return torch.cat(acts), torch.cat(toks), torch.cat(sinks)


def test_density_max_and_top_examples_equal_brute_force(setup):
    model, corpus, basis = setup
    fs = feature_statistics(basis, model, ModelContexts(model, corpus, SITE))
    acts, _, sink = _all_acts(model, corpus, basis)
    body = acts[~sink]
    assert fs.n_tokens == len(body)
    assert fs.dead_fraction == pytest.approx(float(((body > 0).sum(0) == 0).float().mean()))
    for f in fs.features:
        col = acts[:, :, f.index]
        assert f.density == pytest.approx(float((body[:, f.index] > 0).float().mean()))
        assert f.max_act == pytest.approx(float(col.max()), abs=1e-4)
        assert sum(f.hist_counts) == int((body[:, f.index] > 0).sum())
        top = f.of_kind("top")
        per_ctx = col.amax(1)
        expected = per_ctx[per_ctx > 0].sort(descending=True).values[: len(top)]
        assert [e.max_act for e in top] == pytest.approx(expected.tolist(), abs=1e-4)
        for e in top + f.of_kind("quantile"):  # windows hold this feature's real activations
            real = col[e.context, e.start : e.start + len(e.acts)].clamp_min(0)
            assert e.acts == pytest.approx(real.tolist(), abs=1e-4)
            assert e.active


def test_negatives_are_silent_and_splits_are_disjoint(setup):
    model, corpus, basis = setup
    fs = feature_statistics(basis, model, ModelContexts(model, corpus, SITE), features=range(12))
    assert [f.index for f in fs.features] == list(range(12))
    for f in fs.features:
        if f.density == 0:
            assert not f.of_kind("top", "quantile")
            continue
        for e in f.of_kind("random_negative", "hard_negative"):
            assert not e.active
        seen = {id(e) for e in explain_split(f)}
        held_out = score_split(f)
        assert not seen & {id(e) for e in held_out.positives + held_out.negatives + held_out.hard}
        assert all(e.kind == "quantile" for e in held_out.positives)


def test_statistics_do_not_depend_on_the_batching(setup):
    model, corpus, basis = setup
    a = feature_statistics(basis, model, ModelContexts(model, corpus, SITE, batch_size=16))
    b = feature_statistics(basis, model, ModelContexts(model, corpus, SITE, batch_size=5))
    for fa, fb in zip(a.features, b.features, strict=True):
        assert fa.density == fb.density and fa.hist_counts == fb.hist_counts
        assert [e.max_act for e in fa.of_kind("top")] == [e.max_act for e in fb.of_kind("top")]


def test_logit_effects_rank_tokens_as_the_unembedding_does(setup):
    model, _, basis = setup
    dirs = basis.write_directions()[:4]
    eff = logit_effects(model, dirs, k=5)
    with torch.no_grad():
        full = model.layout.unembed(model.layout.final_norm(dirs)) - model.layout.unembed(
            torch.zeros(1, dirs.shape[1])
        )
    assert torch.equal(eff.promoted, full.topk(5, dim=-1).indices)
    assert torch.equal(eff.suppressed, (-full).topk(5, dim=-1).indices)


def test_residual_coordinates_and_random_directions_run_through_the_same_code(setup):
    model, corpus, _ = setup
    src = ModelContexts(model, corpus, SITE)
    mean = torch.zeros(32)
    spec = ExampleSpec(n_top=5, per_bucket=2, n_random_negative=4)
    for basis in (ResidualBasis(SITE, mean), RandomBasis(SITE, mean, 16)):
        fs = feature_statistics(basis, model, src, features=range(4), spec=spec)
        assert fs.basis.kind == basis.info.kind
        for f in fs.features:
            assert len(f.of_kind("top")) == 5 and len(f.of_kind("random_negative")) == 4
            quiet = max(e.max_act for e in f.of_kind("random_negative"))
            assert quiet <= f.of_kind("top")[-1].max_act  # negatives are the quietest windows


def test_bad_input_is_refused_clearly(setup, tiny_model):
    model, corpus, basis = setup
    src = ModelContexts(model, corpus, SITE)
    with pytest.raises(AimriError, match="out of range: .* features 0-47"):
        feature_statistics(basis, model, src, features=[48])
    wide = DictionaryBasis(build_dictionary(DictConfig(d_in=64, d_sae=8, k=2, site=SITE)))
    with pytest.raises(AimriError, match="width 64.*d_model 32"):
        feature_statistics(wide, model, src)
    far = DictionaryBasis(
        build_dictionary(DictConfig(d_in=32, d_sae=8, k=2, site="blocks.9.hook_resid_post"))
    )
    with pytest.raises(AimriError, match="lacks"):
        feature_statistics(far, model, src)
