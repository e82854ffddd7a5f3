"""Configuration of every command, as small frozen dataclasses, one module per command family:
`base` (model, corpus, collect), `dicts` (train, eval), `features`, `causal` (steer, circuit),
`checkup` (probe, diff, plant, audit, monitor) and `scan`. Everything is importable from here.

The Python API takes these objects and the CLI is generated from them (tyro), so flags and API
cannot drift. Nothing heavy is imported: `aimri --help` must not import torch. `__post_init__`
only validates; it never has side effects.
"""

from __future__ import annotations

from aimri.config.base import CollectConfig, CorpusConfig, DType, ModelConfig, at_least_one
from aimri.config.causal import CircuitConfig, SteerConfig, SteerMode
from aimri.config.checkup import AuditConfig, DiffConfig, MonitorConfig, PlantConfig, ProbeConfig
from aimri.config.dicts import Architecture, DictConfig, EvalConfig, OptimConfig, TrainConfig
from aimri.config.features import ExplainTextConfig, FeaturesConfig, LLMConfig, SearchConfig
from aimri.config.scan import ScanConfig

__all__ = [
    "Architecture",
    "AuditConfig",
    "CircuitConfig",
    "CollectConfig",
    "CorpusConfig",
    "DType",
    "DictConfig",
    "DiffConfig",
    "EvalConfig",
    "ExplainTextConfig",
    "FeaturesConfig",
    "LLMConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "PlantConfig",
    "ProbeConfig",
    "ScanConfig",
    "SearchConfig",
    "SteerConfig",
    "SteerMode",
    "TrainConfig",
    "at_least_one",
]
