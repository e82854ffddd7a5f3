"""Shared fixtures: tiny random models of every supported family, built from configs.

Each tiny model is saved as a Hugging Face directory (config + safetensors + a small
byte-level BPE tokenizer trained here on a few sentences) and opened with `aimri.load_model`,
so the tests go through the same loading path a user's own model does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gpt2", "gpt_neox")
VOCAB = 400
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Python is a programming language that lets you work quickly.",
    "import os\nimport sys\nprint(sys.argv)\n",
    "Monday, Tuesday, Wednesday, Thursday, Friday.",
] * 20


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|bos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(path)
    return fast


def tiny_config(family: str):
    import transformers as tf

    common = {"vocab_size": VOCAB, "tie_word_embeddings": False}
    llama_like = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **common,
    }
    configs = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(**llama_like, head_dim=8),
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=256, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        ),
    }
    return configs[family]()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """family -> path of a saved tiny random model of that family (built on first use)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            path = root / family
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(family))
            with torch.no_grad():  # random, not tiny-init weights: make every path carry signal
                for p in model.parameters():
                    p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
            model.save_pretrained(path)
            _tokenizer(path)
            built[family] = path
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import aimri

    cache: dict[str, aimri.Model] = {}

    def get(family: str = "llama") -> aimri.Model:
        if family not in cache:
            cache[family] = aimri.load_model(str(tiny_model_dir(family)), device="cpu")
        return cache[family]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The real built-in model (end-to-end tests)."""
    import aimri

    try:
        return aimri.load_model("smollm2-135m", device="cpu")
    except aimri.AimriError as e:
        pytest.fail(f"the built-in model must be installed for end-to-end tests: {e}")


@pytest.fixture
def text_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(
        "\n\n".join(
            f"Document {i}: " + " ".join(TRAINING_TEXT[i % 5] for _ in range(4)) for i in range(40)
        )
    )
    return path


@pytest.fixture(autouse=True)
def scan_memory(tmp_path_factory, monkeypatch):
    """Each test gets its own, empty memory of past scans (`aimri.dicts.memory`), so that no
    test continues another's dictionaries; the returned folder is where that memory lives."""
    root = tmp_path_factory.mktemp("memory")
    monkeypatch.setattr("aimri.dicts.memory.memory_root", lambda: root)
    return root
