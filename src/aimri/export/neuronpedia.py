"""`aimri export neuronpedia`: a run's graphs, features and dictionary for Neuronpedia.

Reads a scan run folder (or a dictionary, its catalog and a folder of graphs) and writes:
```
<out>/
  neuronpedia.json                 what was exported (counts, ids, the settings); no secrets
  graphs/<slug>.json               circuit-tracer / Neuronpedia graph JSON
  graphs/graph-metadata.json       the index circuit-tracer's viewer lists
  features/<source>/<index>.json   circuit-tracer's feature file, one per described feature
  source/<model>/<source>/         Neuronpedia's bulk export of the dictionary: model.jsonl,
                                   sourceset.jsonl, source.jsonl, features|activations|
                                   explanations/batch-<n>.jsonl.gz (128 features a batch)
```
`aimri export neuronpedia RUN --out DIR --upload` then sends it (`upload.py`). The graphs are
served as they are by circuit-tracer's own viewer: `python -m circuit_tracer` or
`circuit_tracer.frontend.local_server.serve(data_dir=<out>/graphs)`.
Not here: the formats themselves (`formats.py`).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aimri._io import read_json, write_bytes_atomic, write_json_atomic
from aimri._version import __version__
from aimri.config.export import ExportNeuronpediaConfig
from aimri.errors import AimriError
from aimri.export.formats import (
    SourceInfo,
    activation_records,
    explanation_records,
    feature_json,
    feature_record,
    graph_index,
    neuronpedia_graph,
    source_headers,
    source_name,
)
from aimri.features.catalog import Catalog
from aimri.model.sites import parse_site

log = logging.getLogger(__name__)
BATCH = 128
"""Features per batch file of the bulk export (and per upload request: the client's limit)."""
MANIFEST = "neuronpedia.json"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ExportResult:
    out: Path
    model_id: str
    source_id: str
    graphs: list[str]
    """Slugs of the exported graphs."""
    n_features: int
    """Described features exported (feature files, and rows of the bulk export)."""
    renamed_errors: dict[str, list[str]]
    """Per graph, error nodes that keep aimri's id (see `formats.neuronpedia_graph`)."""

    @property
    def graphs_dir(self) -> Path:
        return self.out / "graphs"

    @property
    def features_dir(self) -> Path:
        return self.out / "features" / self.source_id

    @property
    def source_dir(self) -> Path:
        return self.out / "source" / self.model_id / self.source_id


@dataclass(frozen=True)
class _Inputs:
    catalog: Path
    dictionary: Path
    graphs: Path | None
    model_spec: str

    @property
    def run_json(self) -> Path:
        """The scan's run record, beside the features/ folder of a run's catalog."""
        return self.catalog.resolve().parent.parent / "run.json"


def export_neuronpedia(cfg: ExportNeuronpediaConfig) -> ExportResult:
    inputs = _inputs(cfg)
    with Catalog.open(inputs.catalog) as catalog:
        basis = catalog.identity.basis
        model_id = cfg.model_id or model_name(inputs.model_spec)
        site = parse_site(basis.site)
        info = SourceInfo(
            model_id=model_id,
            source_set=cfg.source_set or source_name(site.kind, basis.n_features),
            layer=site.layer,
            site=basis.site,
            n_features=basis.n_features,
            description=f"{basis.name}, by aimri",
            saelens_config=_saelens_config(inputs.dictionary),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            **_model_shape(inputs.run_json, site.layer),
        )
        n = _write_features(catalog, basis.name, info, cfg.out)
    slugs, renamed = _write_graphs(inputs.graphs, model_id, cfg.out / "graphs")
    result = ExportResult(cfg.out, model_id, info.source_id, slugs, n, renamed)
    manifest = {
        "kind": "aimri.neuronpedia-export",
        "aimri": __version__,
        "model_id": model_id,
        "source_set": info.source_set,
        "source_id": info.source_id,
        "site": info.site,
        "catalog": str(inputs.catalog),
        "graphs": slugs,
        "n_features": n,
        "renamed_error_nodes": renamed,
    }
    write_json_atomic(cfg.out / MANIFEST, manifest)
    return result


def model_name(spec: str) -> str:
    """A Neuronpedia model id from a model spec: `smollm2-135m` stays, a path gives its folder
    or file name, lowercased, in the characters Neuronpedia takes (a letter first, 2-32 long)."""
    name = Path(spec.rstrip("/")).name.lower().removesuffix(".gguf")
    name = re.sub(r"[^a-z0-9.]+", "-", name)
    name = re.sub(r"([.-])[.-]+", r"\1", name).strip(".-")
    name = name if name[:1].isalpha() and len(name) > 1 else f"model-{name}".rstrip(".-")
    return name[:32].rstrip(".-")


def _inputs(cfg: ExportNeuronpediaConfig) -> _Inputs:
    if cfg.run is None:
        assert cfg.catalog is not None
        with Catalog.open(cfg.catalog) as catalog:
            spec = catalog.identity.model
            found = catalog.dictionary_folder().resolve()
        if cfg.dictionary is not None and found != cfg.dictionary.resolve():
            raise AimriError(
                f"--catalog '{cfg.catalog}' describes the dictionary at '{found}', not "
                f"--dictionary '{cfg.dictionary}': pass the catalog made from that dictionary"
            )
        return _Inputs(cfg.catalog, found, cfg.graphs, spec)
    run = cfg.run
    if not (run / "run.json").is_file() and not (run / "features").is_dir():
        raise AimriError(
            f"--run '{run}' is not a scan run folder (no run.json, no features/): give the "
            "folder `aimri scan` wrote, e.g. runs/<name>, or --dictionary and --catalog"
        )
    catalog = run / "features" / "catalog.sqlite"
    if not catalog.is_file():
        raise AimriError(
            f"--run '{run}' has no feature catalog ({catalog} is missing): the scan's features "
            "stage did not finish; run the same scan again to complete it"
        )
    graphs = cfg.graphs or (run / "graphs" if (run / "graphs").is_dir() else None)
    with Catalog.open(catalog) as c:
        spec, dictionary = c.identity.model, c.dictionary_folder()
    return _Inputs(catalog, dictionary, graphs, spec)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_") or "graph"


def _saelens_config(dictionary: Path) -> dict[str, Any] | None:
    cfg = dictionary / "cfg.json"
    return read_json(cfg, "dictionary config") if cfg.is_file() else None


def _model_shape(run_json: Path, layer: int) -> dict[str, Any]:
    """The model's layers and widths from the scan's run.json; where there is none, what the
    dictionary shows (its layer + 1 layers at least, widths unknown)."""
    raw = read_json(run_json, "run record") if run_json.is_file() else {}
    model = raw.get("model") if isinstance(raw, dict) else None
    model = model if isinstance(model, dict) else {}
    return {
        "n_layers": int(model.get("n_layers") or layer + 1),
        "d_model": model.get("d_model"),
        "d_mlp": int(model.get("d_mlp") or 0),
    }


def _write_features(catalog: Catalog, basis: str, s: SourceInfo, out: Path) -> int:
    """The feature files and the bulk export of every described feature; their count."""
    indices = catalog.described(basis)
    root = out / "source" / s.model_id / s.source_id
    for name, record in source_headers(s).items():
        write_bytes_atomic(root / f"{name}.jsonl", (json.dumps(record) + "\n").encode())
    for b in range(0, max(len(indices), 1), BATCH):
        rows: dict[str, list[dict[str, Any]]] = {"features": [], "activations": []}
        rows["explanations"] = []
        for i in indices[b : b + BATCH]:
            f = catalog.feature(basis, i)
            data = json.dumps(feature_json(f, source_id=s.source_id)).encode()
            write_bytes_atomic(out / "features" / s.source_id / f"{i}.json", data)
            rows["features"].append(feature_record(s, f))
            rows["activations"] += activation_records(s, f)
            labels = catalog.labels(basis, i)
            rows["explanations"] += explanation_records(s, labels, catalog.best_label(basis, i))
        for name, records in rows.items():
            text = "".join(json.dumps(r) + "\n" for r in records).encode()
            path = root / name / f"batch-{b // BATCH}.jsonl.gz"
            write_bytes_atomic(path, gzip.compress(text, compresslevel=5, mtime=0))
    log.info("exported %d features of %s as source %s", len(indices), basis, s.source_id)
    return len(indices)


def _write_graphs(
    folder: Path | None, model_id: str, out: Path
) -> tuple[list[str], dict[str, list[str]]]:
    files = sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []
    metadatas, renamed = [], {}
    for path in files:
        if path.name == "graph-metadata.json":
            continue
        data = read_json(path, "attribution graph", fix="trace it again with `aimri circuit`")
        if not (isinstance(data, dict) and {"metadata", "nodes", "links"} <= set(data)):
            log.warning("skipped %s: not an attribution graph (no metadata/nodes/links)", path)
            continue
        g = neuronpedia_graph(data, model_id=model_id)
        slug = g.data["metadata"]["slug"]
        if not _SLUG.fullmatch(str(slug)):  # a file name inside graphs/, never a path
            slug = g.data["metadata"]["slug"] = _safe(path.stem)
        write_bytes_atomic(out / f"{slug}.json", json.dumps(g.data).encode())
        metadatas.append(g.data["metadata"])
        if g.renamed_errors:
            renamed[slug] = g.renamed_errors
            log.warning(
                "%s: %d error node(s) keep aimri's id: circuit-tracer's would equal a feature's",
                slug,
                len(g.renamed_errors),
            )
    if metadatas:
        index = json.dumps(graph_index(metadatas), indent=2).encode()
        write_bytes_atomic(out / "graph-metadata.json", index)
    return [m["slug"] for m in metadatas], renamed
