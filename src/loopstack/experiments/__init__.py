"""Experiments: sticky assignment, A/B statistics, guardrails, sequential tests, interleaving.

Only assignment is imported eagerly (the serving router needs it on the hot path); the statistics
exports are resolved lazily so that importing this package does not pull in scipy.
"""
from __future__ import annotations

import importlib
from typing import Any

from loopstack.experiments.assignment import AssignmentError, assign, bucket

_LAZY = {
    "ExperimentError": "statistics", "TestResult": "statistics", "SampleSize": "statistics",
    "SRMResult": "statistics", "two_proportion_ztest": "statistics", "welch_ttest": "statistics",
    "power_two_proportions": "statistics", "sample_size_two_proportions": "statistics",
    "mde_two_proportions": "statistics", "power_means": "statistics", "sample_size_means": "statistics",
    "mde_means": "statistics", "sample_ratio_mismatch": "statistics",
    "Guardrail": "guardrails", "GuardrailOutcome": "guardrails", "GuardrailReport": "guardrails",
    "evaluate_guardrails": "guardrails",
    "SequentialTest": "sequential", "SequentialResult": "sequential", "msprt_log_lr": "sequential",
    "always_valid_p_values": "sequential", "simulate_false_positive_rate": "sequential",
    "Interleaving": "interleaving", "InterleavingResult": "interleaving", "team_draft": "interleaving",
    "preference_test": "interleaving", "sign_test": "interleaving", "sample_size_sign_test": "interleaving",
}

__all__ = ["AssignmentError", "assign", "bucket", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"loopstack.experiments.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'loopstack.experiments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
