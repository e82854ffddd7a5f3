"""A loaded model with named sites: read any set of sites in one forward pass, patch any site.

This is the one backend: a Hugging Face `transformers` model plus plain torch forward hooks.
Higher layers (steering, circuits) express their edits as patch functions `tensor -> tensor`
at a site; this module knows nothing of dictionaries or features.

Semantics, per site kind (L = layer, shapes [batch, pos, d_model] unless noted):
- `hook_resid_pre`   input of block L          - `hook_resid_post`  output of block L
- `hook_attn_out`    what attention adds to the residual stream
- `hook_mlp_out`     what the MLP adds to the residual stream
- `hook_resid_mid`   resid_pre + attn_out (sequential blocks only)
- `ln2.hook_normalized`  the MLP's input (output of the pre-MLP norm)
- `attn.hook_pattern`    attention probabilities [batch, head, query, key]; read-only
A read sees the value after any patch at the same site.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from aimri.errors import AimriError
from aimri.model.layout import ModelLayout, discover_layout, n_layers_of
from aimri.model.sites import all_sites, expand_sites, parse_site

PatchFn = Callable[[Tensor], Tensor]


class RunResult(NamedTuple):
    logits: Tensor | None
    """[batch, pos, vocab], or None when the run was asked for activations only."""
    acts: dict[str, Tensor]
    """site -> activation, detached, in the model's dtype."""


@dataclass(frozen=True)
class ModelInfo:
    """What a person (and a manifest) needs to know about a loaded model."""

    spec: str
    source: str
    family: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    vocab_size: int
    n_params: int
    dtype: str
    parallel_residual: bool


class _StopForward(Exception):
    """Raised by a hook once every requested site has been read and no logits are needed."""


def _main(x: Any) -> Tensor:
    return x[0] if isinstance(x, tuple) else x


def _with_main(x: Any, value: Tensor) -> Any:
    return (value, *x[1:]) if isinstance(x, tuple) else value


class Model:
    """A transformers causal LM, its tokenizer, and its sites. Build it with `aimri.load_model`."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any, *, spec: str, source: str) -> None:
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        config: Any = hf_model.config
        self.layout: ModelLayout = discover_layout(hf_model, config)
        embed = hf_model.get_input_embeddings()  # type: ignore[operator]
        d_model = int(embed.weight.shape[1])
        first_param = next(hf_model.parameters())
        self.info = ModelInfo(
            spec=spec,
            source=source,
            family=str(config.model_type),
            n_layers=n_layers_of(config),
            d_model=d_model,
            d_mlp=int(_first_attr(config, ("intermediate_size", "n_inner"), None) or 4 * d_model),
            n_heads=int(_first_attr(config, ("num_attention_heads", "n_head"), 0)),
            vocab_size=int(embed.weight.shape[0]),
            n_params=sum(p.numel() for p in hf_model.parameters()),
            dtype=str(first_param.dtype).removeprefix("torch."),
            parallel_residual=self.layout.block.parallel,
        )
        self.sites: list[str] = all_sites(self.info.n_layers, self.info.parallel_residual)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def at_dtype(self, dtype: torch.dtype) -> Model:
        """This model at another dtype: itself if already there, else a copy (the original keeps
        its weights; the copy shares the tokenizer)."""
        if next(self.hf.parameters()).dtype == dtype:
            return self
        hf = copy.deepcopy(self.hf).to(dtype)
        return Model(hf, self.tokenizer, spec=self.info.spec, source=self.info.source)

    def expand_sites(self, patterns: Sequence[str]) -> list[str]:
        """Names and globs → this model's site names in forward-pass order."""
        return expand_sites(list(patterns), self.sites)

    def site_width(self, site: str) -> int:
        """Width of the last dimension of a per-token site (d_model for all but patterns)."""
        if parse_site(site).kind == "attn.hook_pattern":
            raise AimriError(
                f"site '{site}' holds attention patterns [batch, head, query, key], not one "
                "vector per token; read it with Model.run(read=[...]) instead of storing it"
            )
        return self.info.d_model

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 over parameter names, dtypes, shapes and bytes: the model's identity."""
        h = hashlib.sha256()
        seen: set[int] = set()
        for name, t in sorted(self.hf.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.data_ptr() in seen:  # tied weights: hash the bytes once
                continue
            seen.add(t.data_ptr())
            flat = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().data)
        return h.hexdigest()

    @torch.no_grad()  # not inference_mode: the activations stay usable in autograd later
    def run(
        self,
        input_ids: Tensor,
        *,
        read: Sequence[str] = (),
        patch: Mapping[str, PatchFn] | None = None,
        logits: bool = True,
    ) -> RunResult:
        """One forward pass over `input_ids` [batch, pos], reading and patching sites.

        With `logits=False` the pass stops right after the last site to read, so the layers
        after it (and the LM head) cost nothing.
        """
        read_sites = self.expand_sites(read) if read else []
        patches = {s: fn for p, fn in (patch or {}).items() for s in self.expand_sites([p])}
        acts: dict[str, Tensor] = {}
        stop_when_done = not logits and bool(read_sites)
        input_ids = input_ids.to(self.device)
        with self.hooks(read_sites, patches, acts, stop_when_done=stop_when_done):
            try:
                out = self.hf(input_ids=input_ids, use_cache=False)
            except _StopForward:
                return RunResult(None, acts)
        return RunResult(out.logits if logits else None, acts)

    @contextlib.contextmanager
    def hooks(
        self,
        read: Sequence[str],
        patch: Mapping[str, PatchFn],
        store: dict[str, Tensor],
        *,
        stop_when_done: bool = False,
    ) -> Iterator[None]:
        """Attach read and patch hooks for the duration of the block (for custom forwards)."""
        handles: list[Any] = []
        want = set(read)

        def reader(site: str) -> Callable[[Tensor], None]:
            def record(t: Tensor) -> None:
                store[site] = t.detach()
                if stop_when_done and len(store) == len(want):
                    raise _StopForward

            return record

        for site in self.sites:
            fn = patch.get(site)
            if site in want or fn is not None:
                handles += self._attach(site, reader(site) if site in want else None, fn)
        needs_eager = any(parse_site(s).kind == "attn.hook_pattern" for s in read)
        try:
            with self._eager_attention(needs_eager):
                yield
        finally:
            for h in handles:
                h.remove()

    def _attach(self, site: str, record: Callable[[Tensor], None] | None, fn: PatchFn | None):
        """Register the hooks for one site; return their handles."""
        layer, kind = parse_site(site)
        block = self.layout.layers[layer]
        b = self.layout.block
        child = dict(block.named_children())

        def edit(t: Tensor) -> Tensor:
            if fn is not None:
                new = fn(t)
                if new.shape != t.shape:
                    raise AimriError(
                        f"the patch at site '{site}' returned shape {tuple(new.shape)}, "
                        f"expected {tuple(t.shape)}: a patch must keep the shape"
                    )
                t = new
            if record is not None:
                record(t)
            return t

        if kind == "hook_resid_pre":
            return [block.register_forward_pre_hook(_pre_hook(edit), with_kwargs=True)]
        if kind == "attn.hook_pattern":
            if fn is not None:
                raise AimriError(f"site '{site}' is read-only: patch hook_attn_out instead")
            return [child[b.attn].register_forward_hook(_pattern_hook(site, edit))]
        if kind == "hook_resid_mid" and fn is not None:
            return self._attach_resid_mid_patch(block, child[b.attn_out], edit)
        if kind == "hook_resid_mid":
            return [child[b.ln2].register_forward_pre_hook(_pre_hook(edit), with_kwargs=True)]
        module = {
            "hook_resid_post": block,
            "hook_attn_out": child[b.attn_out],
            "hook_mlp_out": child[b.mlp_out],
            "ln2.hook_normalized": child[b.ln2],
        }[kind]
        return [module.register_forward_hook(lambda m, a, out: _with_main(out, edit(_main(out))))]

    def _attach_resid_mid_patch(self, block: nn.Module, attn_out: nn.Module, edit: PatchFn):
        # The residual stream after attention is resid_pre + attn_out, formed inside the
        # block's forward. Patching it = giving attention the output new_mid - resid_pre.
        stash: dict[str, Tensor] = {}

        def keep_pre(m, args, kwargs):
            stash["pre"] = args[0] if args else kwargs["hidden_states"]

        def patch_out(m, args, out):
            pre = stash["pre"]
            return _with_main(out, edit(pre + _main(out)) - pre)

        return [
            block.register_forward_pre_hook(keep_pre, with_kwargs=True),
            attn_out.register_forward_hook(patch_out),
        ]

    @contextlib.contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        """Attention probabilities exist only in the eager implementation; switch to it."""
        config = self.hf.config  # type: ignore[attr-defined]
        before = getattr(config, "_attn_implementation", None)
        if not needed or before == "eager":
            yield
            return
        self.hf.set_attn_implementation("eager")  # type: ignore[operator]
        try:
            yield
        finally:
            self.hf.set_attn_implementation(before)  # type: ignore[operator]


def _pre_hook(edit: PatchFn):
    def hook(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    return hook


def _pattern_hook(site: str, edit: PatchFn):
    def hook(module, args, out):
        if not isinstance(out, tuple) or len(out) < 2 or out[1] is None:
            raise AimriError(
                f"site '{site}': this attention module does not return its probabilities; "
                "load the model with attention implementation 'eager'"
            )
        edit(out[1])

    return hook


def _first_attr(obj: object, names: tuple[str, ...], default: Any) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default
