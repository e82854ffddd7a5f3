"""The scan's dictionary stage: evaluate the SAE the read trained (or the one given with
--dictionary) on held-out text, against PCA and random baselines of the same size.

The SAE was trained by the activations stage's one read (`read.py`: a TopK SAE, one pass over
fresh tokens of the scan's corpus). Evaluation reads other text: for the built-in corpus its
held-out split (other topics, other wording), else the same source in another order.
Not here: the training and evaluation themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypedDict

from aimri.config import CorpusConfig, EvalConfig
from aimri.dicts.dictionary import Dictionary
from aimri.dicts.evaluate import evaluate
from aimri.dicts.formats import load_dictionary
from aimri.errors import AimriError
from aimri.model.adapter import Model
from aimri.report.internals import dictionary_view
from aimri.report.view import View
from aimri.scanner.basics import ACTIVATIONS
from aimri.scanner.finding import Finding
from aimri.scanner.layout import ScanRun
from aimri.scanner.read import DictTraining, dict_site
from aimri.scanner.stage import Method, Stage
from aimri.store.manifest import read_manifest

EVAL_TOKENS = 4096


class SinksLeftOut(TypedDict):
    """What the sink rule left out of the training tokens (`store.sinks`), decoded."""

    rule: str
    n_tokens: int
    n_identity: int
    special_tokens: list[str]
    n_massive: int
    median_norm: float
    threshold: float
    massive_tokens: list[list[Any]]
    """[token, count] pairs."""


class DictionaryResult(TypedDict):
    site: str
    path: str
    trained_here: bool
    training: DictTraining | None
    eval_corpus: str
    """The text the evaluation read."""
    eval: dict[str, Any]
    """`dicts.evaluate` metrics, SAEBench's groups, FVU on ordinary tokens."""
    baselines: dict[str, Any]
    eval_tokens: int
    sinks: SinksLeftOut | None


def dictionary_stage(run: ScanRun) -> DictionaryResult:
    cfg, model, layout = run.cfg, run.model, run.layout
    site = dict_site(cfg, model)
    model.expand_sites([site])  # a clear error for a site this model lacks
    training = run.read.sae if run.read is not None else None
    if cfg.dictionary is not None:
        path = cfg.dictionary
        loaded = load_dictionary(path)
        if loaded.cfg.site and loaded.cfg.site != site and cfg.dict_site:
            raise AimriError(
                f"--dictionary reads '{loaded.cfg.site}' but --dict-site is '{site}': drop one"
            )
        site = loaded.cfg.site or site
    else:
        path = layout.dictionary(site)
    corpus = eval_corpus(cfg.corpus, EVAL_TOKENS)
    result = evaluate(EvalConfig(dictionary=path, model=cfg.model, corpus=corpus), model=model)
    return {
        "site": site,
        "path": layout.relative(path),
        "trained_here": cfg.dictionary is None,
        "training": training,
        "eval_corpus": f"{corpus.source} (seed {corpus.seed})",
        "eval": result.metrics,
        "baselines": result.baselines,
        "eval_tokens": EVAL_TOKENS,
        "sinks": _sinks(layout.dict_activations, site, model) if cfg.dictionary is None else None,
    }


def eval_corpus(corpus: CorpusConfig, max_tokens: int) -> CorpusConfig:
    """Text the dictionaries did not train on: the built-in corpus's held-out split (other
    topics, other wording), or for other sources the same source in another order."""
    held_out = "builtin-held-out" if corpus.source == "builtin" else corpus.source
    return dataclasses.replace(corpus, source=held_out, max_tokens=max_tokens, seed=corpus.seed + 1)


def _sinks(store: Path, site: str, model: Model) -> SinksLeftOut | None:
    """What the sink rule left out of the training tokens at `site`, with tokens decoded."""
    summary = read_manifest(store).get("sinks")
    if not summary or site not in summary["sites"]:
        return None
    s = summary["sites"][site]

    def decode(t: int) -> str:
        return model.tokenizer.decode([int(t)])

    return {
        "rule": summary["rule"],
        "n_tokens": summary["n_tokens"],
        "n_identity": summary["n_identity"],
        "special_tokens": [decode(t) for t in summary["special_ids"]],
        "n_massive": s["n_massive"],
        "median_norm": s["median_norm"],
        "threshold": s["threshold"],
        "massive_tokens": [[decode(t), c] for t, c in s["massive_tokens"]],
    }


def _findings(stage: DictionaryResult) -> list[Finding]:
    m = stage["eval"]

    def fvu(x: dict[str, Any]) -> float:
        return x["reconstruction_quality"]["fvu"]

    pca = stage["baselines"].get("pca")
    versus = f"; PCA of the same size: FVU {fvu(pca):.3f}, +{_ce_cost(pca):.2f} nats" if pca else ""
    return [
        Finding(
            id="dictionary-quality",
            title=f"A sparse dictionary for {stage['site']}: splicing it in costs "
            f"{_ce_cost(m):.2f} nats per token",
            severity="info",
            summary=f"On held-out text, with the dictionary's reconstruction in place of the site, "
            f"the model's loss rises by {_ce_cost(m):.2f} nats per token (KL "
            f"{m['model_behavior_preservation']['kl_div_with_sae']:.2f}), with FVU "
            f"{fvu(m):.3f} at L0 {m['sparsity']['l0']:.0f}{versus}.",
            evidence={
                "dictionary": m["model_performance_preservation"],
                "baselines": {
                    k: v["model_performance_preservation"] for k, v in stage["baselines"].items()
                },
            },
        )
    ]


def _ce_cost(m: dict[str, Any]) -> float:
    """Nats per token the spliced-in reconstruction adds to the model's loss."""
    p = m["model_performance_preservation"]
    return p["ce_loss_with_sae"] - p["ce_loss_without_sae"]


DICTIONARY = Stage[DictionaryResult](
    "dictionary",
    dictionary_stage,
    needs=(ACTIVATIONS,),
    findings=_findings,
    checked=lambda r: (
        f"a sparse dictionary at {r['site']}, against PCA and random baselines of the same size"
    ),
    sure=lambda r: (
        f"Spliced into the model in place of {r['site']}, the dictionary raises its loss by "
        f"{_ce_cost(r['eval']):.2f} nats per token on held-out text (FVU "
        f"{r['eval']['reconstruction_quality']['fvu']:.2f})."
    ),
    method=lambda r, c: Method(
        "sparse dictionary",
        "TopK SAE; FVU, L0, CE loss spliced in, against PCA and random; attention sinks and "
        "massive activations left out (their FVU shown apart)",
        f"site {r['site']}, "
        + (_trained(r["training"]) if r["training"] else "loaded")
        + f"; evaluated on {r['eval_corpus']}",
    ),
    view=View("dictionary.html.j2", dictionary_view, nav="Dictionary"),
)


def _trained(t: DictTraining) -> str:
    """How much text the SAE has seen: this scan's, and the earlier scans' it continued."""
    here = f"{t['distinct_tokens']:,} tokens in one pass"
    if not t["earlier_scans"]:
        return here
    n = t["earlier_scans"]
    return (
        f"{here}, continuing the SAE of {n} earlier scan{'s' * (n > 1)} of this model "
        f"({t['all_tokens']:,} training tokens in all; --no-memory starts afresh)"
    )


def scan_dictionary(run: ScanRun) -> Dictionary:
    """The dictionary this stage trained or loaded, for the stages that need it: loaded from
    disk once per scan."""
    if run.dictionary is None:
        run.dictionary = load_dictionary(run.layout.resolve(DICTIONARY.required(run)["path"]))
    return run.dictionary
