"""A transcoder set: one transcoder per layer, trained together from one pass of the model.

```
<dir>/layer_0/   a transcoder reading blocks.0.ln2.hook_normalized, predicting blocks.0.hook_mlp_out
<dir>/layer_1/   ... (each folder in the SAELens layout of `formats.py`)
```
`train_many` makes a set when `site` and `site_out` are globs; `pair_by_layer` turns the two
globs into one (input, output) pair per layer, and `load_transcoder_set` reads a set back,
ordered by layer, after checking that no layer is missing and that all widths agree.
`set_recipe` gives the settings: one that fits the scan's CPU budget, a larger one for a GPU.
`PerLayerTranscoders` shows a set to attribution as a `TranscoderStack` (as a cross-layer
transcoder is one), and `load_transcoders` opens either kind of folder.
Not here: the training loop (`train.py`), a single dictionary's files (`formats.py`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, final

from torch import Tensor

from aimri.config import CorpusConfig, OptimConfig, TrainConfig
from aimri.dicts.clt import TranscoderStack
from aimri.dicts.clt_formats import is_clt_dir, load_clt
from aimri.dicts.codes import Codes
from aimri.dicts.dictionary import Transcoder
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.model.sites import expand_sites, parse_site

_LAYER_DIR = re.compile(r"^layer_(\d+)$")
SITE_IN, SITE_OUT = "blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out"
TRAIN_HINT = f"aimri train --site '{SITE_IN}' --site-out '{SITE_OUT}' --out DIR"


class LayerPair(NamedTuple):
    layer: int
    site_in: str
    site_out: str


class SetRecipe(NamedTuple):
    """How to make a set: the tokens of the one pass of the model, and the training."""

    tokens: int
    """Tokens to run through the model once (collect them into a store, or stream them)."""
    train: TrainConfig


def set_recipe(out: Path, *, store: Path | None = None, gpu: bool = False) -> SetRecipe:
    """A set for every layer of a ~135M model. CPU (the scan's default): 16,384 tokens, width
    4 × d_model, k = 16, 3 passes over the tokens (95 steps of 512) at a high learning rate; on
    SmolLM2 held-out FVU 0.16-0.95 (mean 0.60), in 42 s of collection and 280 s of training on
    a shared 2-core CPU. GPU: 2,097,152 tokens in one pass, width 16 × d_model, k = 32, 512
    steps of 4,096 (not yet measured)."""
    if gpu:
        tokens, epochs, expansion, k, batch, lr = 1 << 21, 1, 16, 32, 4096, None
    else:
        tokens, epochs, expansion, k, batch, lr = 1 << 14, 3, 4, 16, 512, 2e-3
    usable = tokens - tokens // CorpusConfig().ctx_len  # BOS positions are left out
    optim = OptimConfig(batch_size=batch, tokens=epochs * usable, lr=lr)
    train = TrainConfig(
        store=store, site=SITE_IN, site_out=SITE_OUT, out=out, expansion=expansion, k=k, optim=optim
    )
    return SetRecipe(tokens, train)


def layer_dir(root: Path, layer: int) -> Path:
    """Where the transcoder of `layer` lives inside a set."""
    return Path(root) / f"layer_{layer}"


def is_glob(site: str) -> bool:
    return any(c in site for c in "*?[")


def pair_by_layer(site_in: str, site_out: str, available: list[str]) -> list[LayerPair]:
    """One (input, output) pair per layer from two site globs, e.g. `blocks.*.ln2.hook_normalized`
    and `blocks.*.hook_mlp_out`, expanded against `available` and matched by layer number."""
    ins, outs = expand_sites([site_in], available), expand_sites([site_out], available)
    by_in = {parse_site(s).layer: s for s in ins}
    by_out = {parse_site(s).layer: s for s in outs}
    if len(by_in) < len(ins) or len(by_out) < len(outs):
        raise AimriError(
            f"--site '{site_in}' / --site-out '{site_out}' match several sites in one layer: a "
            "transcoder set needs one input and one output site per layer; name one kind each, "
            "e.g. 'blocks.*.ln2.hook_normalized' and 'blocks.*.hook_mlp_out'"
        )
    if set(by_in) != set(by_out):
        unpaired = sorted(set(by_in) ^ set(by_out))
        raise AimriError(
            f"--site '{site_in}' and --site-out '{site_out}' cover different layers (layers "
            f"{', '.join(map(str, unpaired))} have only one of the two): every layer needs both; "
            "collect both kinds for the same layers, or narrow the globs"
        )
    return [LayerPair(layer, by_in[layer], by_out[layer]) for layer in sorted(by_in)]


def member_configs(cfg: TrainConfig, available: list[str]) -> list[TrainConfig]:
    """The set `cfg` describes with globs, as one TrainConfig per layer (its own sites, its
    own `<out>/layer_<L>/`); `available` lists the sites of the data source."""
    if not cfg.site_out:
        raise AimriError(
            f"--site '{cfg.site}' is a glob, which trains a transcoder per layer: also pass "
            "--site-out (e.g. 'blocks.*.hook_mlp_out'); for several SAEs list the sites with "
            "--also-sites"
        )
    return [
        dataclasses.replace(
            cfg, site=p.site_in, site_out=p.site_out, out=layer_dir(cfg.out, p.layer)
        )
        for p in pair_by_layer(cfg.site, cfg.site_out, available)
    ]


def load_transcoder_set(
    path: str | Path, *, n_layers: int | None = None, sparse_kernels: bool = True
) -> list[Transcoder]:
    """The transcoders saved under `path` (`layer_<L>/` folders), ordered by layer: item L
    reads and writes layer L. Refuses a set with a missing layer (layers must run from 0 to
    the last one, or to `n_layers - 1` when given), a member that is not a transcoder of its own
    layer, or members whose widths or site kinds differ."""
    path = Path(path)
    layers = _layers_on_disk(path)
    expected = range(n_layers if n_layers is not None else max(layers) + 1)
    missing = [layer for layer in expected if layer not in layers]
    extra = [layer for layer in layers if layer not in expected]
    if missing or extra:
        what = f"layers {_ranges(missing)} are missing" if missing else ""
        what += ("; " if missing and extra else "") + (
            f"layers {_ranges(extra)} are beyond the model's {n_layers}" if extra else ""
        )
        raise AimriError(
            f"transcoder set '{path}' is incomplete: {what} (it has {_ranges(layers)}); train "
            f"the missing layers with the same command that made the set ({TRAIN_HINT})"
        )
    members = [_load_member(path, layer, sparse_kernels) for layer in expected]
    _check_consistent(path, members)
    return members


def _layers_on_disk(path: Path) -> list[int]:
    if not path.is_dir():
        raise AimriError(f"transcoder set '{path}' does not exist: train one with `{TRAIN_HINT}`")
    if is_clt_dir(path):
        raise AimriError(
            f"'{path}' is a cross-layer transcoder, not a set of per-layer transcoders: "
            f"`aimri circuit --transcoders {path}` traces through it (load_transcoders opens "
            f"either kind); a per-layer set is made with `{TRAIN_HINT}`"
        )
    found = (_LAYER_DIR.match(p.name) for p in path.iterdir() if p.is_dir())
    layers = sorted(int(m.group(1)) for m in found if m)
    if not layers:
        raise AimriError(
            f"'{path}' is not a transcoder set: it has no layer_<L> folders; train one with "
            f"`{TRAIN_HINT}`, or load a single dictionary with load_dictionary"
        )
    return layers


def _load_member(root: Path, layer: int, sparse_kernels: bool) -> Transcoder:
    folder = layer_dir(root, layer)
    d = load_dictionary(folder, sparse_kernels=sparse_kernels)
    if not isinstance(d, Transcoder):
        raise AimriError(
            f"'{folder}' holds an SAE of {d.cfg.site or 'an unknown site'}, not a transcoder: a "
            f"transcoder set has one transcoder per layer; train it with `{TRAIN_HINT}`"
        )
    sites = [s for s in (d.cfg.site, d.cfg.site_out) if s]
    if any(parse_site(s).layer != layer for s in sites):
        raise AimriError(
            f"'{folder}' holds the transcoder of {' → '.join(sites)}, not of layer {layer}: the "
            "folder was renamed or copied into the wrong place; move it to its own layer_<L>"
        )
    return d


def _check_consistent(path: Path, members: list[Transcoder]) -> None:
    """Every member has the widths and site kinds of layer 0's."""
    first = _signature(members[0])
    for layer, d in enumerate(members):
        if _signature(d) != first:
            raise AimriError(
                f"transcoder set '{path}' is inconsistent: layer {layer} has (d_in, d_sae, d_out, "
                f"input kind, output kind) = {_signature(d)}, layer 0 has {first}; the folders "
                f"come from different trainings: train the whole set again with `{TRAIN_HINT}`"
            )


def _signature(d: Transcoder) -> tuple[int, int, int, str, str]:
    kind_in = parse_site(d.cfg.site).kind if d.cfg.site else ""
    kind_out = parse_site(d.cfg.site_out).kind if d.cfg.site_out else ""
    return (d.cfg.d_in, d.cfg.d_sae, d.cfg.out_width, kind_in, kind_out)


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts: list[str] = []
    for layer in layers:
        if parts and layer == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{layer}"
        else:
            parts.append(str(layer))
    return ", ".join(parts)


@final
class PerLayerTranscoders(TranscoderStack):
    """A transcoder per layer as a `TranscoderStack`: layer L's latents write layer L only."""

    def __init__(self, transcoders: Sequence[Transcoder]) -> None:
        self.members = list(transcoders)
        self.n_layers = len(self.members)
        for layer, tc in enumerate(self.members):
            if not isinstance(tc, Transcoder):
                raise AimriError(
                    f"item {layer} of the transcoders is a {type(tc).__name__}, not a "
                    "transcoder: attribution needs transcoders reading the MLP input and "
                    f"predicting the MLP output; train a set with `{TRAIN_HINT}`"
                )

    def __getitem__(self, layer: int) -> Transcoder:
        return self.members[layer]

    def __len__(self) -> int:
        return self.n_layers

    def encode(self, layer: int, x: Tensor) -> Codes:
        return self.members[layer].encode(x)

    def encoder(self, layer: int) -> Tensor:
        return self.members[layer].W_enc

    def decoder(self, source: int, target: int) -> Tensor:
        assert source == target, "a per-layer transcoder writes its own layer only"
        return self.members[source].W_dec

    def reach(self, source: int) -> range:
        return range(source, source + 1)

    def bias(self, layer: int) -> Tensor:
        return self.members[layer].b_dec

    def skip(self, layer: int) -> Tensor | None:
        return self.members[layer].W_skip

    def sites(self, layer: int) -> tuple[str, str]:
        cfg = self.members[layer].cfg
        return cfg.site, cfg.site_out


def as_stack(transcoders: Sequence[Transcoder] | TranscoderStack) -> TranscoderStack:
    """Per-layer transcoders (a list, as `load_transcoder_set` returns) or a CLT, as a stack."""
    if isinstance(transcoders, TranscoderStack):
        return transcoders
    return PerLayerTranscoders(transcoders)


def load_transcoders(
    path: str | Path, *, n_layers: int | None = None, sparse_kernels: bool = True
) -> TranscoderStack:
    """A transcoder set (`layer_<L>/` folders) or a cross-layer transcoder (circuit-tracer's
    CLT layout) from `path`, for attribution."""
    if is_clt_dir(path):
        clt = load_clt(path, sparse_kernels=sparse_kernels)
        if n_layers is not None and clt.n_layers != n_layers:
            raise AimriError(
                f"cross-layer transcoder '{path}' covers {clt.n_layers} layers, but the model "
                f"has {n_layers}: train it on this model's activations (aimri train "
                "--cross-layer)"
            )
        return clt
    return PerLayerTranscoders(
        load_transcoder_set(path, n_layers=n_layers, sparse_kernels=sparse_kernels)
    )
