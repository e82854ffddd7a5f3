"""`aimri export neuronpedia --upload` through the real `neuronpedia` client (`aimri[export]`),
against a 127.0.0.1 server that answers as Neuronpedia's API does and records what arrives: the
graphs, the source set (and the model, where it is missing) and the described features, each
checked against the export and the catalog and against the rules of Neuronpedia's upload route;
the key travels only in the API's header and is written nowhere. Skipped without the client.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aimri.cli import main
from aimri.features.catalog import Catalog
from tests import test_export_neuronpedia

run = test_export_neuronpedia.run  # the same tiny run: an SAE described, a graph traced
KEY = "np-test-key-3f9a1c77d2"


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
    argv = ["export", "neuronpedia", str(run), "--out", str(out), "--upload"]
    assert main([*argv, "--upload-url", "http://127.0.0.1:9/api"]) == 2
    err = capsys.readouterr().err
    assert "NEURONPEDIA_API_KEY" in err and err.count("aimri: error:") == 1
    assert not out.exists()


def test_a_key_in_a_dotenv_file_is_not_taken(run, tmp_path):
    """Importing the client loads the first .env file above its own folder (or the current one)
    into the environment (python-dotenv's search); the key must come from the environment the
    command was started with. The client is put below a folder holding a .env with a key, and
    the upload is refused all the same."""
    neuronpedia = pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]'")
    shutil.copytree(Path(neuronpedia.__file__).parent, tmp_path / "site" / "neuronpedia")
    (tmp_path / ".env").write_text(f"NEURONPEDIA_API_KEY={KEY}\n")
    env = {k: v for k, v in os.environ.items() if k != "NEURONPEDIA_API_KEY"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    seen = "import neuronpedia, os; print(os.environ.get('NEURONPEDIA_API_KEY'))"
    r = subprocess.run(
        [sys.executable, "-c", seen], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.stdout.strip() == KEY  # the client's import does load it
    argv = ["export", "neuronpedia", str(run), "--out", str(tmp_path / "np"), "--upload"]
    argv += ["--upload-url", "http://127.0.0.1:9/api"]  # were the key taken: loopback, closed
    r = subprocess.run([sys.executable, "-m", "aimri.cli", *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "NEURONPEDIA_API_KEY" in r.stderr, r.stderr[-1000:]
    assert not (tmp_path / "np").exists() and KEY not in r.stdout + r.stderr


def test_an_unreachable_neuronpedia_is_one_line(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("neuronpedia", reason="pip install 'aimri[export]' for the upload test")
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    argv = ["export", "neuronpedia", str(run), "--out", str(tmp_path / "np"), "--upload"]
    assert main([*argv, "--upload-url", "http://127.0.0.1:9/api"]) == 2  # discard port: closed
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "--upload-url" in err and KEY not in err
