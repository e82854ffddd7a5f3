"""Model diffing: what changed from model A to model B, where (layers, tokens, dictionary
features, a crosscoder) and what (`what`: the changed model's replies and lens)."""
