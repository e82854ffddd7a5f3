"""Model diffing: what changed from model A to model B, where (layers, tokens, dictionary
features, a crosscoder). What B says differently (its replies and lens) is the audit's:
`aimri.audit.what`."""
