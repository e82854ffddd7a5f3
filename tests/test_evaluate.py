"""Evaluation: a perfect dictionary recovers all the loss, an empty one none; baselines run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from aimri import AimriError, CorpusConfig, ModelConfig
from aimri.config import DictConfig, EvalConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.evaluate import _baselines, _clean_pass, _metrics, _spliced, _zeros, evaluate
from aimri.dicts.formats import save_dictionary

SITE = "blocks.1.hook_resid_post"


def test_perfect_and_empty_dictionaries_bracket_the_scores(tiny_model):
    m = tiny_model("llama")
    from aimri.corpus.contexts import take_contexts

    contexts = take_contexts(m.tokenizer, CorpusConfig(max_tokens=32 * 8, ctx_len=32))
    clean = _clean_pass(m, contexts, (SITE, SITE), 4)
    cfg = DictConfig(d_in=32, d_sae=64, k=32, site=SITE)
    perfect = _baselines(cfg, clean, k=32)["pca"]  # all 32 components: an exact code
    ablated = _spliced(m, contexts, cfg, clean, 4, _zeros(32))
    r = _metrics(m, contexts, perfect, clean, 4, ablated)
    assert r["reconstruction_quality"]["fvu"] < 1e-4
    assert r["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert r["model_behavior_preservation"]["kl_div_with_sae"] < 1e-4
    empty = build_dictionary(cfg)
    with torch.no_grad():
        empty.W_dec.zero_()
    r = _metrics(m, contexts, empty, clean, 4, ablated)  # it decodes every code to 0
    assert r["model_performance_preservation"]["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_writes_saebench_shaped_metrics(tiny_model, tiny_model_dir, tmp_path):
    m = tiny_model("llama")
    d = build_dictionary(DictConfig(d_in=32, d_sae=128, k=8, site=SITE))
    save_dictionary(d, tmp_path)
    cfg = EvalConfig(
        dictionary=tmp_path,
        model=ModelConfig(spec=str(tiny_model_dir("llama"))),
        corpus=CorpusConfig(max_tokens=32 * 8, ctx_len=32),
        batch_size=4,
    )
    r = evaluate(cfg, model=m)
    assert set(r.baselines) == {"pca", "random"}
    assert r.metrics["sparsity"]["l0"] <= 8
    assert (
        r.baselines["pca"]["reconstruction_quality"]["fvu"]
        < r.baselines["random"]["reconstruction_quality"]["fvu"]
    )
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        doc["eval_type_id"] == "core"
        and "ce_loss_score" in doc["eval_result_metrics"]["model_performance_preservation"]
    )


def test_dictionary_for_another_model_is_refused(tiny_model, tmp_path):
    d = build_dictionary(DictConfig(d_in=64, d_sae=128, k=8, site=SITE))
    with pytest.raises(AimriError, match="d_in=64 does not match the model's d_model=32"):
        evaluate(EvalConfig(dictionary=tmp_path), model=tiny_model("llama"), dictionary=d)
    d = build_dictionary(DictConfig(d_in=32, d_sae=128, k=8, site="blocks.7.hook_resid_post"))
    with pytest.raises(AimriError, match="site 'blocks.7.hook_resid_post', which this model lacks"):
        evaluate(EvalConfig(dictionary=tmp_path), model=tiny_model("llama"), dictionary=d)


def test_transcoder_evaluation_splices_the_mlp(tiny_model, tmp_path):
    m = tiny_model("llama")
    cfg = DictConfig(
        d_in=32,
        d_sae=64,
        k=8,
        transcoder=True,
        skip=True,
        site="blocks.1.ln2.hook_normalized",
        site_out="blocks.1.hook_mlp_out",
    )
    d = build_dictionary(cfg)
    r = evaluate(
        EvalConfig(
            dictionary=tmp_path / "none",
            corpus=CorpusConfig(max_tokens=32 * 4, ctx_len=32),
            batch_size=4,
        ),
        model=m,
        dictionary=d,
    )
    perf = r.metrics["model_performance_preservation"]
    assert perf["ce_loss_with_sae"] != perf["ce_loss_without_sae"]
    assert set(r.baselines) == {"random"}
    assert dataclasses.is_dataclass(r)
