"""Steering: each edit does exactly what it claims, on tiny random models; every test can fail.

Identities (strength 0, clamping a feature to its own value, ablating a silent feature, leaving
the `steering` block) must hold exactly or to float tolerance; real edits must move what they
claim to move (the site by strength·unit, the dictionary's reading to the clamped value, KL
with strength); generation with the KV cache must equal generation without it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json

import pytest
import torch

from aimri import AimriError
from aimri.config import DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.steer import (
    AblateFeature,
    AddDirection,
    ClampFeature,
    diff_of_means,
    feature_activation,
    fit_probe,
    generate,
    kl_on_texts,
    mean_activations,
    mean_difference,
    probe_direction,
    site_norm,
    steering,
    sweep,
)
from aimri.steer.candidates import (
    Candidate,
    TopTokens,
    concept_candidates,
    concept_token_ids,
    top_tokens,
)
from aimri.steer.compare import AddRows, generate_rows, random_directions, text_effect
from aimri.steer.generate import prompt_ids
from aimri.steer.golden_gate import Measures, Probed, StrengthRow, demonstrate, mention_share

SITE = "blocks.1.hook_resid_post"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python is a programming language.",
    "Monday, Tuesday, Wednesday.",
]


def ids(model, n: int = 2, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, model.info.vocab_size, (n, length), generator=g)


def sae(d_in: int = 32, d_sae: int = 64, k: int = 8, site: str = SITE, seed: int = 0):
    return build_dictionary(DictConfig(d_in=d_in, d_sae=d_sae, k=k, site=site), seed=seed).eval()


def transcoder(layer: int = 1):
    cfg = DictConfig(
        d_in=32,
        d_sae=64,
        k=8,
        transcoder=True,
        site=f"blocks.{layer}.ln2.hook_normalized",
        site_out=f"blocks.{layer}.hook_mlp_out",
    )
    d = build_dictionary(cfg, seed=3).eval()
    with torch.no_grad():
        d.b_enc.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    return d


def site_acts(model, x, site, edits=(), prompt_len=None):
    with steering(model, edits, prompt_len=prompt_len):
        return model.run(x, read=[site]).acts[site]


class HashEmbedder:
    """Deterministic stand-in for MiniLM: equal texts map to equal unit vectors, different
    ones to nearly orthogonal ones."""

    def embed(self, texts):
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(64, generator=torch.Generator().manual_seed(seed)))
        out = torch.stack(rows) if rows else torch.zeros(0, 64)
        return torch.nn.functional.normalize(out, dim=-1)


# --- AddDirection -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adding_at_strength_zero_is_exactly_the_identity(tiny_model, family):
    m = tiny_model(family)
    x = ids(m)
    clean = m.run(x).logits
    direction = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(0))
    with steering(m, [AddDirection(SITE, direction, 0.0)]):
        steered = m.run(x).logits
    assert torch.equal(steered, clean)


@pytest.mark.parametrize("site", [SITE, "blocks.0.hook_mlp_out", "blocks.2.hook_resid_mid"])
def test_adding_moves_the_site_by_exactly_strength_times_unit_direction(tiny_model, site):
    m = tiny_model("llama")
    x = ids(m)
    direction = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(5)) * 7
    edit = AddDirection(site, direction, 2.5, scale=3.0)
    moved = site_acts(m, x, site, [edit]) - site_acts(m, x, site)
    expected = 7.5 * direction / direction.norm()
    torch.testing.assert_close(moved, expected.expand_as(moved), atol=1e-5, rtol=0)


def test_positions_restrict_the_edit_to_the_prompt_or_the_generated_tokens(tiny_model):
    m = tiny_model("llama")
    x = ids(m)
    clean = m.run(x).logits
    direction = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(6))
    with steering(m, [AddDirection(SITE, direction, 5.0, positions="generated")], prompt_len=8):
        late = m.run(x).logits
    with steering(m, [AddDirection(SITE, direction, 5.0, positions="prompt")], prompt_len=8):
        early = m.run(x).logits
    assert torch.equal(late[:, :8], clean[:, :8])  # causal: nothing before position 8 moved
    assert not torch.allclose(late[:, 8:], clean[:, 8:], atol=1e-3)
    assert not torch.allclose(early[:, 8:], clean[:, 8:], atol=1e-3)
    with pytest.raises(AimriError, match="prompt length"), steering(m, [
        AddDirection(SITE, direction, 1.0, positions="generated")
    ]):  # fmt: skip
        pass


def test_bad_edits_are_refused_with_a_reason(tiny_model):
    m = tiny_model("llama")
    with pytest.raises(AimriError, match="not found"), steering(m, [
        AddDirection("blocks.9.hook_resid_post", torch.ones(32), 1.0)
    ]):  # fmt: skip
        pass
    with pytest.raises(AimriError, match="width 16"), steering(m, [
        AddDirection(SITE, torch.ones(16), 1.0)
    ]):  # fmt: skip
        pass
    with pytest.raises(AimriError, match="non-zero"):
        AddDirection(SITE, torch.zeros(32), 1.0)
    with pytest.raises(AimriError, match="out of range"):
        ClampFeature(sae(), 64, 1.0)


# --- ClampFeature / AblateFeature ---------------------------------------------------------


def firing(d, acts, position):
    """Features of `d` active at `position` of the first row of `acts`."""
    return [f for f in range(d.cfg.d_sae) if feature_activation(d, acts[0, position], f) > 0]


def test_clamping_a_feature_to_its_own_value_is_the_identity(tiny_model):
    m = tiny_model("llama")
    d = sae()
    x = ids(m, n=1)
    T = x.shape[1]
    clean = m.run(x).logits
    acts = site_acts(m, x, SITE)
    features = firing(d, acts, T - 1)
    assert features
    for f in features[:4]:  # the value is one number: edit only the last position
        own = float(feature_activation(d, acts[0, T - 1], f))
        with steering(m, [ClampFeature(d, f, own, positions="generated")], prompt_len=T - 1):
            same = m.run(x).logits
        torch.testing.assert_close(same, clean, atol=1e-5, rtol=0)
        with steering(m, [ClampFeature(d, f, own + 5.0, positions="generated")], prompt_len=T - 1):
            assert not torch.allclose(m.run(x).logits, clean, atol=1e-3)


def test_ablating_a_silent_feature_changes_nothing_and_a_firing_one_changes_logits(tiny_model):
    m = tiny_model("llama")
    d = sae()
    x = ids(m)
    clean = m.run(x).logits
    acts = site_acts(m, x, SITE)
    a = torch.stack([feature_activation(d, acts, f) for f in range(64)])
    silent = [f for f in range(64) if not bool(a[f].any())]
    busy = int(a.gt(0).sum((1, 2)).argmax())
    assert silent
    with steering(m, [AblateFeature(d, silent[0])]):
        assert torch.equal(m.run(x).logits, clean)
    with steering(m, [AblateFeature(d, busy)]):
        assert not torch.allclose(m.run(x).logits, clean, atol=1e-3)


def test_clamping_makes_the_dictionary_read_the_value_at_the_patched_site(tiny_model):
    # Exact case of the claim in edits.py: orthonormal rows, encoder = decoder, and a feature
    # that is always active, so its pre-activation moves by exactly value − activation.
    m = tiny_model("llama")
    d = sae(d_sae=16, k=4)
    q, _ = torch.linalg.qr(torch.randn(32, 16, generator=torch.Generator().manual_seed(7)))
    f = 3
    with torch.no_grad():
        d.W_dec.copy_(q.T)
        d.W_enc.copy_(q.T)
        d.b_enc[f] = 1e3
    x = ids(m)
    before = site_acts(m, x, SITE)
    value = 3 * float(d.pre_activations(before.reshape(-1, 32)).abs().max())
    after = site_acts(m, x, SITE, [ClampFeature(d, f, value)])
    torch.testing.assert_close(
        feature_activation(d, after, f), torch.full(after.shape[:2], value), rtol=1e-5, atol=0
    )
    others = [g for g in range(16) if g != f]
    dense = lambda t: d.encode(t.reshape(-1, 32)).to_dense(16)[:, others]  # noqa: E731
    torch.testing.assert_close(dense(after), dense(before), atol=1e-3, rtol=0)


def test_transcoder_clamp_reads_the_input_and_writes_the_output(tiny_model):
    m = tiny_model("llama")
    d = transcoder()
    x = ids(m, n=1)
    T = x.shape[1]
    clean = m.run(x, read=[d.cfg.site, d.cfg.site_out])
    features = firing(d, clean.acts[d.cfg.site], T - 1)
    assert features
    f = features[0]
    own = float(feature_activation(d, clean.acts[d.cfg.site][0, T - 1], f))
    with steering(m, [ClampFeature(d, f, own, positions="generated")], prompt_len=T - 1):
        torch.testing.assert_close(m.run(x).logits, clean.logits, atol=1e-5, rtol=0)
    out = site_acts(m, x, d.cfg.site_out, [ClampFeature(d, f, own + 2.0)])
    a = feature_activation(d, clean.acts[d.cfg.site], f)
    expected = clean.acts[d.cfg.site_out] + (own + 2.0 - a)[..., None] * d.W_dec[f].detach()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    no_out = build_dictionary(DictConfig(d_in=32, d_sae=8, k=2, transcoder=True, site=SITE))
    with pytest.raises(AimriError, match="site_out"), steering(m, [ClampFeature(no_out, 0, 1.0)]):
        pass


# --- the steering block and generation ----------------------------------------------------


def test_leaving_the_steering_block_removes_every_hook(tiny_model):
    m = tiny_model("llama")
    x = ids(m)
    before = m.run(x).logits
    d = sae()
    edits = [AddDirection(SITE, torch.ones(32), 4.0), ClampFeature(d, 1, 9.0)]
    with steering(m, edits):
        inside = m.run(x).logits
    after = m.run(x).logits
    with pytest.raises(RuntimeError, match="boom"), steering(m, edits):
        raise RuntimeError("boom")
    assert not torch.allclose(inside, before, atol=1e-3)
    assert torch.equal(after, before)
    assert torch.equal(m.run(x).logits, before)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_generation_with_the_kv_cache_equals_generation_without(tiny_model, positions):
    m = tiny_model("llama")
    d = sae()
    prompts = ["The quick brown fox", "def add(a, b):\n", "Monday"]
    edit = ClampFeature(d, 5, 40.0, positions=positions)
    cached = generate(m, prompts, [edit], max_new_tokens=8, batch_size=2)
    uncached = generate(m, prompts, [edit], max_new_tokens=8, batch_size=2, use_cache=False)
    plain = generate(m, prompts, max_new_tokens=8, batch_size=2)
    assert [g.new_ids for g in cached] == [g.new_ids for g in uncached]
    assert [g.new_ids for g in cached] != [g.new_ids for g in plain]
    one_by_one = [generate(m, [p], [edit], max_new_tokens=8)[0] for p in prompts]
    assert [g.new_ids for g in one_by_one] == [g.new_ids for g in cached]  # padding is inert
    assert all(len(g.new_ids) > 0 and g.prompt_ids[0] == prompt_ids(m, "")[0] for g in cached)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_model):
    m = tiny_model("llama")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(m, ["The quick"], max_new_tokens=6, temperature=1.0, seed=3)
    b = generate(m, ["The quick"], max_new_tokens=6, temperature=1.0, seed=3)
    c = [generate(m, ["The quick"], max_new_tokens=6, temperature=1.0, seed=s)[0] for s in range(4)]
    assert a == b and len({tuple(g.new_ids) for g in c}) > 1
    assert torch.equal(torch.get_rng_state(), state)


# --- directions ---------------------------------------------------------------------------


def test_difference_of_means_and_probe_recover_a_planted_direction():
    g = torch.Generator().manual_seed(8)
    planted = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    neg = torch.randn(500, 64, generator=g)
    pos = torch.randn(500, 64, generator=g) + 3.0 * planted
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(mean_difference(pos, neg), planted, dim=0)) > 0.95
    labels = torch.cat([torch.ones(500), torch.zeros(500)])
    probe = fit_probe(torch.cat([pos, neg]), labels)
    assert float(cos(probe, planted, dim=0)) > 0.9
    assert abs(float(probe.norm()) - 1) < 1e-5


def test_diff_of_means_reads_token_means_without_bos_and_the_probe_separates(tiny_model):
    # At blocks.0.hook_resid_pre the activations are the token embeddings, so the expected
    # difference can be computed from the embedding matrix alone (texts of several lengths).
    m = tiny_model("llama")
    E = m.hf.get_input_embeddings().weight.detach()
    pos, neg = TEXTS[:2], [*TEXTS[2:], "import os"]

    def mean_embedding(texts):
        return torch.stack([E[prompt_ids(m, t)[1:]].mean(0) for t in texts]).mean(0)

    got = diff_of_means(m, "blocks.0.hook_resid_pre", pos, neg)
    torch.testing.assert_close(got, mean_embedding(pos) - mean_embedding(neg), atol=1e-5, rtol=0)
    probe = probe_direction(m, SITE, pos + neg, [1, 1, 0, 0])
    proj = mean_activations(m, SITE, pos + neg) @ probe
    assert float(proj[:2].min()) > float(proj[2:].max())


# --- measurement --------------------------------------------------------------------------


def test_kl_is_zero_at_strength_zero_and_grows_with_strength(tiny_model):
    m = tiny_model("llama")
    direction = torch.randn(32, generator=torch.Generator().manual_seed(9))
    norm = site_norm(m, SITE, TEXTS)
    kls = [
        kl_on_texts(m, [AddDirection(SITE, direction, s, scale=norm)], TEXTS)
        for s in (0.0, 0.1, 0.5, 2.0)
    ]
    assert kls[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(kls)), kls


def test_sweep_measures_the_feature_the_concept_and_the_side_effects(tiny_model):
    m = tiny_model("llama")
    d = sae()
    f = 7
    norm = site_norm(m, SITE, TEXTS)
    result = sweep(
        m,
        lambda s: AddDirection(SITE, d.W_dec[f].detach(), s, scale=norm),
        [0.0, 1.0, 4.0],
        ["The quick brown", "Python is"],
        concept="fox",
        neutral_texts=TEXTS,
        feature=(d, f),
        max_new_tokens=5,
        embedder=HashEmbedder(),
    )
    base, zero, one, four = result.baseline, *result.rows
    assert base.strength is None and base.kl == 0.0 and base.concept_delta == 0.0
    assert [p.strength for p in result.rows] == [0.0, 1.0, 4.0]
    assert zero.kl == 0.0 and zero.generations == base.generations
    assert zero.feature_act == base.feature_act
    assert zero.kl < one.kl < four.kl
    acts = [p.feature_act or 0.0 for p in (base, one, four)]
    assert acts[0] < acts[1] < acts[2], acts
    assert all(p.perplexity > 1 and 0 < p.distinct_tokens <= 1 for p in result.rows)
    assert one.concept_delta == pytest.approx(one.concept_score - base.concept_score)


class StemEmbedder(HashEmbedder):
    """Words with the same first four letters get the same vector (bridge, bridges)."""

    def embed(self, texts):
        return super().embed([t[:4] for t in texts])


def test_top_tokens_in_chunks_equal_one_pass_and_the_dictionary_itself():
    d = sae()
    g = torch.Generator().manual_seed(11)
    x = torch.randn(301, 32, generator=g) * 3
    tokens = torch.randint(0, 500, (301,), generator=g)
    whole = top_tokens(d, [(tokens, x)], k=5)
    parts = top_tokens(d, [(tokens[i : i + 37], x[i : i + 37]) for i in range(0, 301, 37)], k=5)
    for a, b in zip(whole, parts, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    acts = torch.stack([feature_activation(d, x, f) for f in range(64)], 1)  # [N, F]
    torch.testing.assert_close(whole.max_act, acts.max(0).values.clamp_min(0))
    assert torch.equal(whole.count, (acts > 0).sum(0))
    f = int(whole.count.argmax())
    assert whole.top_ids[f, 0] == tokens[acts[:, f].argmax()]
    assert (whole.top_ids[whole.count == 0] == -1).all()


def test_concept_rule_keeps_rare_features_that_read_forms_of_one_word():
    vocab = ["", " bridge", " bridges", " Bridge", " (", " cat", " tax", " run", " sky", " either"]
    vocab += [" both", " self", " def", " within", " pen", " ice"]
    word = {w.strip(): i for i, w in enumerate(vocab) if w.strip()}

    def row(*ws):
        ids = [word[w] for w in ws]
        return ids + [-1] * (8 - len(ids))

    top_ids = torch.tensor(
        [
            row("bridge", "bridges", "Bridge", "bridge", "bridges", "bridge", "bridge", "bridge"),
            row(*["("] * 8),  # punctuation, not a concept
            row("cat", "tax", "run", "sky", "pen", "ice", "cat", "tax"),  # incoherent
            row("bridge", "bridges", "bridge", "bridges", "bridge", "bridge", "bridge", "bridge"),
            row(*["bridge"] * 8),  # one form only: a token detector
            row(
                "bridge", "either", "both", "self", "def", "within", "either", "both"
            ),  # stop words
            row("bridge", "bridges", "bridge"),  # too few examples
        ]
    )
    count = torch.tensor([10, 10, 10, 900, 10, 10, 10])  # feature 3 fires everywhere
    tops = TopTokens(10_000, count, torch.ones(7), top_ids)
    cands = concept_candidates(tops, lambda ids: vocab[ids[0]], StemEmbedder())
    assert [c.index for c in cands] == [0, 2]
    assert cands[0].words == ["bridge", "bridges"] and cands[0].coherence == pytest.approx(1.0)
    assert cands[0].density == pytest.approx(1e-3) and cands[0].share == 1.0


def test_concept_token_ids_are_single_tokens_that_spell_the_word(tiny_model):
    m = tiny_model("llama")
    ids = concept_token_ids(m.tokenizer, ["the", "zzqxw"])
    assert ids and all(m.tokenizer.decode([i]).strip().lower() == "the" for i in ids)


def test_adding_rows_is_the_identity_at_zero_and_each_row_equals_adding_it_alone(tiny_model):
    m = tiny_model("llama")
    x = ids(m, n=1).repeat(3, 1)
    clean = m.run(x).logits
    g = torch.Generator().manual_seed(12)
    dirs = torch.randn(3, 32, generator=g)
    with steering(m, [AddRows(SITE, torch.zeros(3, 32))]):
        assert torch.equal(m.run(x).logits, clean)
    with steering(m, [AddRows(SITE, dirs)]):
        batched = m.run(x).logits
    for b in range(3):
        with steering(m, [AddDirection(SITE, dirs[b], float(dirs[b].norm()))]):
            alone = m.run(x[:1]).logits
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-4, rtol=0)
    plain = generate(m, TEXTS[:2], max_new_tokens=5)
    rows = generate_rows(m, SITE, torch.zeros(2, 32), TEXTS[:2], 5)
    assert [[g.new_ids for g in r] for r in rows] == [[g.new_ids for g in plain]] * 2


def test_a_planted_concept_direction_beats_random_directions_and_a_random_one_does_not(
    tiny_model,
):
    m = tiny_model("llama")
    site = "blocks.2.hook_resid_post"  # the last block: the unembedding reads it next
    concept = concept_token_ids(m.tokenizer, ["the"])
    planted = m.hf.get_output_embeddings().weight.detach()[concept].mean(0)
    rand = random_directions(32, 40, seed=3)
    norm = 2 * site_norm(m, site, TEXTS)
    dirs = torch.cat([planted[None] / planted.norm(), rand])
    effect = text_effect(m, site, norm * dirs, TEXTS, [concept])
    base = text_effect(m, site, torch.zeros(1, 32), TEXTS, [concept])
    rise = (effect.concept_logprob - base.concept_logprob)[:, 0]
    p95 = float(rise[21:].quantile(0.95))  # 20 random directions as the reference
    assert float(rise[0]) > p95 + 1.0
    held_out = rise[1:21]  # 20 other random directions: about 5% land beyond the reference
    assert float((held_out > p95).float().mean()) <= 0.2
    assert base.nll[0] < effect.nll.max()  # adding that much hurts the text somewhere


def test_the_verdict_needs_fluency_a_rise_beyond_random_and_mentions():
    def m(lp, sim, mentions=1.0, distinct=0.8):
        return Measures(lp, sim, mentions, distinct)

    def row(feature, fluent=True, p95=None):
        p95 = p95 or m(1.0, 0.05)
        return StrengthRow(1.0, feature, 5.0, fluent, [], [], p95, [], [])

    assert row(m(2.0, 0.1)).demonstrates
    assert not row(m(2.0, 0.1), fluent=False).demonstrates
    assert not row(m(0.5, 0.1)).demonstrates  # probability not beyond random
    assert not row(m(2.0, 0.01)).demonstrates  # similarity not beyond random
    assert not row(m(2.0, 0.1, mentions=0.25)).demonstrates
    gens = [generate_stub("Bridges at dawn"), generate_stub("abridged"), generate_stub("a BRIDGE")]
    assert mention_share(gens, ["bridge"]) == pytest.approx(2 / 3)


def generate_stub(text):
    from aimri.steer.generate import Generation

    return Generation("p", text, [0], [1])


def test_demonstrate_measures_the_feature_neurons_and_random_directions(tiny_model, monkeypatch):
    import aimri.steer.golden_gate as golden_gate

    monkeypatch.setattr(golden_gate, "MAX_NEW_TOKENS", 6)
    m = tiny_model("llama")
    d = sae()
    words = ["the", "quick"]
    cand = Candidate(5, words, 1e-3, 2.0, 1.0, 0.5)
    probed = Probed(cand, concept_token_ids(m.tokenizer, words), 1.0, 0.0)
    norm = site_norm(m, SITE, TEXTS)
    demo = demonstrate(
        m, SITE, d, probed, norm, embedder=HashEmbedder(), strengths=(0.0, 1.0), n_random=3,
        n_neurons=2, prompts=TEXTS[:2],
    )  # fmt: skip
    zero, one = demo.rows
    assert [len(r.random) for r in demo.rows] == [3, 3] and len(one.neurons) == 2
    assert zero.feature.logprob_rise == pytest.approx(0.0, abs=1e-6)
    assert zero.feature.similarity_rise == pytest.approx(0.0, abs=1e-6)
    assert [g.text for g in zero.generations] == [g.text for g in demo.baseline_generations]
    assert one.generations != zero.generations and 0 < one.feature.distinct <= 1
    assert demo.demonstrated_at in (None, 1.0)


# --- the stage function -------------------------------------------------------------------


def test_steer_stage_clamps_adds_and_refuses_ambiguous_configs(
    tiny_model, tiny_model_dir, tmp_path
):
    from safetensors.torch import save_file

    from aimri.config import ModelConfig, SteerConfig
    from aimri.dicts.formats import save_dictionary
    from aimri.steer import steer

    m = tiny_model("llama")
    save_dictionary(sae(), tmp_path / "sae")
    common = {
        "model": ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        "prompts": ("The quick brown",),
        "max_new_tokens": 4,
    }
    clamp = SteerConfig(
        dictionary=tmp_path / "sae", feature=5, strengths=(0.0, 2.0), concept="fox", **common
    )
    r = steer(clamp, model=m, embedder=HashEmbedder())
    records = json.loads(json.dumps(r.records()))
    assert [row["strength"] for row in records] == [None, 0.0, 2.0]
    assert records[0]["generations"][0]["prompt"] == "The quick brown"
    assert [p.strength for p in r.rows] == [0.0, 2.0]
    assert r.rows[0].feature_act == 0.0  # clamped to 0 × its maximum
    assert (r.rows[1].feature_act or 0.0) > (r.baseline.feature_act or 0.0)
    save_file({"direction": torch.ones(32)}, str(tmp_path / "v.safetensors"))
    add = SteerConfig(
        direction=tmp_path / "v.safetensors", site=SITE, mode="add", strengths=(0.0,), **common
    )
    r = steer(add, model=m, embedder=HashEmbedder())
    assert r.rows[0].kl == 0.0 and r.rows[0].feature_act is None and r.concept
    with pytest.raises(AimriError, match="either --dictionary"):
        steer(SteerConfig(**common), model=m)
    with pytest.raises(AimriError, match="needs --mode add"):
        steer(SteerConfig(direction=tmp_path / "v.safetensors", site=SITE, **common), model=m)


def test_the_scan_stage_reports_a_verdict_or_why_there_is_none(
    tiny_model, tiny_model_dir, tmp_path, monkeypatch
):
    import aimri.scanner.steering as stage
    import aimri.steer.golden_gate as golden_gate
    from aimri.config import CorpusConfig, ModelConfig, ScanConfig
    from aimri.dicts.formats import save_dictionary
    from aimri.scanner.layout import RunLayout, ScanRun
    from aimri.scanner.stages import STAGES
    from aimri.scanner.summary import findings_from, summary_from

    m = tiny_model("llama")
    save_dictionary(sae(), tmp_path / "sae")
    monkeypatch.setattr(stage, "N_TOKENS", 1024)
    monkeypatch.setattr(stage, "load_embedder", HashEmbedder)
    (tmp_path / "corpus.txt").write_text("\n\n".join(TEXTS * 40))
    cfg = ScanConfig(
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        corpus=CorpusConfig(source=str(tmp_path / "corpus.txt"), ctx_len=32, max_tokens=1024),
    )
    run = ScanRun(cfg, m, RunLayout(tmp_path), {"dictionary": {"path": str(tmp_path / "sae")}})
    none = stage.steering_stage(run)  # a random model: no concept
    assert "no concrete-concept feature" in none["skipped"] and none["n_sinks"] >= 32
    planted = [Candidate(f, ["the", "quick"], 1e-3, 1.0, 1.0, 0.5) for f in range(12)]
    monkeypatch.setattr(stage, "concept_candidates", lambda *a, **k: planted)
    monkeypatch.setattr(stage, "choose", functools.partial(stage.choose, n=2))
    monkeypatch.setattr(golden_gate, "MAX_NEW_TOKENS", 4)
    monkeypatch.setattr(stage, "demonstrate", functools.partial(stage.demonstrate, n_random=3))
    r = json.loads(json.dumps(stage.steering_stage(run)))
    assert r["feature"] in range(12) and [row["strength"] for row in r["rows"]] == [
        0.25, 0.5, 0.75
    ]  # fmt: skip
    assert r["unit"] > 0 and r["verdict"].startswith(("Demonstrated", "No demonstration"))
    assert all(len(row["generations"]) == 4 for row in r["rows"])
    found = [f for f in findings_from({"steering": r}, STAGES) if f.id == "steering-demonstration"]
    assert found and found[0].summary == r["verdict"]
    assert summary_from({"steering": r}, found, STAGES)["checked"][0]["stage"] == "steering"


# --- end to end on the real model ---------------------------------------------------------


@pytest.mark.e2e
def test_steering_smollm2_with_a_difference_of_means(smollm2):
    m = smollm2
    site = "blocks.15.hook_resid_post"
    ocean = ["The waves crashed on the sandy beach.", "Whales swim deep in the ocean sea."]
    plain = ["The meeting is scheduled for Tuesday.", "He filled in the tax form again."]
    direction = diff_of_means(m, site, ocean, plain)
    norm = site_norm(m, site, plain)
    x = torch.tensor([prompt_ids(m, "I went to the store and")])
    clean = m.run(x).logits
    with steering(m, [AddDirection(site, direction, 0.0, scale=norm)]):
        assert torch.equal(m.run(x).logits, clean)
    edit = AddDirection(site, direction, 1.0, scale=norm, positions="generated")
    before = generate(m, ["I went to the store and"], max_new_tokens=12)
    steered = generate(m, ["I went to the store and"], [edit], max_new_tokens=12)
    uncached = generate(m, ["I went to the store and"], [edit], max_new_tokens=12, use_cache=False)
    after = generate(m, ["I went to the store and"], max_new_tokens=12)
    assert steered[0].new_ids == uncached[0].new_ids
    assert steered[0].new_ids != before[0].new_ids
    assert after == before


def test_aimri_steer_prints_one_row_per_strength(tiny_model_dir, tmp_path, capsys):
    from aimri.cli import main
    from aimri.dicts.formats import save_dictionary

    save_dictionary(sae(), tmp_path / "sae")
    code = main(
        [
            "steer",
            "--dictionary",
            str(tmp_path / "sae"),
            "--feature",
            "5",
            "--strengths",
            "0",
            "2",
            "--prompts",
            "The quick brown",
            "--max-new-tokens",
            "4",
            "--model.spec",
            str(tiny_model_dir("llama")),
            "--model.device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "strength 0:" in out and "strength 2:" in out and "'The quick brown' →" in out


def test_one_site_check_serves_every_user_of_a_dictionary(tiny_model):
    from aimri.steer.edits import dictionary_sites

    m = tiny_model("llama")
    assert dictionary_sites(sae(), m) == (SITE, SITE)
    assert dictionary_sites(sae(site=""), m, SITE) == (SITE, SITE)  # one that records none
    with pytest.raises(AimriError, match="reads '.*' but site 'blocks.0.hook_resid_post'"):
        dictionary_sites(sae(), m, "blocks.0.hook_resid_post")
    with pytest.raises(AimriError, match="does not record which site"):
        dictionary_sites(sae(site=""), m)
    with pytest.raises(AimriError, match="has width 16.*made for another model"):
        dictionary_sites(sae(d_in=16), m)
