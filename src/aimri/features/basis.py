"""Sets of directions whose activations we study: a dictionary's features and its baselines.

A `FeatureBasis` turns a site's activations [N, d_in] into feature activations [N, F] and knows
what each feature writes ([F, d_out], for logit effects and neighbours). The same statistics,
labelling and scoring code runs on every basis, so the baselines are honest comparisons for a
dictionary's features ("is this more interpretable than what we had without it?"):
- `MLPNeuronBasis`: the model's own neurons, the hidden units of the same layer's MLP (they read
  the MLP's input site, not the dictionary's);
- `random_dictionary` through `DictionaryBasis`: an untrained dictionary of the same width and
  k, so sparsity alone gets no credit;
- `ResidualBasis`: the coordinates of the dictionary's site (not neurons: the residual stream
  has no privileged basis);
- `RandomBasis`: random directions at the site, the chance level.
Not here: statistics (`stats.py`), training dictionaries (`aimri.dicts`), finding the MLP's
neurons in a module tree (`aimri.model.mlp`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import final

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.errors import AimriError
from aimri.features.records import BasisInfo
from aimri.model.adapter import Model
from aimri.model.mlp import MLPNeurons


class FeatureBasis(ABC):
    """Features of one site. `activations` is the only hot path."""

    info: BasisInfo

    @property
    def site(self) -> str:
        """The site whose activations `activations` reads."""
        return self.info.site

    @property
    def n_features(self) -> int:
        return self.info.n_features

    @abstractmethod
    def activations(self, x: Tensor) -> Tensor:
        """[N, d_in] site activations → [N, F] feature activations (float32, same device)."""

    @abstractmethod
    def write_directions(self) -> Tensor:
        """[F, d_model] what each feature adds to the residual stream when it fires at 1."""

    def check_fits(self, model: Model) -> None:
        """Refuse a basis made for another model, with a message that says which."""
        if self.site not in model.sites:
            raise AimriError(
                f"{self.info.name} reads site '{self.site}', which model '{model.info.spec}' "
                f"lacks ({model.info.n_layers} layers): use it with the model it was made for"
            )
        d = int(self.write_directions().shape[1])
        if d != model.info.d_model:
            raise AimriError(
                f"{self.info.name} has width {d}, but model '{model.info.spec}' has d_model "
                f"{model.info.d_model}: it was made for another model"
            )


@final
class DictionaryBasis(FeatureBasis):
    """The latents of a trained SAE or transcoder, or (`untrained=True`) of the random
    dictionary made by `random_dictionary`."""

    def __init__(self, dictionary: Dictionary, *, untrained: bool = False) -> None:
        self.dictionary = dictionary.eval()
        cfg = dictionary.cfg
        if not cfg.site:
            raise AimriError(
                "the dictionary does not record which site it reads (its cfg.json has no "
                "hook_name): set DictConfig.site, or pass the site when importing it"
            )
        if untrained:
            name = f"random sparse dictionary {cfg.site} ({cfg.d_sae}, k={cfg.k})"
            self.info = BasisInfo("random_dictionary", cfg.site, cfg.d_sae, name)
        else:
            kind = "transcoder" if cfg.transcoder else "sae"
            name = f"{kind} {cfg.site} ({cfg.d_sae})"
            self.info = BasisInfo(kind=kind, site=cfg.site, n_features=cfg.d_sae, name=name)

    @torch.no_grad()
    def activations(self, x: Tensor) -> Tensor:
        d = self.dictionary
        x = x.to(d.W_enc.device, torch.float32)
        return d.encode(x).to_dense(d.cfg.d_sae)

    def write_directions(self) -> Tensor:
        return self.dictionary.W_dec.detach().float()


def random_dictionary(trained: Dictionary, mean: Tensor, *, seed: int) -> Dictionary:
    """An untrained dictionary of `trained`'s width, k and sites, coded by TopK with the same k
    (whatever `trained`'s architecture; k is its configured k): random unit-norm decoder rows,
    the encoder their transpose (`build_dictionary`'s initialisation), and the encoder centred
    on the site's `mean` [d_in] like the other baselines, so that TopK picks directions the
    token departs along rather than the ones nearest the mean."""
    cfg = dataclasses.replace(trained.cfg, architecture="topk")
    d = build_dictionary(cfg, seed=seed)
    with torch.no_grad():
        d.b_enc.copy_(-(d.encoder_input(mean.float()[None]) @ d.W_enc.T)[0])
    return d.to(trained.W_enc.device).eval()


@final
class MLPNeuronBasis(FeatureBasis):
    """The hidden neurons of layer `layer`'s MLP (the input of its down projection), computed
    from the MLP's input site `blocks.<layer>.ln2.hook_normalized` by the model's own MLP. A
    neuron fires where its activation is positive, as after a GELU; in gated MLPs the sign is
    the up projection's, and the negative side is left unlabelled, as for the other bases."""

    def __init__(self, model: Model, layer: int) -> None:
        self.neurons = MLPNeurons(model, layer)
        d = self.neurons.d_mlp
        site = f"blocks.{layer}.ln2.hook_normalized"
        self.info = BasisInfo("mlp_neurons", site, d, f"MLP neurons blocks.{layer}.mlp ({d})")
        self._write = self.neurons.write_directions()

    def activations(self, x: Tensor) -> Tensor:
        return self.neurons.hidden(x).to(x.device)

    def write_directions(self) -> Tensor:
        return self._write


@final
class ResidualBasis(FeatureBasis):
    """The site's own coordinates, centred by their mean so that "fires" means "above its usual
    value". Not neurons: nothing in the residual stream privileges these axes."""

    def __init__(self, site: str, mean: Tensor) -> None:
        self.mean = mean.float()
        d = len(mean)
        name = f"residual coordinates {site} ({d})"
        self.info = BasisInfo(kind="residual", site=site, n_features=d, name=name)

    def activations(self, x: Tensor) -> Tensor:
        return x.float() - self.mean.to(x.device)

    def write_directions(self) -> Tensor:
        return torch.eye(len(self.mean))


@final
class RandomBasis(FeatureBasis):
    """Random unit directions at a site, projections of the centred activations: the chance
    level for every interpretability number."""

    def __init__(self, site: str, mean: Tensor, n_features: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n_features, len(mean), generator=g)
        self.W = W / W.norm(dim=-1, keepdim=True)
        self.mean = mean.float()
        name = f"random directions {site} ({n_features})"
        self.info = BasisInfo(kind="random", site=site, n_features=n_features, name=name)

    def activations(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean.to(x.device)) @ self.W.T.to(x.device)

    def write_directions(self) -> Tensor:
        return self.W
