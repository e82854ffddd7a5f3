"""`aimri features describe|search|explain-text` end to end on a tiny random model."""

from __future__ import annotations

import re

import pytest

from aimri.cli import main
from aimri.config import CorpusConfig, DictConfig, FeaturesConfig, ModelConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.formats import save_dictionary
from aimri.features.catalog import Catalog
from aimri.features.pipeline import describe

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def described(tiny_model, tiny_model_dir, tmp_path_factory):
    from tests.conftest import TRAINING_TEXT

    root = tmp_path_factory.mktemp("describe")
    corpus_file = root / "corpus.txt"
    corpus_file.write_text("\n\n".join(TRAINING_TEXT[i % 5] * 3 for i in range(60)))
    dictionary = save_dictionary(
        build_dictionary(DictConfig(d_in=32, d_sae=40, k=3, site=SITE), seed=2), root / "sae"
    )
    cfg = FeaturesConfig(
        dictionary=dictionary,
        out=root / "catalog.sqlite",
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        corpus=CorpusConfig(source=str(corpus_file), ctx_len=24, max_tokens=24 * 30),
        n_features=12,
        n_baseline=6,
    )
    return cfg, describe(cfg, model=tiny_model("llama"))


def test_every_basis_is_labelled_scored_and_catalogued(described):
    cfg, r = described
    kinds = [r.dictionary.features.basis.kind, *(b.features.basis.kind for b in r.baselines)]
    assert kinds == ["sae", "mlp_neurons", "random_dictionary", "residual", "random"]
    mlp, untrained = r.baselines[0].features.basis, r.baselines[1].features.basis
    assert mlp.site == "blocks.1.ln2.hook_normalized" and mlp.n_features == 64  # d_mlp
    assert (untrained.site, untrained.n_features) == (SITE, 40)
    assert [len(b.features.features) for b in r.baselines] == [6] * 4  # n_baseline each
    alive = {f.index for f in r.dictionary.features.features if f.density > 0}
    assert {lab.feature for lab in r.dictionary.labels} == alive
    assert {(s.explainer, s.scorer) for s in r.dictionary.scores} == {
        ("tokens", "simulation"),
        ("logits", "simulation"),
        ("tokens", "rule"),
        ("tokens", "embedding"),
        ("logits", "embedding"),
    }
    # one summary row per basis × (explainer, scorer), counting every scored feature
    assert len(r.summary) == 5 * 5
    for row in r.summary:
        basis = next(b for b in [r.dictionary, *r.baselines] if b.features.basis.name == row.basis)
        assert row.n == sum(
            1 for s in basis.scores if s.explainer == row.explainer and s.scorer == row.scorer
        )
    with Catalog.open(cfg.out) as cat:
        assert [b.kind for b in cat.bases()] == [
            "sae",
            "mlp_neurons",
            "random_dictionary",
            "residual",
            "random",
        ]
        f = r.dictionary.features.features[0]
        assert cat.feature(r.dictionary.features.basis.name, f.index) == f


def named_words(label: str) -> list[str]:
    """The words a label names (not its notation: `fires on`, `after`)."""
    return [w for w in re.findall(r'"([^"]*)"', label) if w.isalpha() and len(w) > 1]


def test_cli_search_and_explain_text(described, capsys):
    cfg, r = described
    word = next(w for lab in r.dictionary.labels for w in named_words(lab.text))
    assert main(["features", "search", word, "--catalog", str(cfg.out)]) == 0
    assert word.lower() in capsys.readouterr().out.lower()
    code = main(
        [
            "features",
            "explain-text",
            "The quick brown fox",
            "--catalog",
            str(cfg.out),
            "--model.spec",
            cfg.model.spec,
            "--model.device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "features of sae" in out and "quick" in out
