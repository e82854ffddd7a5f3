"""Sets of directions whose activations we study: dictionary features, neurons, random directions.

A `FeatureBasis` turns a site's activations [N, d_in] into feature activations [N, F] and knows
what each feature writes ([F, d_out], for logit effects and neighbours). The same statistics,
labelling and scoring code runs on every basis, so neurons and random directions at the same
site are honest baselines for a dictionary's features ("is this more interpretable than
chance?"). Not here: statistics (`stats.py`), training dictionaries (`aimri.dicts`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import final

import torch
from torch import Tensor

from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.features.records import BasisInfo
from aimri.model.adapter import Model


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
    """The latents of a trained SAE or transcoder."""

    def __init__(self, dictionary: Dictionary) -> None:
        self.dictionary = dictionary.eval()
        cfg = dictionary.cfg
        if not cfg.site:
            raise AimriError(
                "the dictionary does not record which site it reads (its cfg.json has no "
                "hook_name): set DictConfig.site, or pass the site when importing it"
            )
        kind = "transcoder" if cfg.transcoder else "sae"
        self.info = BasisInfo(
            kind=kind, site=cfg.site, n_features=cfg.d_sae, name=f"{kind} {cfg.site} ({cfg.d_sae})"
        )

    @torch.no_grad()
    def activations(self, x: Tensor) -> Tensor:
        d = self.dictionary
        x = x.to(d.W_enc.device, torch.float32)
        return d.encode(x).to_dense(d.cfg.d_sae)

    def write_directions(self) -> Tensor:
        return self.dictionary.W_dec.detach().float()


@final
class NeuronBasis(FeatureBasis):
    """The site's own coordinates ("neurons" of the residual stream), centred by their mean so
    that "fires" means "above its usual value"."""

    def __init__(self, site: str, mean: Tensor) -> None:
        self.mean = mean.float()
        d = len(mean)
        self.info = BasisInfo(kind="neurons", site=site, n_features=d, name=f"neurons {site} ({d})")

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
        self.info = BasisInfo(
            kind="random", site=site, n_features=n_features, name=f"random {site} ({n_features})"
        )

    def activations(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean.to(x.device)) @ self.W.T.to(x.device)

    def write_directions(self) -> Tensor:
        return self.W
