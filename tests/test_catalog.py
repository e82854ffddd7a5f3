"""The feature catalog: lossless round trips, safe search, refusals, atomic builds, explain-text."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aimri.config import CorpusConfig, DictConfig, ExplainTextConfig, ModelConfig, SearchConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.formats import save_dictionary
from aimri.errors import AimriError
from aimri.features.basis import DictionaryBasis, RandomBasis
from aimri.features.catalog import (
    Catalog,
    RunIdentity,
    explain_text,
    explain_text_cli,
    run_identity,
    search,
)
from aimri.features.records import BasisInfo, FeatureSet, Label, Score
from aimri.features.sources import ModelContexts
from aimri.features.stats import ExampleSpec, feature_statistics

SITE = "blocks.1.hook_resid_post"
SAE = BasisInfo("sae", SITE, 64, f"sae {SITE} (64)")
IDENTITY = RunIdentity(basis=SAE, dictionary="/nowhere", model="tiny")
HOSTILE = ['"', "*", "NEAR(", "') OR 1=1 --", 'NEAR("a" "b", 2)', "text:", "^", "-", "AND OR NOT",
           "(((", '"unclosed', "a* *b", "{text}: x", "\x00", "", "   ", "🦊 ünïcödé"]  # fmt: skip


def sae_basis(seed: int = 0, **changes) -> DictionaryBasis:
    cfg = DictConfig(**{"d_in": 32, "d_sae": 64, "k": 4, "site": SITE, **changes})
    return DictionaryBasis(build_dictionary(cfg, seed=seed))


@pytest.fixture
def feature_sets(tiny_model, text_corpus) -> list[FeatureSet]:
    """Real statistics of a random SAE and a random-direction baseline on the tiny model."""
    model = tiny_model("llama")
    corpus = CorpusConfig(source=str(text_corpus), ctx_len=48, max_tokens=48 * 24)
    source = ModelContexts(model, corpus, SITE, batch_size=8)
    spec = ExampleSpec(n_top=4, per_bucket=2, n_random_negative=3, n_hard_negative=2, window=12)
    baseline = RandomBasis(SITE, torch.zeros(32), n_features=8)
    return [
        feature_statistics(sae_basis(), model, source, spec=spec),
        feature_statistics(baseline, model, source, spec=spec),
    ]


def build(path: Path, labels: dict[int, str], scores: dict[int, float] | None = None) -> Catalog:
    with Catalog.create(path, IDENTITY) as cat:
        cat.add_labels(SAE.name, [Label(f, t, "tokens") for f, t in labels.items()])
        scores = scores or {}
        cat.add_scores(
            SAE.name, [Score(f, "tokens", "embedding", v, 0.5) for f, v in scores.items()]
        )
    return Catalog.open(path)


def test_feature_sets_round_trip_exactly(tmp_path, feature_sets):
    sae, baseline = feature_sets
    assert any(e.kind == "top" for f in sae.features for e in f.examples)
    assert any(f.neighbours for f in sae.features) and any(f.promoted for f in sae.features)
    with Catalog.create(tmp_path / "c.sqlite", IDENTITY) as cat:
        for fs in feature_sets:
            cat.add_feature_set(fs)
        cat.add_summary(SAE.name, "mean_score", {"embedding": 0.71})
    cat = Catalog.open(tmp_path / "c.sqlite")
    assert cat.bases() == [sae.basis, baseline.basis]
    for fs in feature_sets:
        for f in fs.features:
            assert cat.feature(fs.basis.name, f.index) == f
    assert cat.summary(SAE.name) == {"mean_score": {"embedding": 0.71}}
    assert cat.identity == IDENTITY
    top = cat.top_features(SAE.name, by="density", limit=5)
    want = sorted(sae.features, key=lambda f: -f.density)[:5]
    assert [t.value for t in top] == [f.density for f in want]


def test_search_by_word_and_stem_best_match_first(tmp_path):
    cat = build(
        tmp_path / "c.sqlite",
        {
            1: "counting numbers in a list",
            2: "Python code",
            3: "python snakes at the zoo and other animals in their cages",
            4: "days of the week",
        },
        {2: 0.9, 3: 0.6},
    )
    assert [h.feature for h in cat.search("week")] == [4]
    assert [h.feature for h in cat.search("counted")] == [1]  # porter: counted ~ counting
    assert [h.feature for h in cat.search("numb*")] == [1]
    hits = cat.search("python code")
    assert [h.feature for h in hits] == [2, 3]  # both words first, then one of them
    assert hits[0].rank <= hits[1].rank and (hits[0].score, hits[1].score) == (0.9, 0.6)
    assert cat.search("python", limit=1)[0].feature == 2  # the shorter, denser match
    assert search(SearchConfig(catalog=tmp_path / "c.sqlite", query="Weeks")) == cat.search("week")
    assert [r.feature for r in cat.top_features(SAE.name, by="score")] == [2, 3]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(tmp_path, query):
    cat = build(tmp_path / "c.sqlite", {1: "a b", 2: "or one", 3: "near text"})
    hits = cat.search(query)
    assert len(hits) < 3  # never "everything": syntax is matched as words, not obeyed


def test_syntax_words_are_matched_literally(tmp_path):
    cat = build(tmp_path / "c.sqlite", {1: "python code", 2: "near the end", 3: "other"})
    assert [h.feature for h in cat.search("NEAR(python code)")] == [1, 2]
    assert [h.feature for h in cat.search('"python" AND NOT code')] == [1]


def test_label_text_comes_back_byte_identical(tmp_path):
    text = "<script>alert(\"x\")</script> &amp; 'quoted' \\ ünïcödé 🦊 \u202e\n\ttab"
    meta = {"raw": "<b>", "tokens": 12}
    with Catalog.create(tmp_path / "c.sqlite", IDENTITY) as cat:
        cat.add_labels(SAE.name, [Label(7, text, "llm:x", meta)])
    cat = Catalog.open(tmp_path / "c.sqlite")
    assert cat.labels(SAE.name, 7) == [Label(7, text, "llm:x", meta)]
    assert cat.search("script alert")[0].text.encode() == text.encode()


def test_writes_are_transactions(tmp_path, feature_sets, monkeypatch):
    sae = feature_sets[0]
    path = tmp_path / "c.sqlite"
    with Catalog.create(path, IDENTITY) as cat:
        cat.add_feature_set(dataclasses.replace(sae, features=sae.features[:3]))
    cat = Catalog.open(path, writable=True)
    import aimri.features.catalog as catalog_module

    calls = []

    def failing_row(b, f):
        calls.append(f.index)
        if len(calls) == 5:
            raise RuntimeError("crash in the middle of a write")
        return original(b, f)

    original = catalog_module._feature_row
    monkeypatch.setattr(catalog_module, "_feature_row", failing_row)
    with pytest.raises(RuntimeError):
        cat.add_feature_set(sae)  # all 64 features: dies after 4 rows were written
    assert len(calls) == 5
    for f in sae.features[:3]:
        assert cat.feature(SAE.name, f.index) == f
    with pytest.raises(AimriError, match="no statistics"):
        cat.feature(SAE.name, sae.features[3].index)


def test_interrupted_build_leaves_no_complete_looking_catalog(tmp_path, feature_sets):
    path = tmp_path / "features" / "c.sqlite"
    with pytest.raises(RuntimeError), Catalog.create(path, IDENTITY) as cat:
        cat.add_feature_set(feature_sets[0])
        raise RuntimeError("interrupted")
    assert list(path.parent.iterdir()) == []

    build(path, {1: "old label"})
    with pytest.raises(KeyboardInterrupt), Catalog.create(path, IDENTITY) as cat:
        cat.add_labels(SAE.name, [Label(1, "new label", "tokens")])
        raise KeyboardInterrupt
    assert Catalog.open(path).labels(SAE.name, 1)[0].text == "old label"
    assert list(path.parent.iterdir()) == [path]


def test_killed_build_leaves_only_a_file_that_is_refused(tmp_path):
    path = tmp_path / "c.sqlite"
    script = f"""
        import os
        from aimri.features.catalog import Catalog, RunIdentity
        from aimri.features.records import BasisInfo, Label
        basis = BasisInfo(**{dataclasses.asdict(SAE)!r})
        cat = Catalog.create({str(path)!r}, RunIdentity(basis=basis, dictionary="", model=""))
        cat.add_labels(basis.name, [Label(i, "label %d" % i, "tokens") for i in range(64)])
        os._exit(1)  # killed before finish(): no cleanup runs
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False)
    assert done.returncode == 1
    assert not path.exists()
    (leftover,) = tmp_path.iterdir()
    with pytest.raises(AimriError, match="interrupted"):
        Catalog.open(leftover)


def test_refusals(tmp_path):
    not_sqlite = tmp_path / "x.sqlite"
    not_sqlite.write_bytes(b"SQLite format 2\x00 and then some garbage" * 100)
    other_sqlite = tmp_path / "y.sqlite"
    sqlite3.connect(other_sqlite).execute("CREATE TABLE t (x)").connection.commit()
    for bad in (not_sqlite, other_sqlite):
        with pytest.raises(AimriError, match="not an aimri catalog"):
            Catalog.open(bad)
    with pytest.raises(AimriError, match="not found"):
        Catalog.open(tmp_path / "missing.sqlite")

    path = tmp_path / "c.sqlite"
    cat = build(path, {1: "label"})
    with pytest.raises(AimriError, match="out of range"):
        cat.feature(SAE.name, 64)
    with pytest.raises(AimriError, match="out of range"):
        cat.labels(SAE.name, -1)
    with pytest.raises(AimriError, match="not in catalog"):
        cat.labels("neurons", 0)
    with pytest.raises(AimriError, match="cannot write"):
        cat.add_labels(SAE.name, [Label(2, "read-only", "tokens")])
    with Catalog.open(path, writable=True) as w, pytest.raises(AimriError, match="out of range"):
        w.add_scores(SAE.name, [Score(64, "tokens", "embedding", 0.9, 0.5)])
    cat.close()

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(AimriError, match="newer"):
        Catalog.open(path)


def test_foreign_catalogs_are_refused(tmp_path, tiny_model):
    model = tiny_model("llama")
    build(tmp_path / "c.sqlite", {1: "label"})
    cat = Catalog.open(tmp_path / "c.sqlite")
    cat.check_fits(sae_basis(), model)
    for other in (sae_basis(d_sae=128, k=4), sae_basis(site="blocks.2.hook_resid_post")):
        with pytest.raises(AimriError, match="another run"):
            explain_text(cat, model, other, "The quick brown fox")
    ident = dataclasses.replace(IDENTITY, model_sha256="0" * 64)
    with Catalog.create(tmp_path / "d.sqlite", ident):
        pass
    with pytest.raises(AimriError, match="other weights"):
        explain_text(Catalog.open(tmp_path / "d.sqlite"), model, sae_basis(), "The fox")


def test_explain_text_shows_the_strongest_features_per_token(tmp_path, tiny_model, tiny_model_dir):
    model, basis = tiny_model("llama"), sae_basis(seed=3)
    folder = save_dictionary(basis.dictionary, tmp_path / "dict")
    path = tmp_path / "c.sqlite"
    with Catalog.create(path, run_identity(folder, basis, model, catalog=path)) as cat:
        cat.add_labels(
            SAE.name, [Label(f, f"feature {f} label", "tokens") for f in range(0, 64, 2)]
        )
        cat.add_labels(SAE.name, [Label(f, f"feature {f} better", "llm") for f in range(0, 64, 4)])
        cat.add_scores(SAE.name, [Score(f, "llm", "embedding", 0.9, 0.5) for f in range(0, 64, 4)])
    text, top = "The quick brown fox jumps over the lazy dog. def add(a, b):", 3
    got = explain_text(Catalog.open(path), model, basis, text, top=top)

    # Independent reference: the HF model's hidden states (blocks.1 output = hidden_states[2]).
    ids = [
        model.tokenizer.bos_token_id,
        *model.tokenizer(text, add_special_tokens=False)["input_ids"],
    ]
    with torch.no_grad():
        hidden = model.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, 1:]
    acts = basis.activations(hidden)  # [T, 64]
    assert len(got.tokens) == len(got.features) == len(acts) == len(ids) - 1
    assert "".join(got.tokens) == text
    assert sum(map(len, got.features)) > len(acts)  # features do fire: the check has teeth
    for t, row in enumerate(got.features):
        vals, order = acts[t].sort(descending=True)
        want = [int(f) for v, f in zip(vals[:top], order[:top], strict=True) if v > 0]
        assert [tf.feature for tf in row] == want
        assert [tf.activation for tf in row] == pytest.approx(acts[t, want].tolist(), abs=1e-5)
        for tf in row:
            label = {0: f"feature {tf.feature} better", 2: f"feature {tf.feature} label"}
            assert tf.label == label.get(tf.feature % 4)
    cfg = ExplainTextConfig(
        catalog=path,
        text=text,
        top=top,
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
    )
    assert explain_text_cli(cfg) == got


def test_explain_text_cli_refuses_a_changed_dictionary(tmp_path, tiny_model, tiny_model_dir):
    model, basis = tiny_model("llama"), sae_basis()
    folder = save_dictionary(basis.dictionary, tmp_path / "dict")
    ident = run_identity(folder, basis, model, catalog=tmp_path / "c.sqlite")
    with Catalog.create(tmp_path / "c.sqlite", ident):
        pass
    save_dictionary(sae_basis(seed=1).dictionary, folder)
    record = json.loads((folder / "aimri.json").read_text())
    assert record["weights_sha256"]
    cfg = ExplainTextConfig(
        catalog=tmp_path / "c.sqlite",
        text="fox",
        model=ModelConfig(spec=str(tiny_model_dir("llama"))),
    )
    with pytest.raises(AimriError, match="has changed"):
        explain_text_cli(cfg)
