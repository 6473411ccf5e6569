"""Schemathesis fuzzes the model server's OpenAPI spec over real HTTP: whatever it sends, valid or not
(positive and negative generation for every operation), the server never answers 5xx."""
from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.integration.serving_env import ConstantModel, config, make_project, register, serving

EXAMPLES = 50   # per operation and mode: ~7 operations x 2 modes, well under a minute


@pytest.mark.slow
def test_no_input_makes_the_server_fail(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=30)
    register(p, ConstantModel(0.3))
    started = time.monotonic()
    calls = 0
    try:
        with serving(p, config(log_predictions=False)) as srv:
            schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
            operations = [r.ok() for r in schema.get_all_operations()]
            assert any(op.path == "/v1/models/{name}:predict" for op in operations)
            for op in operations:
                for mode in GenerationMode:
                    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                              suppress_health_check=list(HealthCheck))
                    @given(case=op.as_strategy(generation_mode=mode))
                    def run(case: schemathesis.Case) -> None:
                        nonlocal calls
                        calls += 1
                        case.call_and_validate(checks=[not_a_server_error], timeout=10)
                    try:
                        run()
                    except Unsatisfiable:   # no parameter to make invalid (e.g. GET /healthz)
                        assert mode is GenerationMode.NEGATIVE, op.path
    finally:
        p.close()
    assert calls > 100 and time.monotonic() - started < 60
