"""`loopstack serve` (the model server) and `loopstack models traffic` (stored traffic settings).

Mounted in loopstack/cli.py::_add_groups: ``app.command("serve")(serve)`` and
``models_app.command("traffic")(traffic)``.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from loopstack.serving.errors import ServingConfigError

console = Console()
err_console = Console(stderr=True)
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")   # uvicorn's


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson
        rec = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            rec["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(rec).decode()


def configure_logs(access_log: bool = True) -> None:
    """JSON lines on stdout: one per request (loopstack.access) and server events (loopstack.serving)."""
    from loopstack.features.cli_serve import configure_access_log
    configure_access_log(access_log)
    logger = logging.getLogger("loopstack.serving")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _sizes(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ServingConfigError(f"--preferred-batch-sizes {text!r}: give integers separated by commas, "
                                 "e.g. 8,16,32") from None


def serve(project: Path = ProjectOpt,
          model: list[str] = typer.Option(..., "--model", "-m", help="Model to serve: NAME or NAME@ALIAS "
                                                                     "(repeatable)."),
          host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default: no authentication)."),
          port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
          runtime: str = typer.Option("thread", help="thread (model in this process) or process (a supervised "
                                                     "worker process per version)."),
          max_batch_size: int = typer.Option(32, help="Largest batch sent to the model (1: no batching)."),
          max_latency_ms: float = typer.Option(5.0, help="Longest a request waits for its batch to fill."),
          preferred_batch_sizes: Optional[str] = typer.Option(None, help="Sizes the model is efficient at, "
                                                                         "e.g. 8,16,32."),
          max_queue: int = typer.Option(1024, help="Requests waiting per version before 429."),
          max_body_mb: float = typer.Option(16.0, help="Largest request body in MiB (a larger one gets 413)."),
          deadline_ms: float = typer.Option(2000.0, help="Default request deadline."),
          model_budget_ms: float = typer.Option(1000.0, help="Model rung budget."),
          fallback_budget_ms: float = typer.Option(500.0, help="Fallback rung budget."),
          cache_entries: int = typer.Option(10_000, help="Result cache size (0: off)."),
          cache_ttl_s: float = typer.Option(60.0, help="Result cache time-to-live."),
          feature_sample: float = typer.Option(0.01, help="Share of predictions logged with full features."),
          log_predictions: bool = typer.Option(True, help="Write the prediction log (topic 'predictions')."),
          poll_interval_s: float = typer.Option(1.0, help="Seconds between registry/traffic-settings checks."),
          access_log: bool = typer.Option(True, help="JSON-lines access log on stdout."),
          graceful_timeout_s: float = typer.Option(30.0, min=0, help="On shutdown, wait this long for in-flight "
                                                                    "requests."),
          log_level: str = typer.Option("warning", help=f"uvicorn log level: {'|'.join(LOG_LEVELS)}.")) -> None:
    """Serve registered models over HTTP: POST /v1/models/NAME:predict, /metrics, /healthz, /readyz, /docs."""
    import uvicorn

    from loopstack.fast_http import FastLaneProtocol
    from loopstack.features.cli_serve import _is_loopback, mib_bytes
    from loopstack.project import Project
    from loopstack.serving.app import create_app
    from loopstack.serving.batcher import BatchConfig
    from loopstack.serving.config import ModelSpec, ServingConfig
    if log_level.lower() not in LOG_LEVELS:
        raise ServingConfigError(f"--log-level {log_level!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    cfg = ServingConfig(
        models=tuple(ModelSpec.parse(m) for m in model), runtime=runtime,
        batch=BatchConfig(max_batch_size, max_latency_ms, _sizes(preferred_batch_sizes), max_queue),
        poll_interval_s=poll_interval_s, default_deadline_ms=deadline_ms, model_budget_ms=model_budget_ms,
        fallback_budget_ms=fallback_budget_ms, cache_entries=cache_entries, cache_ttl_s=cache_ttl_s,
        feature_sample=feature_sample, log_predictions=log_predictions, max_body_bytes=mib_bytes(max_body_mb))
    if not _is_loopback(host):
        err_console.print(f"[yellow]warning:[/] binding {host}: the model server has no authentication")
    p = Project(project)
    for m in cfg.models:   # fail before binding when a model or its alias is unknown
        p.models.generation(m.name)
        if m.alias != "production":
            p.models.resolve(f"models:/{m.name}@{m.alias}")
    configure_logs(access_log)
    try:
        uvicorn.run(create_app(p, cfg, server_gc=True), host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=graceful_timeout_s, http=FastLaneProtocol)
    finally:
        p.close()


def _baseline(text: str | None) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if value is None or (isinstance(value, str) and not value.strip()):   # would be no change / an empty answer
        raise ServingConfigError(f"--baseline {text!r} is no answer: give a JSON value or text, e.g. --baseline 0.0 "
                                 "(to remove the baseline: --unset baseline)")
    return value


def traffic(name: str = typer.Argument(..., help="Registered model name."), project: Path = ProjectOpt,
            canary_percent: Optional[float] = typer.Option(None, help="% of users on the canary version."),
            shadow_sample: Optional[float] = typer.Option(None, help="Fraction (0-1) of production requests "
                                                                     "copied to the shadow version."),
            experiment_weights: Optional[str] = typer.Option(None, help="Variant weights, e.g. control=50,v3=50."),
            experiment_percent: Optional[float] = typer.Option(None, help="% of users in the experiment."),
            experiment_salt: Optional[str] = typer.Option(None, help="Salt of the experiment's user hash."),
            holdback_percent: Optional[float] = typer.Option(None, help="% of users kept on the previous "
                                                                        "production version."),
            fallback: Optional[int] = typer.Option(None, help="Version for the ladder's fallback rung."),
            baseline: Optional[str] = typer.Option(None, help="Static answer of the last rung (JSON or text)."),
            unset: list[str] = typer.Option([], "--unset", help="Remove a setting (repeatable)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show or change a model's traffic settings; running servers apply changes within a second."""
    from loopstack.project import Project
    from loopstack.serving.models import production_history
    from loopstack.serving.policy_store import PolicyStore
    from loopstack.serving.router import policy_from_states
    p = Project(project)
    try:
        reg = p.models
        reg.generation(name)   # unknown model -> clear error
        store = PolicyStore(p.meta)
        changes = {k: v for k, v in {
            "canary_percent": canary_percent, "shadow_sample": shadow_sample, "experiment_weights": experiment_weights,
            "experiment_percent": experiment_percent, "experiment_salt": experiment_salt,
            "holdback_percent": holdback_percent, "fallback": fallback, "baseline": _baseline(baseline)}.items()
            if v is not None}
        unsets = {k.replace("-", "_"): None for k in unset}
        both = sorted(set(unsets) & set(changes))
        if both:   # the unset would win and the value given with it would be lost
            raise ServingConfigError(f"{', '.join(both)}: given a value and --unset in one call; give one of them")
        changes.update(unsets)
        states = {v.version: v.state for v in reg.versions(name)}
        if fallback is not None and fallback not in states:   # a typo would be stored and never used
            from loopstack.registry.errors import ModelReferenceError
            raise ModelReferenceError(f"--fallback {fallback}: model {name!r} has no version {fallback} "
                                      f"(versions: {', '.join(map(str, sorted(states))) or 'none'})")
        settings = store.update(name, changes, actor=_actor()) if changes else store.get(name)
        policy = policy_from_states(name, states, production_history(reg.audit(name)), settings)
    finally:
        p.close()
    view = {"production": policy.production, "shadow": policy.shadow, "shadow_sample": policy.shadow_sample,
            "canary": policy.canary, "canary_percent": policy.canary_percent,
            "experiment": dict(policy.variants), "experiment_weights": dict(policy.experiment_weights),
            "experiment_percent": policy.experiment_percent, "holdback": policy.holdback,
            "holdback_percent": policy.holdback_percent, "fallback": policy.fallback, "baseline": policy.baseline}
    if as_json:
        print(json.dumps({"model": name, "settings": settings, "policy": view, "notes": list(policy.notes)},
                         indent=2, default=str))
        return
    t = Table(title=f"traffic policy of {name}" + (" (updated)" if changes else ""))
    t.add_column("setting")
    t.add_column("effective")
    t.add_column("stored", style="dim")
    for k, v in view.items():
        t.add_row(k, json.dumps(v, default=str), json.dumps(settings[k]) if k in settings else "-")
    console.print(t)
    for note in policy.notes:
        console.print(f"[yellow]note:[/] {note}")


def _actor() -> str:
    from loopstack.registry.lineage import default_actor
    return default_actor()
