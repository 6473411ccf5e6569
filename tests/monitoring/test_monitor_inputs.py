"""Bad input to the monitor's API and CLI: roll-up widths, report paths, status --last, diagnose."""
from __future__ import annotations

import pytest

from loopstack.monitoring.columns import MonitoringError
from loopstack.monitoring.report import write_report
from loopstack.monitoring.windows import Monitor
from loopstack.project import Project


@pytest.fixture()
def monitor(tmp_path):
    """A monitor on an empty SQLite project."""
    return Monitor(Project.init(tmp_path / "proj", example=False))


@pytest.mark.parametrize("every", ["0h", "0s", "1500ms", "90m"])
def test_roll_up_width_must_be_a_positive_multiple_of_the_window(monitor, every):
    # "0h" divided by zero (ZeroDivisionError) in summaries and window_state
    with pytest.raises(MonitoringError, match="multiple of the base window"):
        monitor.summaries("spam", every=every)
    with pytest.raises(MonitoringError, match="multiple of the base window"):
        monitor.window_state("spam", 1, 0, every=every)
    assert monitor.summaries("spam", every="1d") == []


def test_report_to_an_unwritable_path_is_a_clear_error(monitor, tmp_path):
    for bad in (tmp_path / "missing" / "r.html", tmp_path):        # no such folder; a folder
        with pytest.raises(MonitoringError, match="cannot write the report"):
            write_report(monitor, "spam", bad)
    assert write_report(monitor, "spam", tmp_path / "r.html").read_text().startswith("<!")


@pytest.mark.parametrize("args", [["status", "--last", "-3"], ["status", "--last", "0"],
                                  ["alerts", "--limit", "-1"], ["alerts", "--limit", "0"]])
def test_cli_counts_must_be_positive(monitor, args):
    # status --last -3 was an IndexError traceback; --last 0 showed every window; --limit -1 every alert
    from typer.testing import CliRunner

    from loopstack.cli import app
    r = CliRunner().invoke(app, ["monitor", *args, "-p", str(monitor.project.root)])
    assert r.exit_code == 2 and "greater than or equal to 1" in r.output, r.output


def test_diagnose_of_a_model_without_windows_says_so_and_exits_1(monitor):
    # it exited 0 with "suspect genuine drift", and --json was preceded by a warning line on stdout
    import json

    from typer.testing import CliRunner

    from loopstack.cli import app
    from tests.integration.serving_env import SIGNATURE, ConstantModel
    monitor.project.models.register("quiet", ConstantModel(0.5), signature=SIGNATURE)
    root = str(monitor.project.root)
    r = CliRunner().invoke(app, ["monitor", "diagnose", "quiet", "--json", "-p", root])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["explanation"] is None and "no monitoring windows for model 'quiet'" in out["note"]
    r = CliRunner().invoke(app, ["monitor", "diagnose", "quiet", "-p", root], terminal_width=200)
    assert r.exit_code == 1 and "nothing to diagnose" in r.output and "genuine drift" not in r.output


@pytest.mark.parametrize("args", [["report", "nosuch"], ["diagnose", "nosuch"], ["status", "nosuch"],
                                  ["alerts", "nosuch"], ["alerts", "nosuch", "--json"]])
def test_a_model_the_registry_does_not_know_is_an_error(monitor, tmp_path, args):
    # a typo wrote an empty report (or printed nothing) and exited 0
    from typer.testing import CliRunner

    from loopstack.cli import app
    from tests.integration.serving_env import SIGNATURE, ConstantModel
    monitor.project.models.register("spam", ConstantModel(0.5), signature=SIGNATURE)
    out = tmp_path / "r.html"
    extra = ["--out", str(out)] if args[0] == "report" else []
    r = CliRunner().invoke(app, ["monitor", *args, *extra, "-p", str(monitor.project.root)], terminal_width=300)
    assert r.exit_code == 2, r.output
    assert "unknown model 'nosuch'" in r.stderr and "registered: spam" in r.stderr
    assert not out.exists()
    r = CliRunner().invoke(app, ["monitor", args[0], "spam", *args[2:], *extra, "-p", str(monitor.project.root)])
    assert r.exit_code == (1 if args[0] == "diagnose" else 0), r.output   # known, no windows yet: a warning


@pytest.mark.parametrize("version", ["7", "-4"])
def test_report_of_a_version_the_registry_does_not_know_is_an_error(monitor, tmp_path, version):
    # --version 7 of a model with one version wrote an empty report and exited 0
    from typer.testing import CliRunner

    from loopstack.cli import app
    from tests.integration.serving_env import SIGNATURE, ConstantModel
    monitor.project.models.register("spam", ConstantModel(0.5), signature=SIGNATURE)
    out, root = tmp_path / "r.html", str(monitor.project.root)
    r = CliRunner().invoke(app, ["monitor", "report", "spam", "--version", version, "--out", str(out), "-p", root],
                           terminal_width=300)
    assert r.exit_code == 2, r.output
    assert f"model 'spam' has no version {version}" in r.stderr and "registered versions: 1" in r.stderr
    assert not out.exists()
    r = CliRunner().invoke(app, ["monitor", "report", "spam", "--version", "1", "--out", str(out), "-p", root],
                           terminal_width=300)
    assert r.exit_code == 0 and out.exists(), r.output     # known, no windows yet: a warning
    assert "no monitoring windows for version 1" in r.stderr


@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf"])
def test_follow_interval_must_be_a_positive_finite_number(monitor, interval):
    # --interval -1 / nan ran the monitor once, then died in time.sleep with a ValueError traceback;
    # 0 spun without pausing
    from typer.testing import CliRunner

    from loopstack.cli import app
    root = str(monitor.project.root)
    r = CliRunner().invoke(app, ["monitor", "run", "--follow", "--interval", interval, "-p", root])
    assert r.exit_code == 2 and "--interval" in r.output and "positive" in r.output, r.output
    assert monitor.lag() == {}          # refused before running (a run creates the labels topic)


def test_labels_other_than_0_and_1_are_never_read_as_positives(monitor):
    # a label of -1 (a common "negative") or 2 was counted as a positive: int(bool(-1)) == 1
    from loopstack.log.base import TopicConfig
    from loopstack.monitoring.windows import append_labels, labels_topic
    from loopstack.serving.prediction_log import SCHEMA
    log = monitor.project.log
    log.create_topic(TopicConfig("predictions", 1, SCHEMA))
    t0 = 1_700_000_000_000_000
    preds = [{"kind": "prediction", "request_id": f"r{i}", "ts": t0 + i, "model": "spam", "version": 1,
              "output": 0.9} for i in range(4)]
    assert log.append("predictions", preds).accepted == 4
    with pytest.raises(MonitoringError, match=r"not 0 or 1.*'label': -1"):
        append_labels(log, [{"request_id": "r0", "label": 1}, {"request_id": "r1", "label": -1}])
    assert "labels" not in {t.name for t in log.topics()}      # nothing appended
    log.create_topic(labels_topic())
    log.append("labels", [{"request_id": "r0", "label": 1}, {"request_id": "r1", "label": -1},
                          {"request_id": "r2", "label": 2}, {"request_id": "r3", "label": 0}])  # past the helper
    res = monitor.run()
    assert res.labels == 4 and res.joined == 2
    state = monitor.window_state("spam", 1, t0 - t0 % 3_600_000_000)
    assert (state.labelled, state.tp, state.fp) == (2, 1, 1)
    assert append_labels(log, [{"request_id": "r1", "label": False}, {"request_id": "r2", "label": 1.0}]) == 2
