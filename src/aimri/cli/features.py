"""What `aimri features …` and `aimri steer` print: thin views over the API's results.

Part of the CLI (the only layer that prints); kept apart from `cli/__init__.py` so that `aimri --help`
stays a small import. Not here: any computation.
"""

from __future__ import annotations

from aimri.config import (
    CircuitConfig,
    ExplainTextConfig,
    FeaturesConfig,
    SearchConfig,
    SteerConfig,
)


def dispatch_features(cfg: FeaturesConfig | SearchConfig | ExplainTextConfig) -> None:
    if isinstance(cfg, FeaturesConfig):
        _describe(cfg)
    elif isinstance(cfg, SearchConfig):
        _search(cfg)
    else:
        _explain_text(cfg)


def _describe(cfg: FeaturesConfig) -> None:
    from aimri.features.pipeline import describe
    from aimri.features.summary import format_summary

    r = describe(cfg)
    fs = r.dictionary.features
    print(
        f"{len(fs.features):,} features of {fs.basis.name} described on {fs.n_tokens:,} tokens "
        f"({100 * fs.dead_fraction:.1f}% of all features never fired)"
    )
    print(format_summary(r.summary))
    print(f"catalog: {r.catalog}")


def _search(cfg: SearchConfig) -> None:
    from aimri.features.catalog import search

    hits = search(cfg)
    if not hits:
        print(f"no label matches {cfg.query!r}")
    for h in hits:
        score = "–" if h.score is None else f"{h.score:.2f}"
        print(f"{h.basis:<40} #{h.feature:<6} {score:>5}  [{h.explainer}] {h.text}")


def _explain_text(cfg: ExplainTextConfig) -> None:
    from aimri.features.catalog import explain_text_cli

    r = explain_text_cli(cfg)
    print(f"features of {r.basis}, strongest first, per token:")
    for token, feats in zip(r.tokens, r.features, strict=True):
        shown = "  ".join(
            f"#{t.feature} {t.activation:.2f} ({t.label or 'unlabelled'})" for t in feats
        )
        print(f"{token!r:>16}  {shown or '–'}")


def print_steering(cfg: SteerConfig) -> None:
    from aimri.steer import steer

    r = steer(cfg)
    print(f"concept: {r.concept!r}")
    for row in (r.baseline, *r.rows):
        name = "no edit" if row.strength is None else f"strength {row.strength:g}"
        print(
            f"{name:>14}: feature {_f(row.feature_act)}, concept {row.concept_score:.3f} "
            f"({row.concept_delta:+.3f}), perplexity {row.perplexity:.1f}, KL {row.kl:.3f}"
        )
        for g in row.generations:
            print(f"    {g.prompt!r} → {g.text!r}")


def print_circuit(cfg: CircuitConfig) -> None:
    from aimri.circuits.run import trace

    r = trace(cfg)
    g, rec = r.graph, r.record
    print(f"prompt: {g.prompt!r} ({g.n_pos} tokens) in {g.seconds:.1f}s")
    for token, p in zip(g.logit_tokens, g.logit_probs.tolist(), strict=True):
        print(f"  attributed output {token!r}: p={p:.3f}")
    sizes = rec["sizes"]
    print(
        f"graph: {sizes['features']:,} active features, {sizes['edges']:,} non-zero edges; "
        f"pruned to {sizes['pruned_nodes']} nodes, {sizes['pruned_edges']} edges"
    )
    print(f"replacement score {g.scores.replacement:.3f}, completeness {g.scores.completeness:.3f}")
    v = r.validation
    if v is not None:
        print(
            f"validation ({v.n} ablations in the real model): r={_f(v.pearson)} (direct-only "
            f"r={_f(v.pearson_direct)}), sign agreement {_f(v.sign_agreement)}, median relative "
            f"error {_f(v.median_relative_error)}"
        )
    print(f"graph JSON (circuit-tracer / Neuronpedia): {r.path}")


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"
