"""Scale-out: two CPU ranks under torchrun (gloo) write the same store as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from aimri import ActivationStore, CollectConfig, CorpusConfig, ModelConfig, collect


@pytest.mark.slow
def test_two_ranks_equal_one_process(tiny_model_dir, tmp_path):
    model_dir = str(tiny_model_dir("llama"))
    corpus = CorpusConfig(max_tokens=32 * 24, ctx_len=32)
    single = tmp_path / "single"
    collect(
        CollectConfig(
            out=single,
            model=ModelConfig(spec=model_dir, device="cpu"),
            corpus=corpus,
            dtype="float32",
            shard_contexts=5,
            batch_size=5,
        )
    )

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun comes with torch"
    multi = tmp_path / "multi"
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "aimri.cli", "collect",
        "--out", str(multi), "--model.spec", model_dir, "--model.device", "cpu",
        "--corpus.max-tokens", str(corpus.max_tokens), "--corpus.ctx-len", "32",
        "--dtype", "float32", "--shard-contexts", "5", "--batch-size", "5",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("tokens in 5 shard(s)") == 1, "only rank 0 prints"

    a, b = ActivationStore(single), ActivationStore(multi)
    assert a.n_tokens == b.n_tokens == 768 and a.n_shards == b.n_shards == 5
    assert torch.equal(a.tokens(), b.tokens())
    for i in range(5):
        torch.testing.assert_close(
            a.load("blocks.2.hook_resid_post", i),
            b.load("blocks.2.hook_resid_post", i),
            atol=1e-5,
            rtol=1e-5,
        )
    sides = [json.loads((multi / f"shard-{i:05d}.json").read_text()) for i in range(5)]
    assert [s["index"] for s in sides] == list(range(5))
    assert [s["rank"] for s in sides] == [0, 1, 0, 1, 0], "shard k is written by rank k mod 2"


@pytest.mark.slow
def test_data_parallel_training_matches_one_process(tmp_path):
    from aimri.config import OptimConfig, TrainConfig
    from aimri.dicts.formats import load_dictionary
    from aimri.dicts.toy import SITE, make_toy_store
    from aimri.dicts.train import train

    toy = make_toy_store(tmp_path / "store", n_tokens=2**16)
    optim = OptimConfig(batch_size=512, tokens=30 * 512)
    train(
        TrainConfig(
            store=toy.store,
            site=SITE,
            out=tmp_path / "one",
            expansion=2,
            k=4,
            exclude_sinks=False,
            optim=optim,
        )
    )
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "aimri.cli", "train",
        "--store", str(toy.store), "--site", SITE, "--out", str(tmp_path / "two"),
        "--expansion", "2", "--k", "4", "--no-exclude-sinks",
        "--optim.batch-size", "512", "--optim.tokens", str(30 * 512),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("trained 30 steps") == 1
    a, b = load_dictionary(tmp_path / "one"), load_dictionary(tmp_path / "two")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, atol=2e-4, rtol=1e-3, msg=name)
