"""Box 8, monitoring: mergeable profiles, drift statistics, data/model checks, calibration, and the
`Monitor` (four-layer windows over the prediction and label topics, alert rules, report, diagnosis).

Exports are resolved lazily, so importing the package does not pull in scipy.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MonitoringError": "columns",
    "Profile": "profiles", "NumericSummary": "summaries", "CategoricalSummary": "summaries",
    "psi": "stats", "js_distance": "stats", "ks_2samp": "stats", "ks_binned": "stats", "chi2_test": "stats",
    "DataDriftDetector": "drift", "DatasetDrift": "drift", "DriftReport": "drift", "DriftResult": "drift",
    "Thresholds": "drift", "column_drift": "drift", "score_profile": "drift",
    "CheckResult": "checks", "data_checks": "checks", "null_rate_change": "checks", "out_of_range": "checks",
    "unseen_categories": "checks", "score_drift": "checks", "mean_score_shift": "checks",
    "share_above": "checks", "high_score_share": "checks",
    "CalibrationBins": "calibration", "expected_calibration_error": "calibration",
    "calibration_curve": "calibration",
    "Monitor": "windows", "RunResult": "windows", "append_labels": "labels", "labels_topic": "labels",
    "WindowState": "window_state", "WindowSummary": "summary", "summarize": "summary",
    "Alert": "alerts", "Rule": "rules", "parse_rules": "rules", "DEFAULT_RULES": "rules",
    "Facts": "diagnose", "Diagnosis": "diagnose", "run_diagnosis": "gather",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"loopstack.monitoring.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'loopstack.monitoring' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
