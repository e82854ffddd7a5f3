"""Physics of sites, on a tiny random model of every family: each test can fail."""

from __future__ import annotations

import pytest
import torch

from aimri import AimriError
from tests.conftest import FAMILIES

ATOL = 1e-4


def ids(model, n: int = 2, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, model.info.vocab_size, (n, length), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_discovered(tiny_model, family):
    m = tiny_model(family)
    assert m.info.family == family
    assert m.info.n_layers == 3 and m.info.d_model == 32
    assert ("blocks.0.hook_resid_mid" in m.sites) != m.info.parallel_residual


@pytest.mark.parametrize("family", FAMILIES)
def test_reading_sites_leaves_logits_unchanged(tiny_model, family):
    m = tiny_model(family)
    x = ids(m)
    clean = m.run(x).logits
    sites = [s for s in m.sites if not s.endswith("hook_pattern")]
    read = m.run(x, read=sites)
    assert len(read.acts) == len(sites)
    assert torch.equal(read.logits, clean)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_patch_everywhere_leaves_logits_unchanged(tiny_model, family):
    m = tiny_model(family)
    x = ids(m)
    clean = m.run(x).logits
    sites = [s for s in m.sites if not s.endswith("hook_pattern")]
    patched = m.run(x, patch={s: (lambda t: t.clone()) for s in sites}).logits
    torch.testing.assert_close(patched, clean, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_real_patch_changes_logits(tiny_model, family):
    m = tiny_model(family)
    x = ids(m)
    clean = m.run(x).logits
    # A random direction: a constant shift would vanish in LayerNorm's mean subtraction.
    delta = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(2))
    for site in (
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_mlp_out",
        "blocks.1.ln2.hook_normalized",
    ):
        bumped = m.run(x, patch={site: lambda t: t + delta}).logits
        assert (bumped - clean).abs().max() > 1e-3, site


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_stream_adds_up(tiny_model, family):
    m = tiny_model(family)
    a = m.run(ids(m), read=["blocks.*.hook_*", "blocks.*.ln2.hook_normalized"]).acts
    for layer in range(m.info.n_layers):
        pre, attn, mlp = (
            a[f"blocks.{layer}.{k}"] for k in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
        )
        post = a[f"blocks.{layer}.hook_resid_post"]
        if layer + 1 < m.info.n_layers:
            assert torch.equal(post, a[f"blocks.{layer + 1}.hook_resid_pre"])
        if m.info.parallel_residual:
            torch.testing.assert_close(post, pre + attn + mlp, atol=ATOL, rtol=1e-5)
            continue
        mid = a[f"blocks.{layer}.hook_resid_mid"]
        torch.testing.assert_close(mid, pre + attn, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(post, mid + mlp, atol=ATOL, rtol=1e-5)
        ln2 = getattr(m.layout.layers[layer], m.layout.block.ln2)
        torch.testing.assert_close(
            a[f"blocks.{layer}.ln2.hook_normalized"], ln2(mid), atol=ATOL, rtol=1e-5
        )


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_patching_resid_mid_equals_patching_attn_out(tiny_model, family):
    m = tiny_model(family)
    x = ids(m)
    delta = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(3))
    via_mid = m.run(x, patch={"blocks.1.hook_resid_mid": lambda t: t + delta}).logits
    via_attn = m.run(x, patch={"blocks.1.hook_attn_out": lambda t: t + delta}).logits
    torch.testing.assert_close(via_mid, via_attn, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_attention_patterns_are_distributions(tiny_model, family):
    m = tiny_model(family)
    x = ids(m, length=7)
    pat = m.run(x, read=["blocks.*.attn.hook_pattern"]).acts["blocks.2.attn.hook_pattern"]
    assert pat.shape == (2, m.info.n_heads, 7, 7)
    torch.testing.assert_close(pat.sum(-1), torch.ones(2, m.info.n_heads, 7), atol=1e-5, rtol=0)
    assert torch.all(pat.triu(1) == 0), "causal: no attention to later positions"
    assert m.hf.config._attn_implementation != "eager" or family == "gpt2"  # restored after


def test_stop_early_reads_the_same_values(tiny_model):
    m = tiny_model("llama")
    x = ids(m)
    full = m.run(x, read=["blocks.1.hook_resid_post"]).acts
    early = m.run(x, read=["blocks.1.hook_resid_post"], logits=False)
    assert early.logits is None
    assert torch.equal(early.acts["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])


def test_unknown_sites_are_named_with_the_fix(tiny_model):
    m = tiny_model("llama")
    with pytest.raises(
        AimriError,
        match=r"site 'blocks.40.hook_resid_post' not found: this model has 3 layers \(0-2\)",
    ):
        m.run(ids(m), read=["blocks.40.hook_resid_post"])
    with pytest.raises(AimriError, match="'hook_resid_poast' is not a site kind.*hook_resid_post"):
        m.expand_sites(["blocks.1.hook_resid_poast"])
    with pytest.raises(AimriError, match="layer1.*matches none of this model.s sites"):
        m.expand_sites(["layer1"])


def test_a_patch_must_keep_the_shape(tiny_model):
    m = tiny_model("llama")
    with pytest.raises(AimriError, match="returned shape"):
        m.run(ids(m), patch={"blocks.0.hook_resid_post": lambda t: t[..., :3]})


def test_globs_expand_in_forward_order(tiny_model):
    m = tiny_model("llama")
    assert m.expand_sites(["blocks.*.hook_resid_post"]) == [
        f"blocks.{i}.hook_resid_post" for i in range(3)
    ]
    assert m.expand_sites(["blocks.2.hook_resid_pre", "blocks.0.hook_mlp_out"]) == [
        "blocks.0.hook_mlp_out",
        "blocks.2.hook_resid_pre",
    ]


def test_weights_hash_identifies_the_weights(tiny_model_dir):
    import aimri

    a = aimri.load_model(str(tiny_model_dir("llama")), device="cpu")
    b = aimri.load_model(str(tiny_model_dir("llama")), device="cpu")
    assert a.weights_sha256 == b.weights_sha256
    with torch.no_grad():
        b.hf.get_input_embeddings().weight[0, 0] += 1
    del b.__dict__["weights_sha256"]
    assert a.weights_sha256 != b.weights_sha256
