"""The export in circuit-tracer's own code (its own venv: $AIMRI_CT_PYTHON, else .venv-peers,
made by tools/peers.sh; skipped when neither exists): its pydantic graph and feature models read
every exported file back unchanged, and its viewer, served by its own request handler bound to
127.0.0.1 and opened in headless chromium, draws one node per graph node and, for the clicked
output, one row per edge into it. The viewer loads d3, dagre and pako from public CDNs; with no
network they come from their npm packages, unpacked by tools/peers.sh into $AIMRI_VIEWER_LIBS
(default ~/.cache/aimri/viewer-libs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import test_export_neuronpedia

run = test_export_neuronpedia.run  # the same tiny run and its export
exported = test_export_neuronpedia.exported
ROOT = Path(__file__).resolve().parents[1]


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
