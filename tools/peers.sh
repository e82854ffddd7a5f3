#!/usr/bin/env bash
# The peers the Neuronpedia export is checked against, outside aimri's venv (circuit-tracer pins
# transformers<=4.57.3 and pulls transformer-lens and nnsight; its frontend models and viewer
# need only pydantic and the standard library, so it goes in --no-deps):
#   .venv-peers/                      circuit-tracer 0.5.0 (frontend: graph/feature models, viewer)
#   ~/.cache/aimri/viewer-libs/       the viewer's CDN scripts, from their npm packages
#                                     (d3 v7 + d3-jetpack, dagre 0.8.5, pako 2.1.0)
# tests/test_export_viewer.py finds both and skips the checks that need them when absent.
# Usage: bash tools/peers.sh   (about a minute; needs pip's and npm's registries)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AIMRI_PEERS_VENV:-.venv-peers}
LIBS=${AIMRI_VIEWER_LIBS:-$HOME/.cache/aimri/viewer-libs}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip -q --disable-pip-version-check install --no-deps circuit-tracer==0.5.0
"$VENV/bin/python" -m pip -q --disable-pip-version-check install "pydantic>=2,<3"
"$VENV/bin/python" -c "import circuit_tracer.frontend.graph_models, circuit_tracer.frontend.local_server"
if command -v npm >/dev/null; then
  mkdir -p "$LIBS"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent d3-jetpack@2.3.0 dagre@0.8.5 pako@2.1.0 >/dev/null)
  for t in "$tmp"/*.tgz; do tar xzf "$t" -C "$tmp" && mv "$tmp/package" "$tmp/$(basename "$t" .tgz)"; done
  cp "$tmp"/dagre-0.8.5/dist/dagre.min.js "$tmp"/pako-2.1.0/dist/pako.min.js "$LIBS/"
  # d3-jetpack 2.3.0's d3 v7 bundle adds its methods (appendMany, at, st...) to a second copy of
  # d3-selection inside the bundle, not to the one d3.select returns: give d3's own the same;
  # and add the later jetpack's c.drawAxis(svg), which the viewer calls.
  python3 - "$tmp/d3-jetpack-2.3.0/build/d3v7+jetpack.js" "$LIBS/d3v7-jetpack.js" <<'PY'
import sys
src, dst = sys.argv[1:]
text = open(src).read()
anchor = "  selection.prototype.prop = selection.prototype.property;\n"
assert text.count(anchor) == 1, "d3-jetpack's bundle changed: check the patch"
fix = (
    "  Object.assign(selection$1.prototype, {translate: translateSelection, append, insert, "
    "parent, selectAppend, tspans, appendMany, at, st, prop: selection$1.prototype.property});\n"
    "  Object.assign(transition$1.prototype, {translate: translateSelection, at, st});\n"
)
text = text.replace(anchor, anchor + fix)
# The viewer calls the later jetpack's `c.drawAxis(svg)` (axes drawn on a layer of its choice).
end = "    return c;\n  }\n\n  function drawAxis(c){"
assert text.count(end) == 1, "d3-jetpack's bundle changed: check the patch"
method = "    c.drawAxis = function(svg){ return drawAxis(Object.assign({}, c, {svg: svg || c.svg})) };\n"
open(dst, "w").write(text.replace(end, method + end))
PY
  echo "viewer libraries in $LIBS"
else
  echo "npm not found: the viewer check will skip (apt-get install npm)" >&2
fi
echo "circuit-tracer in $VENV"
