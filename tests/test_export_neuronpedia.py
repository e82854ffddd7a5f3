"""`aimri export neuronpedia`: a run's graphs, features and dictionary in Neuronpedia's and
circuit-tracer's formats, uploaded with the real `neuronpedia` client, shown in circuit-tracer's
own viewer.

The run is a tiny one laid out as a scan lays it out (a tiny random llama, an SAE described into
features/catalog.sqlite, a graph traced through transcoders into graphs/). What is checked:
- against aimri's own records (main venv): every graph link and weight survives under
  circuit-tracer's node ids, ids stay unique, each feature file and bulk-export row holds the
  catalog's numbers and examples;
- against the `neuronpedia` client (main venv, `aimri[export]`): --upload drives the real client
  against a 127.0.0.1 server that records what arrives; the key travels only in its header and
  is written nowhere;
- against circuit-tracer (its own venv: $AIMRI_CT_PYTHON, else .venv-peers/bin/python, see
  tools/peers.sh; skipped when neither exists): its pydantic models read every graph and feature
  file back unchanged, and its viewer, served by its own request handler and opened in headless
  chromium, draws one node per graph node and, for the clicked output, one row per edge into it. The viewer loads d3,
  dagre and pako from public CDNs; with no network they come from npm packages unpacked by
  tools/peers.sh into $AIMRI_VIEWER_LIBS (default ~/.cache/aimri/viewer-libs).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

ROOT = Path(__file__).resolve().parents[1]
SITE = "blocks.1.hook_resid_post"
KEY = "np-test-key-3f9a1c77d2"
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


# --- upload through the real client ----------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Neuronpedia's API as its client uses it, recording every request."""

    log: list[dict[str, Any]]
    source_sets: set[str]
    models: set[str]

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        entry = {"method": self.command, "path": self.path, "key": self.headers.get("X-Api-Key"),
                 "body": raw}  # fmt: skip
        self.log.append(entry)
        return entry

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/api/source-set/") and self.path in self.source_sets:
            model, name = self.path.split("/")[-2:]
            self._reply(self._source_set(model, name))
        elif self.path.startswith("/api/graph/"):
            model, slug = self.path.split("/")[-2:]
            self._reply({"id": "g1", "modelId": model, "slug": slug, "promptTokens": ["x"],
                         "prompt": "x", "titlePrefix": "", "url": f"http://127.0.0.1/{slug}.json"})  # fmt: skip
        else:
            self._reply({"error": "not found"}, 404)

    @staticmethod
    def _source_set(model: str, name: str) -> dict[str, Any]:
        sources = [{"id": f"{i}-{name}", "modelId": model, "setName": name} for i in range(3)]
        return {"name": name, "modelId": model, "description": "", "urls": [], "sources": sources}

    def do_PUT(self) -> None:
        self._record()
        self._reply({})

    def do_POST(self) -> None:
        e = self._record()
        body = json.loads(e["body"] or b"{}")
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/graph/signed-put":
            self._reply({"url": f"{host}/bucket/{body['filename']}", "putRequestId": "p1"})
        elif self.path == "/api/graph/save-to-db":
            self._reply({"url": f"{host}/graph"})
        elif self.path == "/api/model/new":
            self.models.add(body["id"])
            self._reply({"id": body["id"], "layers": body["layers"], "displayName": body["id"],
                         "website": None})  # fmt: skip
        elif self.path == "/api/source-set/new" and body["modelId"] not in self.models:
            self._reply({"error": "Model not found"}, 400)
        elif self.path == "/api/source-set/new":
            self.source_sets.add(f"/api/source-set/{body['modelId']}/{body['name']}")
            self._reply(self._source_set(body["modelId"], body["name"]))
        elif self.path == "/api/feature/upload-batch":
            self._reply({"ok": True})
        else:
            self._reply({"error": "not found"}, 404)


def neuronpedia_accepts(f: dict[str, Any]) -> bool:
    """The rules of Neuronpedia's upload-batch route (its webapp's validation schema)."""
    return (
        isinstance(f["index"], int)
        and 0 <= f["density"] <= 1
        and all(len(f[k] or []) <= 20 for k in ("topLogits", "bottomLogits"))
        and all(1 <= len(x["text"]) <= 512 for x in f["explanations"])
        and len(f["activations"]) >= 1
        and all(
            1 <= len(a["tokens"]) == len(a["values"]) <= 1024
            and (a["quantileFraction"] is None or 0 <= a["quantileFraction"] <= 1)
            for a in f["activations"]
        )
    )


@pytest.fixture
def neuronpedia_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]' for the upload test")
    log: list[dict[str, Any]] = []
    state = {"log": log, "source_sets": set(), "models": set()}
    handler = type("Handler", (_Recorder,), state)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", log
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_upload_sends_the_export_through_the_real_client(
    run, neuronpedia_server, tmp_path, monkeypatch, capsys, caplog
):
    url, log = neuronpedia_server
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    out = tmp_path / "np"
    argv = ["export", "neuronpedia", str(run), "--out", str(out), "--model-id", "tiny"]
    assert main([*argv, "--upload", "--upload-url", url]) == 0
    said = capsys.readouterr()
    calls = [(e["method"], e["path"]) for e in log]
    assert calls[:4] == [
        ("POST", "/api/graph/signed-put"), ("PUT", "/bucket/fox.json"),
        ("POST", "/api/graph/save-to-db"), ("GET", "/api/graph/tiny/fox"),
    ]  # fmt: skip
    source_set, new_set = (
        ("GET", "/api/source-set/tiny/aimri-res-24"),
        ("POST", "/api/source-set/new"),
    )
    # the model is not on Neuronpedia yet: it is created (with the run's layers), then the set
    assert calls[4:] == [
        source_set,
        new_set,
        ("POST", "/api/model/new"),
        new_set,
        ("POST", "/api/feature/upload-batch"),
    ]
    assert json.loads(log[6]["body"]) == {
        "id": "tiny",
        "layers": 2,
        "displayName": None,
        "url": None,
    }
    assert all(e["key"] == KEY for e in log if e["path"].startswith("/api/"))
    put = next(e for e in log if e["method"] == "PUT")
    assert put["key"] is None  # the signed URL gets the graph, never the key
    assert json.loads(put["body"]) == json.loads((out / "graphs" / "fox.json").read_text())
    batch = json.loads(log[-1]["body"])
    assert (batch["modelId"], batch["source"]) == ("tiny", "1-aimri-res-24")
    assert all(neuronpedia_accepts(f) for f in batch["features"]) and len(batch["features"]) <= 128
    with Catalog.open(run / "features" / "catalog.sqlite") as c:
        basis = c.identity.basis.name
        assert [f["index"] for f in batch["features"]] == c.described(basis)
        for f in batch["features"]:
            stats = c.feature(basis, f["index"])
            assert f["density"] == pytest.approx(stats.density)
            assert len(f["activations"]) == len(stats.of_kind("top", "quantile"))
            assert f["explanations"][0]["text"] == c.best_label(basis, f["index"])
            assert [t["token"] for t in f["topLogits"]] == [t.token for t in stats.promoted]
    # the key is written nowhere: not in the export, not in what was printed or logged
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in (gzip.decompress(data) if path.suffix == ".gz" else data)
    assert KEY not in said.out + said.err + caplog.text
    assert "uploaded to" in said.out
    assert f"{url.removesuffix('/api')}/tiny/graph?slug=fox" in said.out  # where it was sent
    # a second upload finds the source set there and sends the same features again
    del log[:]
    assert main([*argv, "--overwrite", "--upload", "--upload-url", url]) == 0
    assert [(e["method"], e["path"]) for e in log][4:] == [source_set, calls[-1]]
    assert json.loads(log[-1]["body"]) == batch


def test_what_neuronpedia_would_refuse_is_cut_or_left_out(tmp_path, caplog):
    pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]' for the upload test")
    from aimri.export.neuronpedia import ExportResult
    from aimri.export.upload import _feature_batches

    r = ExportResult(tmp_path, "m", "1-s", [], 2, {})
    rows = {
        "features": [
            {"index": i, "frac_nonzero": 0.1, "pos_str": ["a"] * 30, "pos_values": [1.0] * 30,
             "neg_str": [], "neg_values": []}
            for i in ("0", "1")
        ],
        "activations": [{"index": "0", "tokens": ["x"] * 2000, "values": [0.5] * 2000,
                         "binMax": 1.0, "binMin": 0.5, "binContains": None}],
        "explanations": [{"index": "0", "description": "y" * 600}, {"index": "0", "description": ""}],
    }  # fmt: skip
    for name, records in rows.items():
        path = r.source_dir / name / "batch-0.jsonl.gz"
        path.parent.mkdir(parents=True)
        path.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in records).encode()))
    (batch,) = list(_feature_batches(r))
    (f,) = batch  # feature 1 has no firing text: Neuronpedia refuses a feature without one
    assert f.index == 0 and len(f.top_logits) == 20 and len(f.explanations) == 1
    assert len(f.explanations[0].text) == 512 and len(f.activations[0].tokens) == 1024
    assert "no firing text" in caplog.text


def test_upload_without_a_key_is_refused_before_any_work(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]' for the upload test")
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the client reads a .env file from the current folder
    out = tmp_path / "np"
    assert main(["export", "neuronpedia", str(run), "--out", str(out), "--upload"]) == 2
    err = capsys.readouterr().err
    assert "NEURONPEDIA_API_KEY" in err and err.count("aimri: error:") == 1
    assert not out.exists()


def test_an_unreachable_neuronpedia_is_one_line(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]' for the upload test")
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    argv = ["export", "neuronpedia", str(run), "--out", str(tmp_path / "np"), "--upload"]
    assert main([*argv, "--upload-url", "http://127.0.0.1:9/api"]) == 2  # discard port: closed
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "--upload-url" in err and KEY not in err


# --- circuit-tracer's own models and viewer (its own venv) -----------------------------------


def peer_python() -> str | None:
    """A Python with circuit-tracer: $AIMRI_CT_PYTHON, else the repo's .venv-peers."""
    found = os.environ.get("AIMRI_CT_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")
    if not Path(found).exists():
        return None
    ok = subprocess.run(
        [found, "-c", "import circuit_tracer.frontend.graph_models"], capture_output=True
    )
    return found if ok.returncode == 0 else None


needs_ct = pytest.mark.skipif(
    peer_python() is None,
    reason="circuit-tracer not found: run tools/peers.sh (or set $AIMRI_CT_PYTHON)",
)

READ_BACK = """
import json, sys, pathlib
from circuit_tracer.frontend.graph_models import Model
from circuit_tracer.frontend.feature_models import Model as Feature
out, n = pathlib.Path(sys.argv[1]), 0
for path in sorted((out / "graphs").glob("*.json")):
    if path.name != "graph-metadata.json":
        data = json.loads(path.read_text())
        assert json.loads(Model(**data).model_dump_json()) == data, path
        n += 1
for path in sorted((out / "features").rglob("*.json")):
    data = json.loads(path.read_text())
    assert json.loads(Feature(**data).model_dump_json()) == data, path
    n += 1
print(n)
"""


@needs_ct
def test_circuit_tracers_models_read_every_file_back_unchanged(exported):
    python = peer_python()
    assert python is not None
    r = subprocess.run([python, "-c", READ_BACK, str(exported)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout) == 1 + 8  # the graph and the eight feature files


SERVE = """
import functools, sys
from circuit_tracer.frontend.local_server import CircuitGraphHandler, ReusableTCPServer
handler = functools.partial(CircuitGraphHandler, frontend_dir=sys.argv[1], data_dir=sys.argv[2])
httpd = ReusableTCPServer(("127.0.0.1", 0), handler)  # its handler, bound to loopback only
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""
CDN = {  # the viewer's third-party scripts → files of the npm packages that hold them
    "hotserver-client-ws.js": None,  # live reload while editing the viewer: not needed
    "d3.js": "d3v7-jetpack.js",  # d3 v7 with d3-jetpack (the viewer's `appendMany`, `.at`...)
    "jetpack_2024-07-20.js": None,  # already in the file above
    "npy_v0.js": None,  # reads .npy files, which a graph view never fetches
    "dagre.min.js": "dagre.min.js",
    "pako.min.js": "pako.min.js",
}


def viewer_libs() -> Path | None:
    libs = Path(os.environ.get("AIMRI_VIEWER_LIBS", Path.home() / ".cache/aimri/viewer-libs"))
    wanted = [f for f in CDN.values() if f]
    return libs if all((libs / f).is_file() for f in wanted) else None


def _frontend(python: str, libs: Path, into: Path) -> Path:
    """circuit-tracer's frontend assets, its CDN scripts pointed at local copies."""
    where = subprocess.run(
        [python, "-c", "import circuit_tracer.frontend as f, pathlib; print(pathlib.Path(f.__file__).parent / 'assets')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shutil.copytree(where, into)
    (into / "vendor").mkdir()
    html = (into / "index.html").read_text()
    for name, local in CDN.items():
        pattern = r"<script src='https://[^']*/" + re.escape(name) + r"'></script>"
        assert re.search(pattern, html), f"circuit-tracer's index.html no longer loads {name}"
        if local:
            shutil.copy(libs / local, into / "vendor" / local)
        html = re.sub(pattern, f"<script src='./vendor/{local}'></script>" if local else "", html)
    assert "https://" not in re.sub(r"<a [^>]*>", "", html.split("<script>")[0])
    (into / "index.html").write_text(html)
    return into


def _chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,1100",
         "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0", *mode, url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@needs_ct
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
@pytest.mark.skipif(viewer_libs() is None, reason="viewer libraries missing: run tools/peers.sh")
def test_circuit_tracers_viewer_draws_every_node(exported, tmp_path):
    python, libs = peer_python(), viewer_libs()
    assert python is not None and libs is not None
    frontend = _frontend(python, libs, tmp_path / "frontend")
    graph = json.loads((exported / "graphs" / "fox.json").read_text())
    target = next(n["node_id"] for n in graph["nodes"] if n["is_target_logit"])
    inputs = {e["source"] for e in graph["links"] if e["target"] == target and e["weight"] != 0}
    serve = [python, "-c", SERVE, str(frontend), str(exported / "graphs")]
    with subprocess.Popen(
        serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            url = f"http://127.0.0.1:{port}/index.html?slug=fox&clickedId={target}"
            r = _chromium(url, tmp_path / "profile", "--dump-dom")
            shot = _chromium(url, tmp_path / "profile2", f"--screenshot={tmp_path / 'viewer.png'}")
        finally:
            server.terminate()
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    assert "Uncaught" not in r.stderr, [x for x in r.stderr.splitlines() if "CONSOLE" in x]
    drawn = re.findall(r'<text class="node[^"]*"', r.stdout)
    assert len(drawn) == len(graph["nodes"]), (len(drawn), len(graph["nodes"]))
    for token in graph["metadata"]["prompt_tokens"][1:]:  # the x axis names the prompt's tokens
        assert token.strip() in r.stdout
    # the clicked output lists one row per node with an edge into it: the links were read too
    assert len(re.findall(r'<div class="feature-row', r.stdout)) == len(inputs) > 0
    assert shot.returncode == 0 and (tmp_path / "viewer.png").stat().st_size > 10_000
