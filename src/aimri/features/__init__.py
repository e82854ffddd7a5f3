"""Features: what each feature of a dictionary (or a neuron, or a random direction) is.

statistics (`stats.py`) → labels (`explain.py`) → scores on held-out examples (`score.py`) →
the catalog (`catalog.py`). Records are plain dataclasses (`records.py`).
"""
