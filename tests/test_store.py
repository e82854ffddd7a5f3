"""The activation store: what is stored is what the model computes; resume; bad input."""

from __future__ import annotations

import errno
import json
from collections import Counter

import pytest
import torch

import aimri.store.collect as collect_mod
from aimri import (
    ActivationStore,
    AimriError,
    CollectConfig,
    CorpusConfig,
    ModelConfig,
    collect,
    stream_activations,
)
from aimri.corpus.contexts import take_contexts

SITES = ("blocks.*.hook_resid_post", "blocks.1.ln2.hook_normalized")


def config(tiny_model_dir, out, **kw) -> CollectConfig:
    base = {
        "out": out,
        "model": ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        "corpus": CorpusConfig(source="pydoc", max_tokens=32 * 40, ctx_len=32),
        "sites": SITES,
        "dtype": "float32",
        "batch_size": 3,
        "shard_contexts": 8,
    }
    return CollectConfig(**(base | kw))


def test_stored_activations_are_what_the_model_computes(tiny_model, tiny_model_dir, tmp_path):
    m = tiny_model("llama")
    cfg = config(tiny_model_dir, tmp_path / "s")
    r = collect(cfg, model=m)
    assert (r.n_tokens, r.n_shards, r.resumed_shards) == (1280, 5, 0)
    store = ActivationStore(cfg.out)
    assert store.sites == [
        "blocks.0.hook_resid_post",
        "blocks.1.ln2.hook_normalized",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    contexts = take_contexts(m.tokenizer, cfg.corpus)
    assert torch.equal(store.tokens().long(), contexts.reshape(-1))
    direct = m.run(contexts[8:16], read=store.sites).acts
    for s in store.sites:
        torch.testing.assert_close(
            store.load(s, 1), direct[s].reshape(-1, 32), atol=1e-5, rtol=1e-5
        )
    assert torch.equal(
        store.load("positions", 0)[:33], torch.tensor([*list(range(32)), 0], dtype=torch.int32)
    )
    manifest = json.loads((cfg.out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["schema_version"] == 1
    assert manifest["identity"]["model"]["weights_sha256"] == m.weights_sha256
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_interrupted_run_resumes_with_nothing_lost_or_duplicated(
    tiny_model, tiny_model_dir, tmp_path, monkeypatch
):
    m = tiny_model("llama")
    whole = config(tiny_model_dir, tmp_path / "whole")
    collect(whole, model=m)

    cut = config(tiny_model_dir, tmp_path / "cut")
    real_write = collect_mod.write_shard
    calls = []

    def write_then_die(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        real_write(*a, **kw)

    monkeypatch.setattr(collect_mod, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect(cut, model=m)
    with pytest.raises(AimriError, match="incomplete"):
        ActivationStore(cut.out)
    monkeypatch.setattr(collect_mod, "write_shard", real_write)
    r = collect(cut, model=m)
    assert r.resumed_shards == 2 and r.n_shards == 5
    a, b = (json.loads((p / "manifest.json").read_text())["shards"] for p in (whole.out, cut.out))
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]


def test_disk_full_loses_nothing_already_written(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    m = tiny_model("llama")
    cfg = config(tiny_model_dir, tmp_path / "s")
    real_save = collect_mod.save_file
    calls = []

    def save_until_full(tensors, path, **kw):
        if len(calls) == 3:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        real_save(tensors, path, **kw)

    monkeypatch.setattr(collect_mod, "save_file", save_until_full)
    with pytest.raises(
        AimriError, match="disk full while writing .*shard-00003.*run the same command again"
    ):
        collect(cfg, model=m)
    assert not list(cfg.out.glob(".*.tmp")), "no partial file is left"
    assert len(list(cfg.out.glob("shard-*.json"))) == 3
    monkeypatch.setattr(collect_mod, "save_file", real_save)
    assert collect(cfg, model=m).resumed_shards == 3


def test_resume_with_another_config_is_refused(tiny_model, tiny_model_dir, tmp_path):
    m = tiny_model("llama")
    collect(config(tiny_model_dir, tmp_path / "s"), model=m)
    other = config(tiny_model_dir, tmp_path / "s", dtype="float16")
    with pytest.raises(
        AimriError,
        match='different configuration \\(dtype: stored "float32", requested "float16"\\).*--overwrite',
    ):
        collect(other, model=m)
    with pytest.raises(AimriError, match="different configuration \\(model"):
        collect(config(tiny_model_dir, tmp_path / "s"), model=tiny_model("qwen2"))
    assert (
        collect(CollectConfig(**{**other.__dict__, "overwrite": True}), model=m).resumed_shards == 0
    )
    assert ActivationStore(other.out).identity["dtype"] == "float16"


def test_corrupt_shard_is_named_with_the_fix(tiny_model, tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "s")
    collect(cfg, model=tiny_model("llama"))
    shard = cfg.out / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore(cfg.out)
    store.load("tokens", 1)
    with pytest.raises(AimriError, match="shard-00002.safetensors' is corrupt.*delete the shard"):
        store.load("tokens", 2)
    with pytest.raises(
        AimriError, match="site 'blocks.9.hook_resid_post' is not in activation store"
    ):
        store.load("blocks.9.hook_resid_post", 0)


def test_shuffled_batches_cover_every_token_once(tiny_model, tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path / "s")
    collect(cfg, model=tiny_model("llama"))
    store = ActivationStore(cfg.out)
    site = "blocks.2.hook_resid_post"
    stored = torch.cat(list(store.iter_shards(site)))
    batches = list(store.batches(site, batch_size=64, buffer_tokens=200, seed=0))
    got = torch.cat(batches)
    assert all(len(b) == 64 for b in batches) and len(got) == 1280
    key = lambda x: Counter(map(tuple, x.round(decimals=4).tolist()))  # noqa: E731
    assert key(got) == key(stored)
    assert not torch.equal(got, stored), "shuffled"
    again = torch.cat(list(store.batches(site, batch_size=64, buffer_tokens=200, seed=0)))
    assert torch.equal(got, again), "deterministic for a seed"
    no_bos = torch.cat(list(store.batches(site, batch_size=31, exclude_sinks=True)))
    assert len(no_bos) == 1240


def test_on_the_fly_stream_equals_the_store(tiny_model, tiny_model_dir, tmp_path):
    m = tiny_model("llama")
    cfg = config(tiny_model_dir, tmp_path / "s", batch_size=8)
    collect(cfg, model=m)
    store = ActivationStore(cfg.out)
    streamed = torch.cat(
        [
            b["blocks.1.hook_resid_post"]
            for b in stream_activations(m, cfg.corpus, ["blocks.1.hook_resid_post"], batch_size=8)
        ]
    )
    torch.testing.assert_close(
        streamed, torch.cat(list(store.iter_shards("blocks.1.hook_resid_post")))
    )


def test_attention_patterns_are_not_stored_per_token(tiny_model, tiny_model_dir, tmp_path):
    with pytest.raises(AimriError, match="attention patterns"):
        collect(
            config(tiny_model_dir, tmp_path / "s", sites=("blocks.0.attn.hook_pattern",)),
            model=tiny_model("llama"),
        )


def test_on_the_fly_batches_are_shuffled_and_complete(tiny_model, tiny_model_dir, tmp_path):
    from aimri import stream_batches

    m = tiny_model("llama")
    cfg = config(tiny_model_dir, tmp_path / "s", batch_size=8)
    collect(cfg, model=m)
    stored = torch.cat(list(ActivationStore(cfg.out).iter_shards("blocks.0.hook_resid_post")))
    got = torch.cat(
        list(stream_batches(m, cfg.corpus, "blocks.0.hook_resid_post", 64, buffer_tokens=300))
    )
    assert len(got) == len(stored) == 1280 and not torch.equal(got, stored)
    torch.testing.assert_close(got.sum(0), stored.sum(0), atol=1e-3, rtol=1e-4)


def test_written_files_get_the_users_umask_not_0600(tmp_path):
    """A weight file written through atomic_path (safetensors replaces the temporary file with
    its own) is readable by whoever the user's umask lets read it."""
    import os
    import stat

    from safetensors.torch import save_file

    from aimri._io import atomic_path, write_json_atomic

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        write_json_atomic(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("w.safetensors", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
