"""`loopstack models traffic` on a fresh project: values it cannot store are refused with exit 2, not dropped."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loopstack.cli import app as cli_app
from loopstack.project import Project
from loopstack.serving.errors import ServingConfigError
from loopstack.serving.policy_store import PolicyStore
from tests.integration.serving_env import ConstantModel

SIGNATURE = {"inputs": [{"ref": "x", "version": None, "column": "x", "dtype": "float64"}],
             "outputs": [{"name": "score", "dtype": "float64", "positive_class": 1}]}


@pytest.fixture
def project(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    mv = p.models.register("spam", ConstantModel(0.2), signature=SIGNATURE)
    p.models.promote(mv.ref, "production", reason="test", override=True)
    p.close()
    return tmp_path / "proj"


def _traffic(project, *args):
    return CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(project), *args])


def _stored(project):
    p = Project(project)
    try:
        return PolicyStore(p.meta).get("spam")
    finally:
        p.close()


@pytest.mark.parametrize("value", ["null", "", "  "])
def test_a_baseline_that_is_no_answer_is_refused_not_ignored(project, value):
    assert _traffic(project, "--baseline", "0.5").exit_code == 0
    res = _traffic(project, "--baseline", value)
    assert isinstance(res.exception, ServingConfigError)   # a LoopstackError: `loopstack` prints it, exits 2
    assert "is no answer" in str(res.exception) and "--unset baseline" in str(res.exception)
    assert _stored(project) == {"baseline": 0.5}


def test_a_baseline_of_json_or_text_is_stored(project):
    assert _traffic(project, "--baseline", '{"score": 0}').exit_code == 0
    assert _stored(project) == {"baseline": {"score": 0}}
    assert _traffic(project, "--baseline", "unknown").exit_code == 0
    assert _stored(project) == {"baseline": "unknown"}


def test_a_value_and_its_unset_in_one_call_are_refused(project):
    assert _traffic(project, "--canary-percent", "10").exit_code == 0
    res = _traffic(project, "--canary-percent", "20", "--unset", "canary-percent")
    assert isinstance(res.exception, ServingConfigError) and "canary_percent: given a value and --unset" in str(
        res.exception)
    assert _stored(project) == {"canary_percent": 10.0}
    assert _traffic(project, "--unset", "canary-percent").exit_code == 0 and _stored(project) == {}


@pytest.mark.parametrize("option, value, reach", [("--canary-percent", "0.001", "0.01"),
                                                  ("--holdback-percent", "12.345", "12.35"),
                                                  ("--shadow-sample", "0.00005", "0.0001")])
def test_a_share_finer_than_one_user_bucket_is_refused_not_rounded_up(project, option, value, reach):
    # --canary-percent 0.001 was stored and reached 0.01 % of users (10,000 buckets): ten times the ask
    r = _traffic(project, option, value)
    assert isinstance(r.exception, ServingConfigError) and f"would reach {reach}" in str(r.exception), r.output
    assert _stored(project) == {}
    assert _traffic(project, option, reach).exit_code == 0 and float(reach) in _stored(project).values()


def test_a_finer_share_stored_before_still_loads(project):
    """Only new values are checked: a policy stored by an older loopstack keeps serving (rounded up)."""
    import json

    import sqlalchemy as sa

    from loopstack.serving.policy_store import traffic_settings as T
    from loopstack.serving.router import policy_from_states
    p = Project(project)
    try:
        PolicyStore(p.meta).update("spam", {"canary_percent": 1.0})
        with p.meta.engine.begin() as conn:
            conn.execute(sa.update(T).where(T.c.name == "spam").values(settings=json.dumps({"canary_percent": 0.001})))
        stored = PolicyStore(p.meta).get("spam")
        assert stored == {"canary_percent": 0.001}
        assert policy_from_states("spam", {1: "production", 2: "canary"}, [1], stored).canary_percent == 0.001
    finally:
        p.close()
