"""The one read: a store written from it equals `aimri collect`'s, each consumer gets its own
budget, the forward pass stops at the deepest site still wanted, and a dictionary trained on
the stream resumes bit for bit after an interruption."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import aimri.dicts.trainer as trainer_mod
from aimri import ActivationStore, CollectConfig, CorpusConfig, ModelConfig, collect
from aimri.config import OptimConfig, TrainConfig
from aimri.dicts.formats import load_dictionary
from aimri.dicts.train import dictionary_config_for
from aimri.dicts.trainer import StreamTrainer, Trainer
from aimri.model.precision import read_dtype
from aimri.store.collect import store_identity
from aimri.store.shared_read import ReadBatch, StoreWriter, shared_read
from aimri.store.sinks import special_ids

CORPUS = CorpusConfig(max_tokens=32 * 40, ctx_len=32)
SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _writer(m, tiny_model_dir, out, n_tokens):
    cfg = CollectConfig(
        out=out,
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        corpus=CORPUS,
        sites=SITES,
        dtype="float32",
        shard_contexts=8,
    )
    identity = store_identity(cfg, m, {s: m.site_width(s) for s in SITES})
    identity["corpus"]["max_tokens"] = n_tokens
    return cfg, StoreWriter("stats", out, identity, SITES, n_tokens, special_ids(m.tokenizer))


class Recorder:
    """A consumer that keeps what it is handed, up to a budget."""

    def __init__(self, name: str, sites: tuple[str, ...], n_tokens: int) -> None:
        self.name, self.sites, self.n_tokens = name, sites, n_tokens
        self.seen: list[ReadBatch] = []

    @property
    def wants(self) -> bool:
        return sum(len(b.tokens) for b in self.seen) < self.n_tokens

    def consume(self, batch: ReadBatch) -> None:
        self.seen.append(batch)


def test_a_store_written_from_the_read_equals_collects(tiny_model, tiny_model_dir, tmp_path):
    m = tiny_model("llama")
    cfg, writer = _writer(m, tiny_model_dir, tmp_path / "read", CORPUS.max_tokens)
    shared_read(m, CORPUS, [writer], batch_size=3)
    writer.finish()
    collect(dataclasses.replace(cfg, out=tmp_path / "collect", batch_size=3), model=m)
    ours, theirs = ActivationStore(tmp_path / "read"), ActivationStore(tmp_path / "collect")
    assert ours.n_tokens == theirs.n_tokens == CORPUS.max_tokens
    assert ours.n_shards == theirs.n_shards == 5
    for name in (*SITES, "tokens", "positions", "context_ids"):
        for shard in range(ours.n_shards):
            torch.testing.assert_close(ours.load(name, shard), theirs.load(name, shard))
    sinks = lambda p: json.loads((p / "manifest.json").read_text())["sinks"]  # noqa: E731
    assert sinks(tmp_path / "read") == sinks(tmp_path / "collect")


def test_each_consumer_gets_its_budget_and_the_pass_stops_at_the_deepest_wanted_site(
    tiny_model, monkeypatch
):
    m = tiny_model("llama")
    deep = Recorder("deep", ("blocks.1.hook_resid_post",), 32 * 6)
    shallow = Recorder("shallow", ("blocks.0.hook_resid_post",), 32 * 15)
    read_sites: list[list[str]] = []
    real_run = type(m).run

    def run(self, ids, read=(), **kw):
        read_sites.append(list(read))
        return real_run(self, ids, read=read, **kw)

    monkeypatch.setattr(type(m), "run", run)
    r = shared_read(m, CORPUS, [deep, shallow], batch_size=3)
    assert r.tokens == {"deep": 32 * 6, "shallow": 32 * 15}
    assert r.n_tokens == 32 * 15
    assert read_sites[0] == ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]
    assert read_sites[-1] == ["blocks.0.hook_resid_post"], "deep layers are not run once done"
    # both were handed the same text, from the start
    torch.testing.assert_close(deep.seen[0].tokens, shallow.seen[0].tokens)
    full = m.run(torch.stack(list(deep.seen[0].tokens.view(-1, 32))), read=SITES).acts
    assert shallow.seen[-1].acts["blocks.0.hook_resid_post"].shape == (3 * 32, m.info.d_model)
    torch.testing.assert_close(
        deep.seen[0].acts["blocks.1.hook_resid_post"],
        full["blocks.1.hook_resid_post"].reshape(-1, m.info.d_model),
    )


def _stream_trainer(m, out, tokens):
    site = "blocks.1.hook_resid_post"
    cfg = TrainConfig(
        site=site,
        out=out,
        expansion=2,
        k=4,
        optim=OptimConfig(batch_size=64, tokens=tokens),
        checkpoint_every=5,
        device="cpu",
    )
    d = dictionary_config_for(cfg, {site: m.site_width(site)})
    steps = tokens // 64
    return StreamTrainer(
        "sae", Trainer([cfg], [d], steps), special_ids(m.tokenizer), buffer_tokens=256
    )


def test_a_stream_trained_dictionary_resumes_bit_for_bit(tiny_model, tmp_path, monkeypatch):
    m = tiny_model("llama")
    corpus = dataclasses.replace(CORPUS, max_tokens=32 * 60)  # sinks out: more than 20 × 64
    whole = _stream_trainer(m, tmp_path / "whole", 20 * 64)
    shared_read(m, corpus, [whole], batch_size=3)
    whole.finish()
    assert whole.trainer.step == 20

    real_step = trainer_mod._step

    def die_at_12(state, *a, **kw):
        if state.step == 12:
            raise KeyboardInterrupt
        return real_step(state, *a, **kw)

    monkeypatch.setattr(trainer_mod, "_step", die_at_12)
    with pytest.raises(KeyboardInterrupt):
        shared_read(m, corpus, [_stream_trainer(m, tmp_path / "cut", 20 * 64)], batch_size=3)
    monkeypatch.setattr(trainer_mod, "_step", real_step)
    again = _stream_trainer(m, tmp_path / "cut", 20 * 64)
    shared_read(m, corpus, [again], batch_size=3)
    again.finish()
    assert again.trainer.runs[0].resumed == 10, "the last checkpoint before the cut"
    a, b = load_dictionary(tmp_path / "whole"), load_dictionary(tmp_path / "cut")
    for name, t in a.state_dict().items():
        torch.testing.assert_close(t, b.state_dict()[name], rtol=0, atol=0)


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    import aimri.model.precision as precision

    cpu = torch.device("cpu")
    assert read_dtype("float32", cpu) == torch.float32
    assert read_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert read_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert read_dtype("auto", cpu) == torch.bfloat16
