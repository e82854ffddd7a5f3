"""The check-up: safety-relevant internals, as concept probes (per-layer detectors with held-out
AUROC, dictionary features) checked by steering (`causal`), and monitoring them on text.

Not here: model diffing (`aimri.diff`), the planted-behaviour audit game (`aimri.audit`),
monitoring during generation (`aimri.steer.monitor`, an intervention), the ledger of diagnostic
queries (`aimri.ledger`), the scan stage and the report (`aimri.scanner`, `aimri.report`).
"""
