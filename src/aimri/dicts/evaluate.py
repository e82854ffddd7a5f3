"""`aimri eval`: how good is a dictionary, in numbers a reader can compare.

On held-out text: reconstruction (MSE, FVU, cosine, norm ratio), sparsity (L0, L1, dead and
dense fractions, a firing-density histogram), and with the dictionary spliced into the model:
cross-entropy against the clean model and against zero-ablating the site (→ loss recovered), and
KL to the clean model. The same for two baselines with the same number of active dimensions:
PCA (the top-L0 principal components) and random directions with TopK coding — so a user can
tell learned structure from what any low-rank code gives. Output is shaped like SAEBench's
"core" metrics. Not here: training (`train.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from aimri._io import write_json_atomic
from aimri.config import DictConfig, EvalConfig
from aimri.corpus.contexts import take_contexts
from aimri.dicts.dictionary import Dictionary, build_dictionary
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.model.load import load_model
from aimri.store.sinks import model_special_ids, sinks_in_contexts

Replace = Callable[[Tensor], Tensor]
"""[N, d_in] activations (flattened tokens) → [N, d_out] replacement at the output site."""


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, Any]
    """SAEBench-shaped core metrics of the dictionary."""
    baselines: dict[str, dict[str, Any]]
    """The same metrics for 'pca' and 'random' (empty when not asked for)."""


def evaluate(
    cfg: EvalConfig, model: Model | None = None, dictionary: Dictionary | None = None
) -> EvalResult:
    d = dictionary or load_dictionary(cfg.dictionary)
    model = model or load_model(cfg.model)
    _check_fits(d.cfg, model)
    contexts = take_contexts(model.tokenizer, cfg.corpus)
    site_in = d.cfg.site
    site_out = d.cfg.site_out or d.cfg.site
    special = model_special_ids(model.tokenizer, cfg.corpus.prepend_bos)
    clean = _clean_pass(
        model, contexts, (site_in, site_out), cfg.batch_size, special, cfg.exclude_sinks
    )
    # Zero-ablating the site is the same pass for every dictionary that reads it: run it once.
    ablated = _spliced(model, contexts, d.cfg, clean, cfg.batch_size, _zeros(d.cfg.out_width))
    ours = _metrics(model, contexts, d, clean, cfg.batch_size, ablated)
    baselines: dict[str, dict[str, Any]] = {}
    if cfg.baselines:
        k = max(1, round(ours["sparsity"]["l0"]))
        for name, base in _baselines(d.cfg, clean, k).items():
            baselines[name] = _metrics(model, contexts, base, clean, cfg.batch_size, ablated)
    result = EvalResult(ours, baselines)
    if cfg.dictionary.is_dir():
        write_json_atomic(cfg.dictionary / "metrics.json", _saebench_json(cfg, d.cfg, result))
    return result


@dataclass
class _Clean:
    x: Tensor
    """[n_tokens, d_in] input-site activations of ordinary tokens (sinks left out)."""
    y: Tensor
    """[n_tokens, d_out] output-site activations, same tokens."""
    x_sink: Tensor
    """[n_sinks, d_in] the sinks' input activations (position 0, specials, massive tokens)."""
    y_sink: Tensor
    ce: float
    logp: list[Tensor]
    """Per batch [b, pos, vocab] log-probabilities of the clean model."""
    sink: list[Tensor]
    """Per batch [b, pos] bool: where the dictionary is not spliced in (the sinks)."""


def _check_fits(cfg: DictConfig, model: Model) -> None:
    for site in filter(None, (cfg.site, cfg.site_out)):
        if site not in model.sites:
            raise AimriError(
                f"the dictionary reads site '{site}', which this model lacks (it has "
                f"{model.info.n_layers} layers); evaluate it on the model it was trained on"
            )
    if cfg.d_in != model.info.d_model:
        raise AimriError(
            f"the dictionary's width d_in={cfg.d_in} does not match the model's d_model="
            f"{model.info.d_model} at '{cfg.site}': it was trained on another model"
        )


@torch.no_grad()
def _clean_pass(
    model: Model,
    contexts: Tensor,
    sites: tuple[str, str],
    batch: int,
    special: tuple[int, ...] = (),
    exclude_sinks: bool = True,
) -> _Clean:
    parts: dict[str, list[Tensor]] = {k: [] for k in ("x", "y", "xs", "ys")}
    logps, sinks, ce = [], [], 0.0
    for ids in contexts.split(batch):
        run = model.run(ids, read=list(dict.fromkeys(sites)))
        assert run.logits is not None
        logp = run.logits.float().log_softmax(-1)
        logps.append(logp)
        ce += _ce_sum(logp, ids.to(logp.device))
        x, y = (run.acts[s].float() for s in sites)
        sink = sinks_in_contexts(ids.to(x.device), [x, y], special, exclude_sinks)
        sinks.append(sink)
        parts["x"].append(x[~sink])
        parts["y"].append(y[~sink])
        parts["xs"].append(x[sink])
        parts["ys"].append(y[sink])
    n_pred = contexts.shape[0] * (contexts.shape[1] - 1)
    x, y, xs, ys = (torch.cat(parts[k]) for k in ("x", "y", "xs", "ys"))
    return _Clean(x, y, xs, ys, ce / n_pred, logps, sinks)


def _ce_sum(logp: Tensor, ids: Tensor) -> float:
    return float(-logp[:, :-1].gather(-1, ids[:, 1:, None]).sum())


def _replace_with(d: Dictionary) -> Replace:
    def replace(x: Tensor) -> Tensor:
        return d.decode(d.encode(x), x)

    return replace


@torch.no_grad()
def _zeros(width: int) -> Replace:
    return lambda x: torch.zeros(len(x), width, device=x.device)


@torch.no_grad()
def _metrics(
    model: Model,
    contexts: Tensor,
    d: Dictionary,
    clean: _Clean,
    batch: int,
    ablated: tuple[float, float],
) -> dict[str, Any]:
    """`d`'s metrics; `ablated` is the (CE, KL) of the model with the site zeroed."""
    d = d.to(model.device).eval()
    codes = d.encode(clean.x)
    recon = d.decode(codes, clean.x)
    dense = codes.to_dense(d.cfg.d_sae)
    sink_fvu = _fvu(d.decode(d.encode(clean.x_sink), clean.x_sink), clean.y_sink)
    with_sinks = _fvu(
        torch.cat([recon, d.decode(d.encode(clean.x_sink), clean.x_sink)]),
        torch.cat([clean.y, clean.y_sink]),
    )
    spliced = _spliced(model, contexts, d.cfg, clean, batch, _replace_with(d))
    metrics = _core(clean, recon, dense, spliced, ablated)
    metrics["sinks"] = {
        "n_tokens": len(clean.y_sink),
        "fraction": len(clean.y_sink) / max(len(clean.y) + len(clean.y_sink), 1),
        "fvu": sink_fvu,
        "fvu_all_tokens": with_sinks,
        "note": "FVU above is on ordinary tokens; here the sinks' own (against their mean), and "
        "FVU over all tokens with the sinks in, as tools that keep them report it",
    }
    return metrics


def _fvu(recon: Tensor, y: Tensor) -> float | None:
    if len(y) < 2:
        return None
    total = (y - y.mean(0)).pow(2).sum(-1).mean()
    return float((recon - y).pow(2).sum(-1).mean() / total) if total > 0 else None


@torch.no_grad()
def _spliced(
    model: Model, contexts: Tensor, cfg: DictConfig, clean: _Clean, batch: int, replace: Replace
) -> tuple[float, float]:
    """(cross-entropy, mean KL to clean) with the output site replaced by `replace(input)`."""
    ce = kl = 0.0
    stash: dict[str, Tensor] = {}

    def keep_input(t: Tensor) -> Tensor:
        stash["x"] = t
        return t

    def put(t: Tensor) -> Tensor:
        x = stash["x"] if cfg.site_out else t
        new = replace(x.reshape(-1, x.shape[-1]).float()).reshape(t.shape).to(t.dtype)
        return torch.where(stash["sink"][..., None], t, new)  # sinks as they were, as in training

    patch = {cfg.site_out: put, cfg.site: keep_input} if cfg.site_out else {cfg.site: put}
    for ids, logp_clean, sink in zip(contexts.split(batch), clean.logp, clean.sink, strict=True):
        stash["sink"] = sink
        logits = model.run(ids, patch=patch).logits
        assert logits is not None
        logp = logits.float().log_softmax(-1)
        ce += _ce_sum(logp, ids.to(logp.device))
        kl += float(
            F.kl_div(logp, logp_clean, log_target=True, reduction="none").sum(-1)[:, 1:].sum()
        )
    n = contexts.shape[0] * (contexts.shape[1] - 1)
    return ce / n, kl / n


def _core(
    clean: _Clean,
    recon: Tensor,
    dense: Tensor,
    spliced: tuple[float, float],
    ablated: tuple[float, float],
) -> dict[str, Any]:
    y = clean.y
    err = (recon - y).pow(2).sum(-1)
    total = (y - y.mean(0)).pow(2).sum(-1).mean()
    density = (dense > 0).float().mean(0)
    hist = torch.histc(density.clamp_min(1e-9).log10(), bins=7, min=-7, max=0).tolist()
    ce_sae, kl_sae = spliced
    ce_abl, kl_abl = ablated
    return {
        "model_behavior_preservation": {
            "kl_div_score": (kl_abl - kl_sae) / kl_abl if kl_abl > 0 else math.nan,
            "kl_div_with_ablation": kl_abl,
            "kl_div_with_sae": kl_sae,
        },
        "model_performance_preservation": {
            "ce_loss_score": (ce_abl - ce_sae) / (ce_abl - clean.ce)
            if ce_abl != clean.ce
            else math.nan,
            "ce_loss_with_ablation": ce_abl,
            "ce_loss_with_sae": ce_sae,
            "ce_loss_without_sae": clean.ce,
        },
        "reconstruction_quality": {
            "explained_variance": float(1 - err.mean() / total),
            "fvu": float(err.mean() / total),
            "mse": float(err.mean() / y.shape[1]),
            "cossim": float(F.cosine_similarity(recon, y, dim=-1).mean()),
        },
        "shrinkage": {
            "l2_norm_in": float(y.norm(dim=-1).mean()),
            "l2_norm_out": float(recon.norm(dim=-1).mean()),
            "l2_ratio": float((recon.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-8)).mean()),
        },
        "sparsity": {
            "l0": float((dense > 0).sum(-1).float().mean()),
            "l1": float(dense.abs().sum(-1).mean()),
        },
        "misc_metrics": {
            "frac_dead": float((density == 0).float().mean()),
            "freq_over_1_percent": float((density > 0.01).float().mean()),
            "freq_over_10_percent": float((density > 0.1).float().mean()),
            "firing_density_log10_histogram": {
                "edges": list(range(-7, 1)),
                "counts": [int(c) for c in hist],
            },
            "n_tokens": len(y),
        },
    }


def _baselines(cfg: DictConfig, clean: _Clean, k: int) -> dict[str, Dictionary]:
    """PCA with k components and random TopK-k directions, as dictionaries of the same shape."""
    x, y = clean.x.cpu(), clean.y.cpu()
    g = torch.Generator().manual_seed(0)
    out: dict[str, Dictionary] = {}
    if not cfg.transcoder:
        mean = x.mean(0)
        _, _, V = torch.linalg.svd(x - mean, full_matrices=False)  # V: [d, d]
        pca = build_dictionary(dataclasses.replace(cfg, architecture="relu", d_sae=2 * k))
        with torch.no_grad():  # ±component pairs make a ReLU code that reproduces the projection
            comps = V[:k]
            pca.W_enc.copy_(torch.cat([comps, -comps]))
            pca.W_dec.copy_(torch.cat([comps, -comps]))
            pca.b_enc.zero_()
            pca.b_dec.copy_(mean)
        out["pca"] = pca
    rnd = build_dictionary(dataclasses.replace(cfg, architecture="topk", k=min(k, cfg.d_sae)))
    with torch.no_grad():
        W = torch.randn(cfg.d_sae, cfg.out_width, generator=g)
        W /= W.norm(dim=-1, keepdim=True)
        rnd.W_dec.copy_(W)
        if not cfg.transcoder:
            rnd.W_enc.copy_(W)
            rnd.b_dec.copy_(x.mean(0))
        else:
            rnd.b_dec.copy_(y.mean(0))
    out["random"] = rnd
    return out


def _saebench_json(cfg: EvalConfig, dict_cfg: DictConfig, result: EvalResult) -> dict[str, Any]:
    return {
        "eval_type_id": "core",
        "eval_config": {
            "corpus": dataclasses.asdict(cfg.corpus),
            "model": cfg.model.spec,
            "note": "held-out text; attention sinks and massive activations (position 0, special "
            "tokens, outsized norms) left out of every metric but 'sinks'",
        },
        "sae_cfg_dict": dataclasses.asdict(dict_cfg),
        "eval_result_metrics": result.metrics,
        "baselines": result.baselines,
    }
