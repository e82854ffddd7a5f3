"""`aimri export neuronpedia`: a run's graphs, features and dictionary in Neuronpedia's and
circuit-tracer's formats.

The run is a tiny one laid out as a scan lays it out (a tiny random llama, an SAE described into
features/catalog.sqlite, a graph traced through transcoders into graphs/). Checked here against
aimri's own records and Neuronpedia's documented tables: every graph link and weight survives
under circuit-tracer's node ids, ids stay unique, each feature file and bulk-export row holds
the catalog's numbers and examples, and bad output paths and names are refused before any work.
The upload through the real client: test_export_upload.py; circuit-tracer's own models and
viewer: test_export_viewer.py.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

from aimri.cli import main
from aimri.config import CircuitConfig, CorpusConfig, DictConfig, FeaturesConfig, ModelConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.dicts.formats import save_dictionary
from aimri.dicts.transcoder_set import layer_dir
from aimri.export.formats import CT_NODE_FIELDS, neuronpedia_graph
from aimri.features.catalog import Catalog

SITE = "blocks.1.hook_resid_post"
# The columns of Neuronpedia's tables (its webapp's prisma schema), each with a '*' where the
# column has no default: its importer creates the model, source-set and source rows through its
# ORM (an unknown or missing column is an error) and copies the other rows by column name.
TABLES = {
    "model": "id* displayNameShort displayName creatorId* tlensId openRouterId dimension thinking "
    "visibility defaultSourceSetName defaultSourceId defaultGraphSourceSetName inferenceEnabled "
    "instruct layers* neuronsPerLayer* createdAt owner* updatedAt website",
    "sourceset": "modelId* name* hasDashboards allowInferenceSearch visibility description* type "
    "creatorName* creatorEmail creatorId* releaseName hasGraphs graphEnabled "
    "similarityMatrixEnabled defaultOfModelId defaultGraphModelId defaultRange defaultShowBreaks "
    "showDfa showCorrelated showHeadAttribution showUmap createdAt urls",
    "source": "id* modelId* hasDashboards inferenceEnabled saelensConfig saelensRelease "
    "saelensSaeId hfRepoId hfFolderId visibility defaultOfModelId setName* creatorId* hasUmap "
    "hasUmapLogSparsity hasUmapClusters num_prompts num_tokens_in_prompt dataset notes "
    "cosSimMatchModelId cosSimMatchSourceId createdAt inferenceHosts",
    "features": "modelId* layer* index* sourceSetName creatorId createdAt maxActApprox hasVector "
    "vector vectorLabel vectorDefaultSteerStrength hookName topkCosSimIndices topkCosSimValues "
    "neuron_alignment_indices neuron_alignment_values neuron_alignment_l1 "
    "correlated_neurons_indices correlated_neurons_pearson correlated_neurons_l1 "
    "correlated_features_indices correlated_features_pearson correlated_features_l1 neg_str "
    "neg_values pos_str pos_values frac_nonzero freq_hist_data_bar_heights "
    "freq_hist_data_bar_values logits_hist_data_bar_heights logits_hist_data_bar_values "
    "decoder_weights_dist umap_cluster umap_log_feature_sparsity umap_x umap_y",
    "activations": "id* dataIndex index* layer* modelId* dataSource maxValue* maxValueTokenIndex* "
    "minValue* dfaValues dfaTargetIndex dfaMaxValue zQIndices zKIndices zValues creatorId* "
    "createdAt lossValues logitContributions binMin binMax binContains qualifyingTokenIndex "
    "tokens* values*",
    "explanations": "id* modelId* layer* index* embedding description* authorId* "
    "triggeredByUserId notes scoreV1 scoreV2 umap_x umap_y umap_cluster umap_log_feature_sparsity "
    "typeName explanationModelName createdAt updatedAt",
}


def fits_table(record: dict[str, Any], table: str) -> bool:
    columns = TABLES[table].split()
    required = {c.rstrip("*") for c in columns if c.endswith("*")}
    return required <= set(record) <= {c.rstrip("*") for c in columns}


@pytest.fixture(scope="module")
def run(tiny_model, tiny_model_dir, tmp_path_factory) -> Path:
    """runs/x/{dicts/<site>/, features/catalog.sqlite, graphs/<slug>.json}."""
    from aimri.circuits.run import trace
    from aimri.features.pipeline import describe
    from tests.conftest import TRAINING_TEXT
    from tests.test_circuits import transcoders_for

    root = tmp_path_factory.mktemp("np")
    run, model = root / "runs" / "x", tiny_model("llama")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TRAINING_TEXT[i % 5] * 3 for i in range(30)))
    dictionary = save_dictionary(
        build_dictionary(DictConfig(d_in=32, d_sae=24, k=3, site=SITE), seed=2),
        run / "dicts" / SITE,
    )
    spec = ModelConfig(spec=str(tiny_model_dir("llama")), device="cpu")
    describe(
        FeaturesConfig(
            dictionary=dictionary,
            out=run / "features" / "catalog.sqlite",
            model=spec,
            corpus=CorpusConfig(source=str(corpus), ctx_len=24, max_tokens=24 * 20),
            n_features=8,
            baselines=False,
            explainers=("tokens",),
            scorers=("rule",),
        ),
        model=model,
    )
    for layer, tc in enumerate(transcoders_for(model)):
        save_dictionary(tc, layer_dir(root / "tcs", layer))
    circuit = CircuitConfig(
        prompt="The quick brown fox jumps over",
        transcoders=root / "tcs",
        out=run / "graphs",
        model=spec,
        slug="fox",
    )
    trace(circuit, model=model)
    return run


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    out = run.parent.parent / "np"
    assert main(["export", "neuronpedia", str(run), "--out", str(out), "--model-id", "tiny"]) == 0
    return out


def _gz(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


# --- graphs ----------------------------------------------------------------------------------


def test_every_link_survives_under_circuit_tracers_node_ids(run, exported):
    ours = json.loads((run / "graphs" / "fox.json").read_text())
    theirs = json.loads((exported / "graphs" / "fox.json").read_text())
    assert theirs["metadata"]["scan"] == "tiny" and theirs["metadata"]["slug"] == "fox"
    assert theirs["metadata"]["prompt_tokens"] == ours["metadata"]["prompt_tokens"]
    ids = [n["node_id"] for n in theirs["nodes"]]
    assert len(set(ids)) == len(ids) == len(ours["nodes"])
    assert all(tuple(n) == CT_NODE_FIELDS for n in theirs["nodes"])
    # nodes come in the same order: map aimri's ids to the export's and compare every link
    new_id = {
        a["node_id"]: b["node_id"] for a, b in zip(ours["nodes"], theirs["nodes"], strict=True)
    }
    moved = {(new_id[e["source"]], new_id[e["target"]], e["weight"]) for e in ours["links"]}
    assert moved == {(e["source"], e["target"], e["weight"]) for e in theirs["links"]}
    n_layers = 3
    for a, b in zip(ours["nodes"], theirs["nodes"], strict=True):
        kind, layer, pos = b["feature_type"], b["layer"], b["ctx_idx"]
        if kind == "mlp reconstruction error" and b["node_id"] != a["node_id"]:
            assert (b["node_id"], b["jsNodeId"]) == (f"0_{layer}_{pos}", f"{layer}_{pos}-0")
        elif kind == "cross layer transcoder":
            latent = int(b["node_id"].split("_")[1])
            x = int(layer) + latent  # circuit-tracer's Cantor pairing of (layer, latent)
            assert b["feature"] == x * (x + 1) // 2 + latent
        elif kind == "logit":
            assert (
                b["node_id"]
                == f"{n_layers + 1}_{b['feature']}_{len(ours['metadata']['prompt_tokens']) - 1}"
            )
        assert {k: b[k] for k in ("influence", "activation", "clerp")} == {
            k: a.get(k) for k in ("influence", "activation", "clerp")
        }
    # a number (Neuronpedia's graph schema), under which the viewers show every node
    shown = [
        n["influence"] for n in theirs["nodes"] if n["feature_type"] not in ("embedding", "logit")
    ]
    assert isinstance(theirs["metadata"]["node_threshold"], float)
    assert max(shown) <= theirs["metadata"]["node_threshold"] < max(shown) + 0.001
    index = json.loads((exported / "graphs" / "graph-metadata.json").read_text())
    assert index == {"graphs": [theirs["metadata"]]}


def _node(kind: str, layer: int | str, pos: int, node_id: str, feature: int = 0) -> dict:
    return {"node_id": node_id, "feature": feature, "layer": str(layer), "ctx_idx": pos,
            "feature_type": kind}  # fmt: skip


def test_an_error_id_that_would_equal_a_features_keeps_aimris():
    graph = {
        "metadata": {"slug": "s", "scan": "m", "prompt_tokens": ["a", "b", "c"], "prompt": "abc"},
        "nodes": [
            _node("cross layer transcoder", 0, 2, "0_1_2", feature=2),  # layer 0, latent 1, pos 2
            _node("mlp reconstruction error", 1, 2, "1_-1_2", feature=-1),  # ct would say 0_1_2
            _node("mlp reconstruction error", 2, 2, "2_-1_2", feature=-1),  # ct: 0_2_2, free
        ],
        "links": [
            {"source": "1_-1_2", "target": "0_1_2", "weight": 0.5},
            {"source": "2_-1_2", "target": "1_-1_2", "weight": -1.0},
        ],
        "qParams": {"supernodes": [["both errors", "1_-1_2", "2_-1_2"]], "pinnedIds": ["2_-1_2"]},
    }
    g = neuronpedia_graph(graph, model_id="m")
    assert [n["node_id"] for n in g.data["nodes"]] == ["0_1_2", "1_-1_2", "0_2_2"]
    assert g.renamed_errors == ["1_-1_2"]
    assert g.data["links"][1] == {"source": "0_2_2", "target": "1_-1_2", "weight": -1.0}
    assert g.data["qParams"]["supernodes"] == [["both errors", "1_-1_2", "0_2_2"]]
    assert g.data["qParams"]["pinnedIds"] == ["0_2_2"]


# --- features and the source -----------------------------------------------------------------


def test_each_described_feature_file_holds_the_catalogs_numbers(run, exported):
    manifest = json.loads((exported / "neuronpedia.json").read_text())
    source = manifest["source_id"]
    assert source == "1-aimri-res-24"
    with Catalog.open(run / "features" / "catalog.sqlite") as c:
        basis = c.identity.basis.name
        described = c.described(basis)
        assert len(described) == manifest["n_features"] == 8
        files = sorted(int(p.stem) for p in (exported / "features" / source).glob("*.json"))
        assert files == described
        for i in described:
            f, data = (
                c.feature(basis, i),
                json.loads((exported / "features" / source / f"{i}.json").read_text()),
            )
            assert (data["index"], data["transcoder_id"]) == (i, source)
            assert data["activation_frequency"] == pytest.approx(f.density)
            assert data["act_max"] == pytest.approx(f.max_act)
            assert data["top_logits"] == [t.token for t in f.promoted]
            assert data["bottom_logits"] == [t.token for t in f.suppressed]
            assert data["histogram"] == [float(x) for x in f.hist_counts]
            shown = [
                (x["tokens"], x["tokens_acts_list"])
                for q in data["examples_quantiles"]
                for x in q["examples"]
            ]
            firing = [(e.tokens, e.acts) for e in f.of_kind("top", "quantile")]
            assert sorted(map(str, shown)) == sorted(map(str, firing))  # no negatives, none lost
            top = data["examples_quantiles"][0]
            assert top["quantile_name"] == "Top activations"
            for x in top["examples"]:
                assert x["tokens_acts_list"][x["train_token_ind"]] == max(x["tokens_acts_list"])


def test_the_source_follows_neuronpedias_bulk_export_layout(run, exported):
    root = exported / "source" / "tiny" / "1-aimri-res-24"
    assert {p.name for p in root.iterdir()} == {
        "model.jsonl", "sourceset.jsonl", "source.jsonl", "features", "activations", "explanations",
    }  # fmt: skip
    for name in ("model", "sourceset", "source"):
        (record,) = [json.loads(x) for x in (root / f"{name}.jsonl").read_text().splitlines()]
        assert fits_table(record, name), (name, record)
    source = json.loads((root / "source.jsonl").read_text())
    assert source["id"] == "1-aimri-res-24" and source["setName"] == "aimri-res-24"
    assert source["saelensConfig"]["metadata"]["hook_name"] == SITE
    model = json.loads((root / "model.jsonl").read_text())
    assert (model["layers"], model["neuronsPerLayer"]) == (2, 0)  # no run.json: layer 1 seen
    rows = {
        name: _gz(root / name / "batch-0.jsonl.gz")
        for name in ("features", "activations", "explanations")
    }
    for name, records in rows.items():
        assert records and all(fits_table(r, name) for r in records), name
        assert all(r["layer"] == "1-aimri-res-24" and r["modelId"] == "tiny" for r in records)
    with Catalog.open(run / "features" / "catalog.sqlite") as c:
        basis = c.identity.basis.name
        assert [int(r["index"]) for r in rows["features"]] == c.described(basis)
        for r in rows["features"]:
            f = c.feature(basis, int(r["index"]))
            assert r["frac_nonzero"] == pytest.approx(f.density)
            assert r["pos_str"] == [t.token for t in f.promoted]
            mine = [a for a in rows["activations"] if a["index"] == r["index"]]
            assert len(mine) == len(f.of_kind("top", "quantile"))
            for a in mine:
                assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
                assert a["binMin"] <= a["maxValue"] <= a["binMax"]
                assert a["binContains"] is None or 0 < a["binContains"] <= 1
            labels = [x for x in rows["explanations"] if x["index"] == r["index"]]
            assert labels and labels[0]["description"] == c.best_label(basis, int(r["index"]))
            # explanation types and explainer models are keys into Neuronpedia's own tables
            assert all(x["typeName"] is x["explanationModelName"] is None for x in labels)
            assert r["sourceSetName"] == "aimri-res-24"
    ids = [a["id"] for a in rows["activations"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"c[0-9a-z]{24}", i) for i in ids)


def test_the_dictionary_and_catalog_form_gives_the_same_export(run, exported, tmp_path):
    out = tmp_path / "np2"
    argv = ["export", "neuronpedia", "--dictionary", str(run / "dicts" / SITE)]
    argv += ["--catalog", str(run / "features" / "catalog.sqlite"), "--graphs", str(run / "graphs")]
    assert main([*argv, "--out", str(out), "--model-id", "tiny"]) == 0
    for part in ("graphs/fox.json", "features/1-aimri-res-24/3.json"):
        assert json.loads((out / part).read_text()) == json.loads((exported / part).read_text())


def test_an_export_is_not_replaced_without_overwrite(run, exported, capsys):
    before = (exported / "neuronpedia.json").read_bytes()
    assert main(["export", "neuronpedia", str(run), "--out", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (exported / "neuronpedia.json").read_bytes() == before


@pytest.mark.parametrize("where", ["run", "graphs", "above"])
def test_an_export_never_lands_on_what_it_reads(run, where, capsys):
    out = {"run": run, "graphs": run / "graphs", "above": run.parent}[where]
    before = sorted(p.name for p in (run / "graphs").iterdir())
    assert main(["export", "neuronpedia", str(run), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "which the export reads" in err and err.count("aimri: error:") == 1
    assert sorted(p.name for p in (run / "graphs").iterdir()) == before == ["fox.json"]


@pytest.mark.parametrize(
    ("flag", "name"),
    [("--model-id", "Tiny_Model"), ("--model-id", "9lives"), ("--model-id", "a--b"),
     ("--model-id", "x"), ("--source-set", "set-"), ("--source-set", "my--set")],
)  # fmt: skip
def test_names_neuronpedia_refuses_are_refused_at_once(run, tmp_path, flag, name, capsys):
    out = tmp_path / "np"
    assert main(["export", "neuronpedia", str(run), "--out", str(out), flag, name]) == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("aimri: error:") == 1 and not out.exists()
