"""The check-up: safety-relevant internals (concept probes with a causal check), model diffing,
the planted-behaviour audit game. Each module states its own scope.

Not here: monitoring during generation (`aimri.steer.monitor`, an intervention), the ledger of
diagnostic queries (`aimri.ledger`), the scan stage and the report (`aimri.scanner`, `aimri.report`).
"""
