"""Where the parts of a transformer live inside a Hugging Face module tree.

Layers, attention, MLP and norms are discovered generically (the ModuleList with one entry per
layer; children named like attention/MLP; norm modules in registration order). Families whose
blocks differ from "norm → attn → add → norm → MLP → add" get a registry entry (`FAMILY_RULES`),
never an if/elif chain. Not here: hooks and site semantics (see `adapter.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from aimri.errors import AimriError

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class BlockLayout:
    """Names of a block's children, relative to the block module."""

    attn: str
    """The attention module; its output[1] is the pattern when attention runs eagerly."""
    ln2: str
    """The norm whose output is the MLP's input (`ln2.hook_normalized`)."""
    mlp: str
    attn_out: str
    """The module whose output is added to the residual stream after attention."""
    mlp_out: str
    """The module whose output is added to the residual stream after the MLP."""
    parallel: bool = False
    """Attention and MLP both read the block's input (GPT-NeoX, GPT-J): no `hook_resid_mid`."""


@dataclass(frozen=True)
class ModelLayout:
    layers: nn.ModuleList
    block: BlockLayout
    final_norm: nn.Module | None
    unembed: nn.Module


LayoutRule = Callable[[object, BlockLayout], BlockLayout]
FAMILY_RULES: dict[str, LayoutRule] = {}


def register_family(*model_types: str) -> Callable[[LayoutRule], LayoutRule]:
    """Register a rule that adjusts the generic layout for these `config.model_type`s."""

    def deco(rule: LayoutRule) -> LayoutRule:
        for t in model_types:
            FAMILY_RULES[t] = rule
        return rule

    return deco


@register_family("gemma2", "gemma3", "gemma3_text")
def _sandwich_norms(config: object, generic: BlockLayout) -> BlockLayout:
    # Gemma 2/3 normalise each branch's output before adding it to the residual stream.
    return replace(
        generic,
        ln2="pre_feedforward_layernorm",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
    )


@register_family("gpt_neox", "gptj", "phi")
def _parallel_residual(config: object, generic: BlockLayout) -> BlockLayout:
    return replace(generic, parallel=bool(getattr(config, "use_parallel_residual", True)))


def n_layers_of(config: object) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, attr, None)
        if isinstance(n, int):
            return n
    raise AimriError(
        f"cannot tell how many layers a '{getattr(config, 'model_type', '?')}' model has: its "
        "config has no num_hidden_layers/n_layer; register a family rule in aimri.model.layout"
    )


def discover_layout(hf_model: nn.Module, config: object) -> ModelLayout:
    model_type = str(getattr(config, "model_type", "unknown"))
    n_layers = n_layers_of(config)
    layers = next(
        (m for m in hf_model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers),
        None,
    )
    if layers is None:
        raise AimriError(
            f"no list of {n_layers} blocks found in this '{model_type}' model: aimri supports "
            "decoder-only transformers; register a family rule in aimri.model.layout"
        )
    block = _generic_block(layers[0], model_type)
    rule = FAMILY_RULES.get(model_type)
    if rule is not None:
        block = rule(config, block)
    elif _count_norms(layers[0]) > 2:
        raise AimriError(
            f"'{model_type}' blocks have more than two norms, so where the MLP input and the "
            "branch outputs are is ambiguous; register a family rule in aimri.model.layout"
        )
    _check_children(layers[0], block, model_type)
    unembed = hf_model.get_output_embeddings()  # type: ignore[operator]
    if unembed is None:
        raise AimriError(f"this '{model_type}' model has no output embedding (LM head)")
    return ModelLayout(layers, block, _find_final_norm(hf_model), unembed)


def _generic_block(block: nn.Module, model_type: str) -> BlockLayout:
    children = dict(block.named_children())
    attn = next((n for n in _ATTN_NAMES if n in children), None)
    mlp = next((n for n in _MLP_NAMES if n in children), None)
    norms = [n for n, m in children.items() if "norm" in type(m).__name__.lower()]
    if attn is None or mlp is None or len(norms) < 2:
        raise AimriError(
            f"cannot find attention, MLP and two norms in a '{model_type}' block (children: "
            f"{', '.join(children)}); register a family rule in aimri.model.layout"
        )
    return BlockLayout(attn=attn, ln2=norms[1], mlp=mlp, attn_out=attn, mlp_out=mlp)


def _count_norms(block: nn.Module) -> int:
    return sum("norm" in type(m).__name__.lower() for m in block.children())


def _check_children(block: nn.Module, layout: BlockLayout, model_type: str) -> None:
    children = dict(block.named_children())
    for name in (layout.attn, layout.ln2, layout.mlp, layout.attn_out, layout.mlp_out):
        if name not in children:
            raise AimriError(
                f"the layout rule for '{model_type}' names '{name}', which its blocks lack "
                f"(children: {', '.join(children)}); fix the rule in aimri.model.layout"
            )


def _find_final_norm(hf_model: nn.Module) -> nn.Module | None:
    base = getattr(hf_model, "base_model", hf_model)
    for name in _FINAL_NORM_NAMES:
        m = getattr(base, name, None)
        if isinstance(m, nn.Module):
            return m
    return None
