"""Activation-difference lens (Minder et al. 2025): what B's change leans toward on any text.

`changed_layers` compares the two models' block weights (white box: which blocks were trained).
`activation_difference` is the mean of h_B − h_A at one layer's output over the first
`N_TOKENS` tokens (after BOS) of many neutral texts: a narrow fine-tune leaves a trace there even
on text unrelated to it. `lens` reads it through A's unembedding (logit lens: the words it
promotes). `steer` adds it to A (at every position, `GAIN` × the layer's mean activation norm)
while A answers a few chat prompts, and compares A's steered replies with its own by their
traits (`audit_compare.contrast`): the themes become hypotheses and candidate words.
Layer: the middle one of the changed blocks (the model's middle layer when all changed).
Not here: the comparison of B itself (`compare.py`), hypotheses (`teams.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aimri.audit.compare import Cell, Finding, contrast
from aimri.audit.words import token_word
from aimri.features.effects import logit_effects
from aimri.model.adapter import Model
from aimri.steer.edits import AddDirection
from aimri.steer.generate import chat_prompt, generate, prompt_ids, right_pad

N_TOKENS = 5
GAIN = 0.5


def changed_layers(base: Model, other: Model) -> list[int]:
    """Blocks whose weights differ at all."""
    out = []
    for i, (a, b) in enumerate(zip(base.layout.layers, other.layout.layers, strict=True)):
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb) or any(not torch.equal(x, y) for x, y in zip(pa, pb, strict=True)):
            out.append(i)
    return out


def lens_layer(base: Model, other: Model) -> int | None:
    changed = changed_layers(base, other)
    if not changed:
        return None
    if len(changed) == base.info.n_layers:
        return base.info.n_layers // 2
    return changed[len(changed) // 2]


@torch.no_grad()
def activation_difference(
    base: Model, other: Model, texts: Sequence[str], layer: int
) -> tuple[Tensor, float]:
    """(mean h_B − h_A [d] over the first N_TOKENS tokens of each text, mean ||h_A|| there)."""
    site = f"blocks.{layer}.hook_resid_post"
    seqs = [prompt_ids(base, t)[: 1 + N_TOKENS] for t in texts]
    padded = right_pad(seqs)
    mask = padded.mask.bool().clone()
    mask[:, 0] = False  # BOS
    ha = base.run(padded.ids, read=[site], logits=False).acts[site].float()[mask]
    hb = other.run(padded.ids, read=[site], logits=False).acts[site].float()[mask]
    return (hb - ha).mean(0), float(ha.norm(dim=-1).mean())


@dataclass
class LensResult:
    layer: int
    norm: float
    """||δ|| / mean ||h_A||."""
    promoted: list[str]
    """Words δ promotes through A's unembedding, best first."""
    findings: list[Finding] = field(default_factory=list)
    """Traits of A's replies steered with δ, against A's own."""
    examples: list[dict[str, str]] = field(default_factory=list)


def lens(
    base: Model,
    other: Model,
    texts: Sequence[str],
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
) -> LensResult | None:
    """The lens and the steering (module docstring); None when no block changed."""
    layer = lens_layer(base, other)
    if layer is None:
        return None
    delta, scale = activation_difference(base, other, texts, layer)
    if float(delta.norm()) == 0.0:
        return None
    eff = logit_effects(base, delta[None], 60)
    words = [token_word(base.tokenizer.decode([i])) for i in eff.promoted[0].tolist()]
    promoted = list(dict.fromkeys(w for w in words if w))[:20]
    site = f"blocks.{layer}.hook_resid_post"
    edit = AddDirection(site, delta, GAIN * scale)
    chats = [chat_prompt(base, p) for p in prompts]
    plain = [
        g.text for g in generate(base, chats, max_new_tokens=max_new_tokens, batch_size=len(chats))
    ]
    steered = [
        g.text
        for g in generate(base, chats, [edit], max_new_tokens=max_new_tokens, batch_size=len(chats))
    ]
    cells = [Cell("all", p, [a], [b]) for p, a, b in zip(prompts, plain, steered, strict=True)]
    return LensResult(
        layer=layer,
        norm=round(float(delta.norm()) / scale, 4),
        promoted=promoted,
        findings=contrast(cells, limit=10),
        examples=[{"prompt": p, "a": a, "a_steered": b} for p, a, b in cells_examples(cells)],
    )


def cells_examples(cells: Sequence[Cell]) -> list[tuple[str, str, str]]:
    return [(c.prompt, c.a[0], c.b[0]) for c in cells if c.a[0] != c.b[0]][:3]
