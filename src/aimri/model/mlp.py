"""One layer's MLP neurons, found generically: hidden activations and write directions.

An MLP's hidden neurons are the input of its down projection: after the activation function,
and in gated MLPs (Llama, Qwen, Mistral, Gemma) after the gate's product with the up
projection. `MLPNeurons` reads them from the MLP's own input (the site
`blocks.L.ln2.hook_normalized`) by running the layer's MLP module and stopping at its down
projection, so whatever the family computes (GELU, SiLU gates, fused projections) is what it
returns. The down projection is found by running the MLP once on a probe: the last module with
a 2-D weight that it calls, whose output is the MLP's output. Mixture-of-experts layers have
no such module and are refused. Not here: features, sampling neurons (`aimri.features.basis`).
"""

from __future__ import annotations

from typing import Any, final

import torch
from torch import Tensor, nn

from aimri.errors import AimriError
from aimri.model.adapter import Model


class _Stop(Exception):
    """Raised at the down projection: the hidden activation is read, the rest is not needed."""


@final
class MLPNeurons:
    """The hidden neurons of layer `layer`'s MLP of `model`."""

    def __init__(self, model: Model, layer: int) -> None:
        if not 0 <= layer < model.info.n_layers:
            raise AimriError(
                f"layer {layer} has no MLP: model '{model.info.spec}' has {model.info.n_layers} "
                f"layers (0-{model.info.n_layers - 1})"
            )
        block = model.layout.layers[layer]
        self.layer = layer
        self.mlp: nn.Module = dict(block.named_children())[model.layout.block.mlp]
        self.d_model = model.info.d_model
        self.down, self.d_mlp = _find_down_projection(self.mlp, self.d_model, model.info.family)

    @property
    def _param(self) -> Tensor:
        return next(self.down.parameters())

    @torch.no_grad()
    def hidden(self, x: Tensor) -> Tensor:
        """[N, d_model] the MLP's input → [N, d_mlp] its hidden activations (float32, on the
        model's device)."""
        p = self._param
        captured: dict[str, Tensor] = {}

        def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured["h"] = args[0]
            raise _Stop

        handle = self.down.register_forward_pre_hook(grab)
        try:
            self.mlp(x.to(p.device, p.dtype))
        except _Stop:
            pass
        finally:
            handle.remove()
        h = captured["h"]
        assert h.shape == (*x.shape[:-1], self.d_mlp), (h.shape, x.shape)
        return h.float()

    @torch.no_grad()
    def write_directions(self, chunk: int = 1024) -> Tensor:
        """[d_mlp, d_model] what each neuron adds to the MLP's output at activation 1: the down
        projection's columns (its bias left out), on the CPU in float32."""
        p = self._param
        zero = self.down(torch.zeros(1, self.d_mlp, device=p.device, dtype=p.dtype))
        rows = []
        for start in range(0, self.d_mlp, chunk):
            n = min(chunk, self.d_mlp - start)
            basis = torch.zeros(n, self.d_mlp, device=p.device, dtype=p.dtype)
            basis[torch.arange(n), torch.arange(start, start + n)] = 1
            rows.append((self.down(basis) - zero).float().cpu())
        return torch.cat(rows)


def _find_down_projection(mlp: nn.Module, d_model: int, family: str) -> tuple[nn.Module, int]:
    """The MLP's down projection and its input width, by running the MLP on a random probe."""
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []

    def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            calls.append((module, args[0], out))

    weighted = [m for m in mlp.modules() if _has_matrix(m)]
    handles = [m.register_forward_hook(record) for m in weighted]
    p = next(mlp.parameters())
    probe = torch.randn(3, d_model, generator=torch.Generator().manual_seed(0)).to(
        p.device, p.dtype
    )
    try:
        with torch.no_grad():
            out = mlp(probe)
    finally:
        for h in handles:
            h.remove()
    out = out[0] if isinstance(out, tuple) else out
    if calls:
        down, h, down_out = calls[-1]
        if (
            sum(m is down for m, _, _ in calls) == 1
            and h.shape[:-1] == probe.shape[:-1]
            and down_out.shape == out.shape
            and torch.allclose(down_out, out)
        ):
            return down, int(h.shape[-1])
    raise AimriError(
        f"cannot find the MLP neurons of this '{family}' model: its MLP "
        f"({type(mlp).__name__}) does not end in one projection that makes its output (a "
        "mixture of experts?); MLP neurons are read only from dense MLPs, so compare this "
        "model's features with the other baselines"
    )


def _has_matrix(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, nn.Parameter) and w.dim() == 2
