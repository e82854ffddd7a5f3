"""Model diffing: a model diffed with itself is empty; a planted change is found where it was
planted (and nowhere before it); other tokenizers are refused; other widths fall back to
comparing outputs only."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from aimri.config import DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.diff.crosscoder import CrosscoderSettings
from aimri.diff.models import diff_json, diff_models
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.steer.generate import prompt_ids

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Python is a programming language that lets you work quickly.",
    "Monday, Tuesday, Wednesday, Thursday, Friday.",
    "def add(a, b):\n    return a + b\n",
    "import os\nimport sys\nprint(sys.argv)\n",
    "The lazy dog sleeps on Monday and the fox works on Friday.",
]
SMALL_CC = CrosscoderSettings(expansion=2, k=4, passes=4, batch_size=32, lr=3e-3)


def _sae(site: str, seed: int = 0):
    cfg = DictConfig(architecture="topk", d_in=32, d_sae=64, k=4, site=site)
    return build_dictionary(cfg, seed=seed).eval()


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    """(base, a fresh copy of it to plant changes in): two loads of the same tiny llama."""
    path = str(tiny_model_dir("llama"))
    return load_model(path, device="cpu"), load_model(path, device="cpu")


@pytest.fixture
def other(pair):
    """The copy, restored to the base's weights after each test."""
    base, copy_ = pair
    copy_.__dict__.pop("weights_sha256", None)  # the weights are about to change
    yield copy_
    copy_.hf.load_state_dict(base.hf.state_dict())
    copy_.__dict__.pop("weights_sha256", None)


def test_a_model_diffed_with_itself_is_empty(pair):
    base, same = pair
    sae = _sae("blocks.1.hook_resid_post")
    d = diff_models(base, same, TEXTS, dictionary=sae, crosscoder=True, top_k=5)
    assert d.empty and d.compatibility.same_weights and d.compatibility.fallback is None
    assert [ly.rel_change for ly in d.layers] == [0.0] * base.info.n_layers
    assert all(ly.mean_diff_rel == 0 and not ly.changed and not ly.promoted for ly in d.layers)
    assert all(ly.steer_recovery is None for ly in d.layers) and d.settings.steer_layers == []
    assert d.kl.mean == 0 and d.kl.max == 0 and d.kl.n_tokens > 20
    assert not d.kl.top_contexts and not d.kl.promoted and not d.kl.demoted
    assert not d.kl.triggers
    assert d.features is not None and d.features.n_changed == 0 and d.features.changed == []
    assert d.features.fvu_a == d.features.fvu_b
    assert d.crosscoder is None and any("crosscoder" in n for n in d.notes)
    json.dumps(diff_json(d))  # JSON-able as it is


def test_a_planted_output_bias_is_found_in_the_outputs_only(pair, other):
    base, _ = pair
    token = prompt_ids(base, " fox")[-1]
    site = "blocks.2.hook_resid_post"
    with torch.no_grad():  # raise the token's logit wherever the final residual looks typical
        h = base.run(torch.tensor([prompt_ids(base, TEXTS[0])]), read=[site]).acts[site]
        x = base.layout.final_norm(h[0, 1:]).mean(0)  # type: ignore[misc]
        other.layout.unembed.weight[token] += 4 * x / x.norm() ** 2
    d = diff_models(base, other, TEXTS, top_k=5)
    assert not d.empty and not d.compatibility.same_weights
    assert all(ly.rel_change == 0 and not ly.changed for ly in d.layers)  # the stream is A's
    assert d.kl.mean > 1e-3 and d.kl.promoted[0].id == token
    assert d.kl.promoted[0].mean_logprob_change > 0.5 and d.kl.promoted[0].mean_prob_change > 0
    assert all(s.id != token for s in d.kl.demoted)
    assert d.kl.top_contexts and d.kl.top_contexts[0].kl == d.kl.max
    assert any(p.id == token for p in d.kl.top_contexts[0].top_b)
    assert d.kl.triggers and all(t.count >= 2 for t in d.kl.triggers)


def test_a_planted_last_layer_change_shows_in_that_layer_and_its_features(pair, other):
    base, _ = pair
    last = base.info.n_layers - 1
    with torch.no_grad():
        for p in other.layout.layers[last].mlp.parameters():  # type: ignore[union-attr]
            p.mul_(1.5)
    site = f"blocks.{last}.hook_resid_post"
    d = diff_models(
        base,
        other,
        TEXTS,
        dictionary=_sae(site),
        crosscoder=True,
        crosscoder_settings=SMALL_CC,
        feature_labels={0: "zero"},
        top_k=5,
    )
    assert not d.empty
    assert [ly.rel_change for ly in d.layers[:last]] == [0.0] * last
    assert d.layers[last].changed and d.layers[last].rel_change > 0.01
    assert d.layers[last].mean_cosine < 1 and len(d.layers[last].promoted) == 5
    assert d.settings.steer_layers == [last]
    rec = d.layers[last].steer_recovery
    assert rec is not None and rec <= 1 and d.layers[last].kl_steered is not None
    f = d.features
    assert f is not None and f.n_changed > 0 and f.changed and f.site == site
    assert all(abs(c.z) > 3 for c in f.changed)
    scores = [abs(c.smd) for c in f.changed]
    assert scores == sorted(scores, reverse=True)
    assert all(c.label == ("zero" if c.feature == 0 else None) for c in f.changed)
    assert any(c.contexts for c in f.changed)
    cc = d.crosscoder
    assert cc is not None and cc.layer == last and cc.d_sae == 2 * 2 * 32
    assert cc.n_a_only + cc.n_b_only + cc.n_shared + cc.n_dead == cc.d_sae
    assert sum(cc.rel_norm_histogram) == cc.d_sae - cc.n_dead
    assert all(g.rel_norm_b > 0.9 for g in cc.b_only) and all(g.rel_norm_b < 0.1 for g in cc.a_only)
    leaning = [g.rel_norm_b for g in cc.b_leaning]
    assert leaning and leaning == sorted(leaning, reverse=True)
    assert cc.a_leaning[0].rel_norm_b <= min(leaning) and cc.b_leaning[0].contexts
    json.dumps(diff_json(d))


def test_a_dictionary_before_the_change_sees_none(pair, other):
    base, _ = pair
    with torch.no_grad():
        other.layout.layers[2].mlp.down_proj.weight.mul_(2.0)  # type: ignore[union-attr]
    d = diff_models(base, other, TEXTS, dictionary=_sae("blocks.0.hook_resid_post"))
    assert d.features is not None and d.features.n_changed == 0 and not d.features.changed
    assert d.features.fvu_a == d.features.fvu_b
    assert not d.empty and d.layers[2].changed and not d.layers[1].changed


def test_other_tokenizers_are_refused(pair):
    base, same = pair
    tok = copy.deepcopy(same.tokenizer)
    tok.add_tokens(["<|planted|>"])
    other = Model(same.hf, tok, spec="retokenized", source="test")
    with pytest.raises(AimriError, match="tokenize differently.*same tokenizer"):
        diff_models(base, other, TEXTS)


def test_other_widths_fall_back_to_the_outputs(pair, tiny_model_dir):
    import transformers

    base, _ = pair
    cfg = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        vocab_size=base.info.vocab_size,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    narrow = Model(transformers.LlamaForCausalLM(cfg), base.tokenizer, spec="narrow", source="t")
    d = diff_models(
        base, narrow, TEXTS, dictionary=_sae("blocks.1.hook_resid_post"), crosscoder=True
    )
    c = d.compatibility
    assert not c.same_shape and c.fallback and "outputs" in c.fallback
    assert c.n_layers == [3, 2] and c.d_model == [32, 16]
    assert d.layers == [] and d.features is None and d.crosscoder is None
    assert d.kl.mean > 0 and not d.empty
    assert len(d.notes) >= 3  # the fallback, the unused dictionary, the skipped crosscoder


def test_settings_and_json_round_trip(pair):
    base, same = pair
    d = diff_models(base, same, [*TEXTS, ""], max_len=8, batch_size=4)
    assert d.settings.n_texts == len(TEXTS) + 1 and d.settings.max_len == 8
    assert d.kl.n_tokens == len(TEXTS) * 7  # every text is cut to BOS + 7 tokens
    assert any("1 texts have no token" in n for n in d.notes)
    data = json.loads(json.dumps(diff_json(d)))
    assert data["schema_version"] >= 1
    assert data["settings"] == json.loads(json.dumps(dataclasses.asdict(d.settings)))


def test_a_transcoder_reading_before_the_change_keeps_its_codes_but_fits_worse(pair, other):
    base, _ = pair
    with torch.no_grad():
        other.layout.layers[2].mlp.down_proj.weight.mul_(2.0)  # type: ignore[union-attr]
    cfg = DictConfig(
        architecture="topk",
        d_in=32,
        d_sae=64,
        k=4,
        transcoder=True,
        site="blocks.2.ln2.hook_normalized",
        site_out="blocks.2.hook_mlp_out",
    )
    d = diff_models(base, other, TEXTS, dictionary=build_dictionary(cfg).eval())
    f = d.features
    assert f is not None and f.site == "blocks.2.ln2.hook_normalized"
    assert f.n_changed == 0  # the MLP's input is the same in both models
    assert f.fvu_b != f.fvu_a


def test_what_changed_names_a_planted_token_and_nothing_for_a_model_and_itself(pair, other):
    from aimri.audit.what import what_changed

    base, same = pair
    kw = {"n_per_type": 1, "samples": 3, "max_new_tokens": 12}
    none = what_changed(base, same, TEXTS, **kw)
    assert none["replies"] == [] and none["lens"] is None  # no block's weights differ
    token = prompt_ids(base, " fox")[-1]
    site = "blocks.2.hook_resid_post"
    with torch.no_grad():
        h = base.run(torch.tensor([prompt_ids(base, TEXTS[0])]), read=[site]).acts[site]
        x = base.layout.final_norm(h[0, 1:]).mean(0)  # type: ignore[misc]
        other.layout.unembed.weight[token] += 12 * x / x.norm() ** 2
    found = what_changed(base, other, TEXTS, **kw)
    fox = [r for r in found["replies"] if r["claim"]["what"] == "fox"]
    assert fox and fox[0]["claim"]["k_b"] > fox[0]["claim"]["k_a"]
    assert "talks about 'fox'" in fox[0]["sentence"]
    json.dumps(found)
