"""`loopstack log ingest|tail|topics` through typer's CliRunner on a real project folder."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loopstack.features.definitions import Field
from loopstack.log import TopicConfig
from loopstack.log.cli import app
from loopstack.project import Project

runner = CliRunner()


@pytest.fixture
def project(tmp_path):
    Project.init(tmp_path / "proj", example=False)
    proj = Project(tmp_path / "proj")
    proj.log.create_topic(TopicConfig("msgs", 2, (Field("user", "string"), Field("n", "int64")), key_field="user"))
    return proj


def test_ingest_prints_counts_and_reasons(project, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([json.dumps({"user": f"u{i}", "n": i}) for i in range(30)]
                           + [json.dumps({"user": "x", "n": "bad"})] * 3 + ["{oops"]) + "\n")
    res = runner.invoke(app, ["ingest", str(f), "--topic", "msgs", "-p", str(project.root), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "30 accepted, 4 rejected" in res.output
    assert "field 'n': expected int64" in res.output and "3" in res.output
    assert sum(Project(project.root).log.end_offsets("msgs").values()) == 30


def test_ingest_exits_1_when_no_row_was_accepted(project, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([json.dumps({"user": "x", "n": "bad"})] * 3) + "\n")
    res = runner.invoke(app, ["ingest", str(f), "--topic", "msgs", "-p", str(project.root), "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "0 accepted, 3 rejected" in res.stdout and "no row" in res.stderr
    assert sum(Project(project.root).log.end_offsets("msgs.dlq").values()) == 3   # kept in the DLQ


def test_ingest_unknown_topic_fails_with_hint(project, tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"a": 1}\n')
    res = runner.invoke(app, ["ingest", str(f), "--topic", "nope", "-p", str(project.root)])
    assert res.exit_code == 2   # a usage error, on stderr (it was exit 1 on stdout)
    assert "unknown topic 'nope'" in res.stderr and "msgs" in res.stderr and not res.stdout


def test_tail_last_n_and_partition(project):
    r = project.log.append("msgs", [{"user": "alice", "n": i} for i in range(15)])
    p = r.offsets[0][0]
    res = runner.invoke(app, ["tail", "msgs", "--n", "4", "-p", str(project.root)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["value"]["n"] for x in lines] == [11, 12, 13, 14]
    assert lines[0]["offset"] == 11 and lines[0]["partition"] == p and lines[0]["key"] == "alice"
    other = runner.invoke(app, ["tail", "msgs", "--partition", str(1 - p), "-p", str(project.root)])
    assert other.exit_code == 0 and other.output.strip() == ""
    badp = runner.invoke(app, ["tail", "msgs", "--partition", "7", "-p", str(project.root)])
    assert badp.exit_code == 2 and "partition 7 does not exist" in badp.stderr and not badp.stdout


def test_topics_table(project):
    project.log.append("msgs", [{"user": "a", "n": 1}, {"user": "b", "n": 2}, {"user": "c"}])
    res = runner.invoke(app, ["topics", "-p", str(project.root)])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "msgs" in line)
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert cells[0] == "msgs" and cells[1] == "2" and cells[3] == "2" and cells[4] == "1"
    assert "msgs.dlq" not in res.output


def test_tail_negative_n_is_a_usage_error(project):
    """--n -3 printed nothing and exited 0 (the start position landed past the end)."""
    project.log.append("msgs", [{"user": "alice", "n": i} for i in range(5)])
    res = runner.invoke(app, ["tail", "msgs", "--n", "-3", "-p", str(project.root)])
    assert res.exit_code == 2 and "--n -3" in res.stderr and ">= 0" in res.stderr and not res.stdout
