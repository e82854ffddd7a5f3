"""What `aimri export neuronpedia` prints: where each part of the export went, and the upload.

Part of the CLI (the only layer that prints). Not here: any computation (`aimri.export`).
"""

from __future__ import annotations

from aimri.config.export import ExportNeuronpediaConfig


def print_export(cfg: ExportNeuronpediaConfig) -> None:
    from aimri.export.neuronpedia import export_neuronpedia

    if cfg.upload:  # refused before any work: no client, or no key in the environment
        from aimri.export.upload import api_key, check_client

        api_key()  # before the client is imported: it loads a .env file into the environment
        check_client()
    r = export_neuronpedia(cfg)
    print(f"model '{r.model_id}', source '{r.source_id}': {r.n_features:,} described features")
    print(f"  feature files (circuit-tracer): {r.features_dir}")
    print(f"  source (Neuronpedia bulk export): {r.source_dir}")
    print(f"{len(r.graphs)} graph(s) (circuit-tracer / Neuronpedia graph JSON): {r.graphs_dir}")
    for slug, ids in r.renamed_errors.items():
        print(f"  {slug}: {len(ids)} error node(s) keep aimri's id (circuit-tracer's was taken)")
    if r.graphs:
        print(
            '  view them: python -c "from circuit_tracer.frontend.local_server import serve; '
            f"serve(data_dir='{r.graphs_dir}', port=8032)\" then open http://localhost:8032"
        )
    if cfg.upload:
        from aimri.export.upload import upload

        u = upload(r, url=cfg.upload_url)
        print(f"uploaded to {cfg.upload_url}: {len(u.graphs)} graph(s), {u.n_features:,} features")
        for url in u.graphs:
            print(f"  {url}")
