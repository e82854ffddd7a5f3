"""GPU code paths; skipped cleanly where no CUDA GPU is visible (CI has none)."""

from __future__ import annotations

import pytest
import torch

import aimri

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_bf16_on_gpu_reads_and_patches(tiny_model_dir):
    m = aimri.load_model(str(tiny_model_dir("llama")), dtype="bfloat16", device="cuda")
    x = torch.randint(2, m.info.vocab_size, (2, 16))
    clean = m.run(x).logits
    run = m.run(x, read=["blocks.*.hook_resid_post"])
    assert run.acts["blocks.0.hook_resid_post"].device.type == "cuda"
    assert run.acts["blocks.0.hook_resid_post"].dtype == torch.bfloat16
    assert torch.equal(run.logits, clean)
