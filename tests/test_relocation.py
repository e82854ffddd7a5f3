"""A run folder refers to itself by relative paths: moved or copied whole, it still works."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from aimri.cli import main
from aimri.config import CorpusConfig, DictConfig, FeaturesConfig, ModelConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.formats import save_dictionary
from aimri.errors import AimriError
from aimri.features.catalog import Catalog
from aimri.features.pipeline import describe
from aimri.ledger import read_ledger
from tests.test_features_pipeline import named_words

SITE = "blocks.1.hook_resid_post"


@pytest.fixture
def run_folder(tiny_model, tiny_model_dir, tmp_path):
    """A run laid out as a scan lays it out: runs/x/dicts/<site>/ and runs/x/features/."""
    from tests.conftest import TRAINING_TEXT

    run = tmp_path / "runs" / "x"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TRAINING_TEXT[i % 5] * 3 for i in range(30)))
    dictionary = save_dictionary(
        build_dictionary(DictConfig(d_in=32, d_sae=24, k=3, site=SITE), seed=2),
        run / "dicts" / SITE,
    )
    cfg = FeaturesConfig(
        dictionary=dictionary,
        out=run / "features" / "catalog.sqlite",
        model=ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu"),
        corpus=CorpusConfig(source=str(corpus), ctx_len=24, max_tokens=24 * 20),
        n_features=8,
        baselines=False,
        explainers=("tokens",),
        scorers=("rule",),
    )
    describe(cfg, model=tiny_model("llama"))
    return run, cfg


def test_the_catalog_names_its_dictionary_relative_to_itself(run_folder):
    run, cfg = run_folder
    with Catalog.open(cfg.out) as cat:
        assert cat.identity.dictionary == f"../dicts/{SITE}"
        assert cat.dictionary_folder().resolve() == (run / "dicts" / SITE).resolve()


def _explain_text(catalog, model_spec: str) -> int:
    flags = ["--catalog", str(catalog), "--model.spec", model_spec, "--model.device", "cpu"]
    return main(["features", "explain-text", "The quick brown fox", *flags])


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_run_still_explains_text_and_searches(run_folder, tmp_path, capsys, how):
    run, cfg = run_folder
    with Catalog.open(cfg.out) as cat:
        name = cat.identity.basis.name
        labels = [lab.text for i in range(8) for lab in cat.labels(name, i)]
    word = next(w for label in labels for w in named_words(label))
    elsewhere = tmp_path / "elsewhere" / "y"
    elsewhere.parent.mkdir()
    (shutil.move if how == "move" else shutil.copytree)(run, elsewhere)
    if how == "copy":  # the original is gone too: the copy must not lean on it
        shutil.rmtree(run)
    catalog = elsewhere / "features" / "catalog.sqlite"

    assert _explain_text(catalog, cfg.model.spec) == 0
    out = capsys.readouterr().out
    assert "features of sae" in out and "quick" in out

    assert main(["features", "search", word, "--catalog", str(catalog)]) == 0
    assert word.lower() in capsys.readouterr().out.lower()
    # the query lands in the moved run's own ledger, naming the catalog relative to the run
    (entry,) = [e for e in read_ledger(elsewhere) if e.kind == "search"]
    assert entry.detail["catalog"] == "features/catalog.sqlite"
    assert not (run / "ledger.jsonl").exists()


def test_a_catalog_moved_without_its_dictionary_finds_it_where_it_was(run_folder, tmp_path):
    run, cfg = run_folder
    alone = tmp_path / "alone" / "catalog.sqlite"
    alone.parent.mkdir()
    shutil.copy(cfg.out, alone)
    with Catalog.open(alone) as cat:
        assert cat.dictionary_folder().resolve() == (run / "dicts" / SITE).resolve()
    shutil.rmtree(run / "dicts")
    with Catalog.open(alone) as cat, pytest.raises(AimriError, match="is gone from"):
        cat.dictionary_folder()


def test_an_old_catalog_with_an_absolute_path_still_opens(run_folder):
    """Catalogs built before relative paths hold the dictionary's absolute path only."""
    run, cfg = run_folder
    conn = sqlite3.connect(cfg.out)
    with conn:
        raw = json.loads(
            conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()[0]
        )
        del raw["dictionary_at"]
        raw["dictionary"] = str((run / "dicts" / SITE).resolve())
        conn.execute("UPDATE meta SET value = ? WHERE key = 'identity'", (json.dumps(raw),))
    conn.close()
    with Catalog.open(cfg.out) as cat:
        assert cat.dictionary_folder() == (run / "dicts" / SITE).resolve()
