"""`loopstack dataset build` and `loopstack runs list|show|compare` through a real subprocess."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

from tests.training.conftest import FEATURES, T0, labels_for


def _cmd() -> list[str]:
    """`python -m loopstack`; until the groups are mounted in loopstack/cli.py, the same main() with them added."""
    import loopstack.cli as root
    if {"dataset", "runs"} <= {g.name for g in root.app.registered_groups}:
        return [sys.executable, "-m", "loopstack"]
    return [sys.executable, "-c", "import loopstack.cli as c; from loopstack.training.cli import mount; "
                                  "mount(c.app); c.main()"]


def ls(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {"COLUMNS": "250", "PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):      # test these sources, not whichever checkout the venv installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    res = subprocess.run([*_cmd(), *args], capture_output=True, text=True, timeout=120, env=env)
    if ok:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_dataset_build_and_show(project, comment_events, tmp_path):
    path = tmp_path / "labels.parquet"
    labels_for(comment_events[:400]).to_parquet(path)
    p = str(project.root)
    out = ls("dataset", "build", "-p", p, "--labels", str(path), "-f", FEATURES[0], "-f", FEATURES[1],
             "--label-delay", "24h", "--cutoff", (T0 + timedelta(days=5)).isoformat(), "--weekly",
             (T0 + timedelta(days=2)).isoformat(), "--name", "spam").stdout
    n_final = sum(e["ts"] + timedelta(hours=6) <= T0 + timedelta(days=4) for e in comment_events[:400])
    assert f"400 read, {n_final} kept, {400 - n_final} dropped" in out
    assert "less than label_delay" in out
    manifest = json.loads(ls("dataset", "show", "spam@1", "--json", "-p", p).stdout)
    assert manifest["rows"]["kept"] == n_final
    assert manifest["split"]["train_end"] == (T0 + timedelta(days=2)).isoformat()
    bad = ls("dataset", "show", "nope", "-p", p, ok=False)
    assert bad.returncode == 2 and "no dataset 'nope'" in bad.stderr


def test_runs_list_show_compare(project, tmp_path):
    ids = []
    for lr, auc in (("0.1", 0.91), ("0.3", 0.72), ("0.05", 0.85)):
        with project.start_run(f"lr-{lr}") as run:
            run.log_param("lr", lr)
            for i in range(4):
                run.log_metric("auc", auc - (3 - i) * 0.01, step=i)
        ids.append(run.run_id)
    p = str(project.root)
    out = ls("runs", "list", "-p", p, "--filter", "metrics.auc > 0.8", "--order-by", "metrics.auc DESC").stdout
    assert out.index(ids[0][:12]) < out.index(ids[2][:12]) and ids[1][:12] not in out and "2 run(s)" in out
    out = ls("runs", "list", "-p", p, "--limit", "1", "--order-by", "params.lr ASC").stdout
    assert ids[2][:12] in out and "1 run(s)" in out
    info = json.loads(ls("runs", "show", ids[1], "--json", "-p", p).stdout)
    assert info["params"] == {"lr": "0.3"} and info["metrics"] == {"auc": 0.72} and info["status"] == "FINISHED"
    html = tmp_path / "cmp.html"
    out = ls("runs", "compare", ids[0], ids[1], "--html", str(html), "-p", p).stdout
    assert "params.lr" in out and "0.1" in out and "0.3" in out and "wrote" in out
    page = html.read_text()
    assert len(re.findall(r"<svg class=\"chart\"", page)) == 1
    assert [int(n) for n in re.findall(r'data-points="(\d+)"', page)] == [4, 4]
    bad = ls("runs", "list", "-p", p, "--filter", "metrics.auc >", ok=False)
    assert bad.returncode == 2 and "add a value" in bad.stderr
    bad = ls("runs", "list", "-p", p, "--limit", "-1", ok=False)   # it listed every run
    assert bad.returncode == 2 and "--limit" in bad.stderr and "Traceback" not in bad.stderr


def test_dataset_build_refuses_split_options_it_would_ignore(tmp_path):
    """--eval-start without --train-end was silently dropped (the default split used instead); --weekly
    with --train-end, or --random-fraction with --weekly, silently kept only one of them."""
    from loopstack import Project
    Project.init(tmp_path / "proj", example=False).close()
    base = ["dataset", "build", "-p", str(tmp_path / "proj"), "--labels", "labels.parquet", "-f", FEATURES[0]]
    for extra, words in ((["--eval-start", "2026-11-10"], "--eval-start needs --train-end"),
                         (["--weekly", "2026-11-10", "--train-end", "2026-11-10"], "--weekly and --train-end"),
                         (["--random-fraction", "0.2", "--weekly", "2026-11-10"], "--random-fraction and --weekly")):
        res = ls(*base, *extra, ok=False)
        assert res.returncode == 2 and words in res.stderr.replace("\n", " "), res.stderr
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_runs_with_brackets_in_names_params_and_errors_print_as_written(tmp_path):
    """A run name, param or error holding '[/]' crashed `runs list|show|compare` with rich's MarkupError (a
    traceback), and '[spam_7d]' was swallowed as a style tag."""
    from loopstack import Project
    p = Project.init(tmp_path / "proj", example=False)
    with p.start_run("exp [/] one") as run:
        run.log_params({"cols": "[spam_7d]"})
        run.log_metric("auc", 0.9)
    try:
        with p.start_run("fails") as failed:
            raise ValueError("no column [/] named [spam_7d]")
    except ValueError:
        pass
    p.close()
    root = str(tmp_path / "proj")
    out = ls("runs", "list", "-p", root).stdout
    assert "exp [/] one" in out and "[spam_7d]" in out
    out = ls("runs", "show", run.run_id, "-p", root).stdout
    assert "exp [/] one" in out and "cols=[spam_7d]" in out
    assert "no column [/] named [spam_7d]" in ls("runs", "show", failed.run_id, "-p", root).stdout
    out = ls("runs", "compare", run.run_id, failed.run_id, "-p", root).stdout
    assert "exp [/] one" in out and "[spam_7d]" in out
