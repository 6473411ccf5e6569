"""The closed loop: retrain -> gate -> register -> shadow -> canary -> experiment -> promote, resumable.

``core`` is the pure state machine (steps, thresholds, decisions); ``pipeline.RetrainPipeline``
executes it against a Project and persists each step (``store``, tables in ``schema``); ``triggers``
start runs on a schedule or from a monitoring alert. See docs/monitoring.md, "The closed loop".
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Decision": "core", "ExperimentPlan": "core", "Goal": "core", "LiveChecks": "core", "LoopError": "core",
    "LoopPolicy": "core", "LoopState": "core", "STEPS": "core",
    "EvidenceProvider": "evidence", "ManualClock": "evidence", "SystemClock": "evidence",
    "MonitorEvidence": "monitor_evidence", "LoopSpec": "spec", "RetrainPipeline": "pipeline", "LoopStore": "store",
    "Schedule": "triggers", "AlertTrigger": "triggers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"loopstack.loop.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'loopstack.loop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
