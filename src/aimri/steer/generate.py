"""Generate text with edits applied: greedy by default, batched with left padding.

Each prompt is tokenized without special tokens and prefixed with the BOS token the corpus
uses (`aimri.corpus.contexts.special_tokens`), so prompts look like the contexts dictionaries
were trained on; a prompt that already starts with it (a chat-templated prompt from
`chat_prompt`, whose first token is SmolLM2's BOS) gets no second one. Batches are left-padded; the prompt length seen by position-restricted edits
is the padded length, so "generated" means exactly the new tokens of every row.
The KV cache is on by default: a patch sees the new positions only, and the position count in
`edits.py` handles both modes (tests check that cached and uncached generations agree).
Not here: what the edits are (`edits.py`), scoring the text (`sweep.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from aimri.corpus.contexts import special_tokens
from aimri.model.adapter import Model
from aimri.steer.edits import Edit, steering

if TYPE_CHECKING:
    from transformers import StoppingCriteria


@dataclass(frozen=True)
class Generation:
    """One prompt and what the (edited) model wrote after it."""

    prompt: str
    text: str
    """The continuation only, decoded without special tokens."""
    prompt_ids: list[int]
    """Token ids of the prompt, BOS included."""
    new_ids: list[int]
    """Token ids of the continuation, cut after the first EOS (kept) if there is one."""


def prompt_ids(model: Model, text: str) -> list[int]:
    """BOS + the tokens of `text` (special tokens written in the text are kept as such; no
    second BOS when the text starts with it)."""
    bos = special_tokens(model.tokenizer, prepend_bos=True).bos
    assert bos is not None  # special_tokens raises when prepend_bos finds none
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if ids[:1] == [bos] else [bos, *ids]


def has_chat_template(model: Model) -> bool:
    return bool(getattr(model.tokenizer, "chat_template", None))


def chat_prompt(model: Model, message: str) -> str:
    """One user turn as the model expects it: its own chat template with the generation prompt
    (an instruction-tuned model), else the plain dialogue `"User: ...\nAssistant:"` (a base
    model has no template)."""
    if not has_chat_template(model):
        return f"User: {message}\nAssistant:"
    chat = [{"role": "user", "content": message}]
    text = model.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


def generate(
    model: Model,
    prompts: Sequence[str],
    edits: Sequence[Edit] = (),
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    use_cache: bool = True,
    stopping: Callable[[list[list[int]]], Sequence[StoppingCriteria]] | None = None,
) -> list[Generation]:
    """Continue each prompt with `edits` applied; greedy when `temperature` is 0.

    Sampling draws from a forked RNG seeded with `seed`, so the global RNG is left alone and
    the same call gives the same text. `stopping`, if given, is called with each batch's prompt
    ids (BOS included, unpadded) and returns transformers stopping criteria for that batch,
    called after every step with the ids so far (the monitor watches through them).
    """
    out: list[Generation] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        ids = [prompt_ids(model, p) for p in chunk]
        stop = stopping(ids) if stopping is not None else ()
        new = _generate_batch(model, ids, edits, max_new_tokens, temperature, seed, use_cache, stop)
        for p, pid, nid in zip(chunk, ids, new, strict=True):
            text = model.tokenizer.decode(nid, skip_special_tokens=True)
            out.append(Generation(prompt=p, text=text, prompt_ids=pid, new_ids=nid))
    return out


def _generate_batch(
    model: Model,
    ids: list[list[int]],
    edits: Sequence[Edit],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    use_cache: bool,
    stopping: Sequence[StoppingCriteria],
) -> list[list[int]]:
    from transformers import GenerationConfig, StoppingCriteriaList

    tok = model.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    input_ids, mask = left_pad(ids, 0 if pad is None else int(pad))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=None,
        top_p=None,
        pad_token_id=pad,
        eos_token_id=eos,
        use_cache=use_cache,
    )
    devices = [model.device] if model.device.type == "cuda" else []
    T = input_ids.shape[1]
    with torch.random.fork_rng(devices=devices), steering(model, edits, prompt_len=T):
        torch.manual_seed(seed)
        seqs = model.hf.generate(  # type: ignore[operator]
            input_ids=input_ids.to(model.device),
            attention_mask=mask.to(model.device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList(stopping),
        )
    return [_until_eos(row[T:].tolist(), eos) for row in seqs]


class Padded(NamedTuple):
    ids: Tensor
    """[B, T] token ids."""
    mask: Tensor
    """[B, T] attention mask: 1 on tokens, 0 on padding."""


def left_pad(seqs: list[list[int]], pad: int) -> Padded:
    """Right-align every sequence in one batch."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s) :] = 1
    return Padded(ids, mask)


def right_pad(seqs: list[list[int]], pad: int = 0) -> Padded:
    """Left-align every sequence in one batch: for `Model.run`, which takes no attention mask
    (a causal model's real tokens never see the padding that follows them)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return Padded(ids, mask)


def _until_eos(new: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in new:
        return new[: new.index(eos) + 1]
    return new
