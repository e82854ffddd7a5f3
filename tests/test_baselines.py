"""The baselines a dictionary's features are compared with: the model's own MLP neurons are what
its MLP computes, the random dictionary has the dictionary's shape and k, and a finding names
the strictest baseline."""

from __future__ import annotations

import math

import pytest
import torch

from aimri.config import CorpusConfig, DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.errors import AimriError
from aimri.features.basis import DictionaryBasis, MLPNeuronBasis, random_dictionary
from aimri.features.sources import ModelContexts, RereadContexts, at_site
from aimri.features.summary import SummaryRow, compare_with_strictest, strictest_baseline

# The down projection of each family, named here by hand (not found as the code finds it).
DOWN = {"llama": "down_proj", "gemma2": "down_proj", "gpt2": "c_proj", "gpt_neox": "dense_4h_to_h"}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_mlp_neurons_are_the_models_own_hidden_activations(tiny_model, family):
    model = tiny_model(family)
    layer = 1
    basis = MLPNeuronBasis(model, layer)
    mlp = dict(model.layout.layers[layer].named_children())[model.layout.block.mlp]
    down = getattr(mlp, DOWN[family])
    seen: dict[str, torch.Tensor] = {}
    handle = down.register_forward_pre_hook(lambda m, args: seen.update(h=args[0].detach()))
    ids = torch.randint(
        0, model.info.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    try:
        acts = model.run(ids, read=[basis.site]).acts[basis.site]  # the whole pass
    finally:
        handle.remove()
    hidden = seen["h"].reshape(-1, seen["h"].shape[-1])
    assert basis.n_features == hidden.shape[-1] > model.info.d_model  # d_mlp, not d_model
    assert basis.site == f"blocks.{layer}.ln2.hook_normalized"
    ours = basis.activations(acts.reshape(-1, acts.shape[-1]))
    torch.testing.assert_close(ours, hidden.float(), rtol=1e-5, atol=1e-5)
    # Write directions: what neuron i adds to the MLP's output at activation 1.
    w = down.weight.detach().float()
    columns = w if family == "gpt2" else w.T  # GPT-2's Conv1D stores [in, out]
    torch.testing.assert_close(basis.write_directions(), columns)
    basis.check_fits(model)


def test_mlp_neurons_refuse_a_layer_the_model_lacks(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(AimriError, match=r"layer 7 has no MLP: .* layers \(0-"):
        MLPNeuronBasis(model, 7)


def test_random_dictionary_has_the_dictionarys_width_k_and_site():
    cfg = DictConfig(d_in=32, d_sae=40, k=3, site="blocks.1.hook_resid_post")
    trained = build_dictionary(cfg, seed=2)
    mean = torch.randn(32, generator=torch.Generator().manual_seed(1))
    rand = random_dictionary(trained, mean, seed=5)
    basis = DictionaryBasis(rand, untrained=True)
    assert (rand.cfg.d_sae, rand.cfg.k, rand.cfg.site) == (40, 3, cfg.site)
    assert basis.info.kind == "random_dictionary" and basis.site == cfg.site
    assert basis.info.name == "random sparse dictionary blocks.1.hook_resid_post (40, k=3)"
    assert not torch.equal(rand.W_dec, trained.W_dec)  # another draw than the dictionary's
    torch.testing.assert_close(rand.W_dec.norm(dim=-1), torch.ones(40))
    torch.testing.assert_close(rand.W_enc, rand.W_dec)  # the encoder is the decoder's transpose
    x = mean + torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    a = basis.activations(x)
    assert a.shape == (64, 40) and int((a > 0).sum(-1).max()) <= 3
    # centred on the mean: the mean itself makes every pre-activation zero
    torch.testing.assert_close(rand.pre_activations(mean[None]), torch.zeros(1, 40))


def test_random_dictionary_is_topk_whatever_the_dictionarys_architecture():
    cfg = DictConfig(
        architecture="batchtopk", d_in=32, d_sae=40, k=4, site="blocks.0.hook_resid_post"
    )
    rand = random_dictionary(build_dictionary(cfg), torch.zeros(32), seed=0)
    assert rand.cfg.architecture == "topk" and rand.cfg.k == 4


def test_another_site_keeps_the_contexts_and_sinks(tiny_model, tmp_path):
    from tests.conftest import TRAINING_TEXT

    model = tiny_model("llama")
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TRAINING_TEXT[i % 5] * 2 for i in range(20)))
    corpus = CorpusConfig(source=str(path), ctx_len=16, max_tokens=16 * 6)
    base = ModelContexts(model, corpus, "blocks.1.hook_resid_post", batch_size=4)
    site = "blocks.1.ln2.hook_normalized"
    same_pass = at_site(base, model, site)
    assert isinstance(same_pass, ModelContexts)
    for b, s, r in zip(base, same_pass, RereadContexts(base, model, site), strict=True):
        direct = model.run(b.tokens, read=[site], logits=False).acts[site]
        for other in (s, r):
            assert torch.equal(other.tokens, b.tokens) and torch.equal(other.sink, b.sink)
            torch.testing.assert_close(other.acts, direct.float())


def row(basis: str, frac: float, low: float, high: float, scorer: str = "simulation") -> SummaryRow:
    return SummaryRow(
        basis=basis,
        explainer="tokens",
        scorer=scorer,
        n=64,
        mean=frac,
        mean_baseline=0.0,
        frac_above=frac,
        frac_above_baseline=0.0,
        threshold=0.5,
        ci_low=low,
        ci_high=high,
    )


def test_the_strictest_baseline_is_the_one_most_often_interpretable():
    rows = [
        row("sae", 0.24, 0.15, 0.36),
        row("MLP neurons", 0.05, 0.02, 0.13),
        row("random sparse dictionary", 0.09, 0.04, 0.19),
        row("residual coordinates", 0.09, 0.04, 0.18),
        row("random directions", 0.02, 0.0, 0.08),
    ]
    assert strictest_baseline(rows, dictionary="sae") == rows[2]  # ties: the higher bound
    assert strictest_baseline(rows[:1], dictionary="sae") is None
    c = compare_with_strictest(rows, dictionary="sae", explainer="tokens", scorer="simulation")
    assert c.strictest == rows[2] and c.verdict == "not measurably different from"
    assert c.sentence == (
        "24% of sae clear simulation ≥ 0.5 (95% CI 15%–36%); the strictest baseline, random "
        "sparse dictionary, reaches 9% (95% CI 4%–19%): not measurably different from it"
    )
    weak = [rows[0], row("MLP neurons", 0.01, 0.0, 0.05)]
    assert (
        compare_with_strictest(
            weak, dictionary="sae", explainer="tokens", scorer="simulation"
        ).verdict
        == "above"
    )
    with pytest.raises(AimriError, match="one explainer and scorer"):
        strictest_baseline([*rows, row("x", 0.5, 0.4, 0.6, scorer="rule")], dictionary="sae")
    with pytest.raises(AimriError, match="no summary row for 'sae' .* scorer 'rule'"):
        compare_with_strictest(rows, dictionary="sae", explainer="tokens", scorer="rule")
    assert math.isfinite(c.ours.mean)
