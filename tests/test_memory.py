"""The scan's memory of past scans (`aimri.dicts.memory`): a second scan of the same model
continues the first one's dictionaries on text they have not read; anything that changes what
the dictionaries mean (the corpus here) starts anew; --no-memory leaves the memory alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from aimri.config import CorpusConfig, ModelConfig, OptimConfig, ScanConfig, TrainConfig
from aimri.corpus.contexts import iter_contexts
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import dictionary_config_for
from aimri.dicts.trainer import final_dictionary, resume_or_init
from aimri.errors import AimriError
from aimri.scanner.read import scan_read


def _cfg(model_dir: Path, tmp_path: Path, **kw) -> ScanConfig:
    return ScanConfig(
        model=ModelConfig(spec=str(model_dir), device="cpu"),
        corpus=CorpusConfig(max_tokens=2048, ctx_len=32),
        runs_dir=tmp_path,
        dict_tokens=4096,
        tc_tokens=2048,
        **kw,
    )


def test_a_stream_started_later_is_the_same_stream_shifted_and_wraps_at_the_end(
    tiny_model, text_corpus
):
    tok = tiny_model("llama").tokenizer
    corpus = CorpusConfig(source=str(text_corpus), ctx_len=32, max_tokens=10**6)
    whole = list(iter_contexts(tok, corpus))
    n = len(whole)
    later = list(iter_contexts(tok, dataclasses.replace(corpus, max_tokens=32 * n), start=3))
    assert len(later) == n
    assert all(torch.equal(a, b) for a, b in zip(later, whole[3:] + whole[:3], strict=True))
    wrapped = list(iter_contexts(tok, dataclasses.replace(corpus, max_tokens=32 * 2), start=n + 1))
    assert torch.equal(wrapped[0], whole[1])  # the start is taken modulo the stream's length


def test_continuing_a_dictionary_starts_from_exactly_its_weights(tiny_model, tmp_path):
    model = tiny_model("llama")
    cfg = _cfg(Path("unused"), tmp_path, name="a", circuits=False)
    first = scan_read(cfg, model, tmp_path / "a")
    assert first.sae is not None
    saved = tmp_path / "a" / "dicts" / "blocks.1.hook_resid_post"
    site = "blocks.1.hook_resid_post"
    train = TrainConfig(
        site=site, out=tmp_path / "b", optim=OptimConfig(batch_size=64), continue_from=saved
    )
    dict_cfg = dictionary_config_for(train, {site: model.site_width(site)})
    x = torch.randn(64, model.site_width(site)) * 3
    state = resume_or_init(train, dict_cfg, (x, x), steps=10)
    again, before = final_dictionary(state).state_dict(), load_dictionary(saved).state_dict()
    assert all(torch.allclose(again[k], before[k], rtol=1e-5, atol=1e-6) for k in before)
    assert state.step == 0 and int(state.since_fired.sum()) == 0  # a new schedule
    wider = dataclasses.replace(train, expansion=train.expansion * 2)
    with pytest.raises(AimriError, match="cannot continue training from"):
        resume_or_init(
            wider, dictionary_config_for(wider, {site: model.site_width(site)}), (x, x), steps=10
        )


def test_a_second_scan_continues_the_first_on_fresh_text(tiny_model, tmp_path, scan_memory):
    model = tiny_model("llama")
    cfg = _cfg(Path("unused"), tmp_path, name="a")
    first = scan_read(cfg, model, tmp_path / "a").info["memory"]
    assert first is not None and first["scans_before"] == 0 and first["start_context"] == 0
    second_read = scan_read(cfg, model, tmp_path / "b")
    second = second_read.info["memory"]
    assert second is not None and second["scans_before"] == 1
    n_contexts = 4096 * 11 // 10 // 32  # the first read's budget, in contexts
    assert second["start_context"] == n_contexts
    assert second["tokens_now"]["sae"] == 2 * first["tokens_now"]["sae"] > 0
    assert second_read.sae is not None and second_read.sae["earlier_scans"] == 1
    assert second_read.sae["all_tokens"] == second["tokens_now"]["sae"]
    layers = [n for n in second["tokens_now"] if n.startswith("transcoders/")]
    assert layers and all(second["tokens_now"][n] == 2 * first["tokens_now"][n] for n in layers)
    # what the memory holds now is the second scan's dictionary, byte for byte
    entry = Path(second["path"])
    assert (entry / "sae" / "sae_weights.safetensors").read_bytes() == (
        tmp_path / "b" / "dicts" / "blocks.1.hook_resid_post" / "sae_weights.safetensors"
    ).read_bytes()

    other_text = _cfg(Path("unused"), tmp_path, name="c")
    other_text = dataclasses.replace(
        other_text, corpus=dataclasses.replace(other_text.corpus, seed=5)
    )
    fresh = scan_read(other_text, model, tmp_path / "c").info["memory"]
    assert fresh is not None and fresh["scans_before"] == 0 and fresh["path"] != second["path"]

    before = sorted(
        (p.relative_to(scan_memory), p.stat().st_mtime_ns) for p in scan_memory.rglob("*")
    )
    off = scan_read(dataclasses.replace(cfg, memory=False), model, tmp_path / "d")
    assert off.info["memory"] is None
    assert (
        sorted((p.relative_to(scan_memory), p.stat().st_mtime_ns) for p in scan_memory.rglob("*"))
        == before
    )
