"""Experiment tracking on SQLite and a real PostgreSQL: logging, status, git info, search, compare HTML."""
from __future__ import annotations

import re
import subprocess
from datetime import timedelta

import pytest

from loopstack.training.search import SearchError
from loopstack.training.tracking import TrackingError, git_info


def test_params_metrics_steps_tags_artifacts(pg_project, tmp_path):
    art = tmp_path / "model.txt"
    art.write_text("weights")
    with pg_project.start_run("lgbm", tags={"team": "spam"}, flush_every=7) as run:
        run.log_params({"lr": 0.1, "depth": 6})
        run.log_param("objective", "binary")
        run.log_param("lr", 0.1)  # same value again: fine
        with pytest.raises(TrackingError, match="immutable"):
            run.log_param("lr", 0.2)
        for i in range(25):
            run.log_metric("loss", 1.0 / (i + 1))  # default steps 0, 1, 2, ...
        run.log_metrics({"auc": 0.8, "pr_auc": 0.5}, step=0)
        run.log_metrics({"auc": 0.9, "pr_auc": 0.6}, step=10)
        run.log_metric("auc", 0.85, step=5)  # out of order: the latest is still step 10
        run.set_tag("stage", "dev")
        run.set_tag("team", "abuse")  # overwritten
        assert run.log_artifact(art) == ["model.txt"]
        with pytest.raises(TrackingError, match="not a number"):
            run.log_metric("auc", "high")
    info = pg_project.runs.get(run.run_id)
    assert info.status == "FINISHED" and info.error is None and info.name == "lgbm"
    assert info.params == {"lr": "0.1", "depth": "6", "objective": "binary"}
    assert info.metrics == {"loss": pytest.approx(1 / 25), "auc": 0.9, "pr_auc": 0.6}
    assert info.tags == {"team": "abuse", "stage": "dev"}
    hist = pg_project.runs.metric_history(run.run_id, "loss")
    assert [s for s, _, _ in hist] == list(range(25)) and hist[3][1] == pytest.approx(0.25)
    assert [(s, v) for s, v, _ in pg_project.runs.metric_history(run.run_id, "auc")] == [(0, 0.8), (5, 0.85), (10, 0.9)]
    assert info.artifacts[0]["path"] == "model.txt" and info.artifacts[0]["size"] == 7
    assert pg_project.runs.artifact(run.run_id, "model.txt") == b"weights"
    assert info.end_time >= info.start_time and info.duration_s > 0
    assert info.packages["loopstack"] and info.packages["pandas"] and info.packages["numpy"]
    assert pg_project.runs.get(run.run_id[:10]).run_id == run.run_id  # unique prefix


def test_status_failed_with_exception_text(pg_project):
    with pytest.raises(ValueError):
        with pg_project.start_run("boom") as run:
            run.log_metric("x", 1.0)
            raise ValueError("training diverged at step 3")
    info = pg_project.runs.get(run.run_id)
    assert info.status == "FAILED"
    assert info.error == "ValueError: training diverged at step 3"
    assert info.metrics == {"x": 1.0}  # buffered points are flushed even on failure


def test_many_points_are_written_in_bulk(pg_project):
    with pg_project.start_run("bulk") as run:
        for i in range(20_000):
            run.log_metric("loss", float(i), step=i)
        assert run.flush() == 20_000 - 20_000 // run.flush_every * run.flush_every
    assert len(pg_project.runs.metric_history(run.run_id, "loss")) == 20_000
    assert pg_project.runs.get(run.run_id).metrics["loss"] == 19_999.0


def test_git_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    run("add", "train.py")
    run("commit", "-q", "-m", "x")
    head = run("rev-parse", "HEAD").stdout.strip()
    assert git_info(repo) == {"commit": head, "dirty": False, "root": str(repo.resolve())}
    (repo / "train.py").write_text("print(2)\n")
    assert git_info(repo)["dirty"] is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_info(outside) == {"commit": None, "dirty": None, "root": None}


def test_run_records_git_of_code_dir(pg_project, tmp_path):
    with pg_project.start_run("nogit", code_dir=tmp_path) as r1:
        pass
    assert pg_project.runs.get(r1.run_id).git_commit is None
    import loopstack
    src = __import__("pathlib").Path(loopstack.__file__).parent
    with pg_project.start_run("git", code_dir=src) as r2:
        pass
    info = pg_project.runs.get(r2.run_id)
    assert re.fullmatch(r"[0-9a-f]{40}", info.git_commit) and info.git_dirty in (True, False)


def _grid(project):
    ids = {}
    for lr in (0.01, 0.1, 0.3):
        for depth in (3, 6):
            with project.start_run(f"lr{lr}-d{depth}", tags={"model": "lgbm" if depth == 6 else "tree"}) as run:
                run.log_params({"lr": lr, "depth": depth})
                run.log_metric("auc", 0.7 + lr / 2 + depth / 100)
                run.log_metric("auc", 0.5, step=-1)  # older step: not the latest
            ids[(lr, depth)] = run.run_id
    return ids


def test_search_filters_and_ordering(pg_project):
    ids = _grid(pg_project)
    s = pg_project.runs.search
    got = s("metrics.auc > 0.8 and params.lr = '0.1'")
    assert {r.run_id for r in got} == {ids[(0.1, 6)]}  # 0.81 vs 0.78
    assert {r.run_id for r in s("params.lr >= 0.1 and params.depth = 3")} == {ids[(0.1, 3)], ids[(0.3, 3)]}
    assert {r.run_id for r in s("tags.model = 'tree' and metrics.auc < 0.75")} == {ids[(0.01, 3)]}
    assert len(s("status = 'FINISHED' and name LIKE 'lr0.1%'")) == 2
    assert len(s("attributes.status IN ('FAILED', 'RUNNING')")) == 0
    ordered = s(order_by=["metrics.auc DESC"])
    aucs = [r.metrics["auc"] for r in ordered]
    assert aucs == sorted(aucs, reverse=True) and ordered[0].run_id == ids[(0.3, 6)]
    asc = s(order_by=["params.depth ASC", "params.lr DESC"], max_results=3)
    assert [r.run_id for r in asc] == [ids[(0.3, 3)], ids[(0.1, 3)], ids[(0.01, 3)]]
    assert len(s(max_results=4)) == 4
    with pytest.raises(SearchError, match="OR is not supported"):
        s("metrics.auc > 0.8 or params.lr = '0.1'")
    with pytest.raises(SearchError, match="unknown prefix"):
        s("metric_s.auc > 1")
    with pytest.raises(SearchError, match="metrics are numbers"):
        s("metrics.auc = 'high'")


def test_compare_html_has_one_svg_per_metric_with_all_points(pg_project, tmp_path):
    runs = []
    for n, steps in (("a", 5), ("b", 8)):
        with pg_project.start_run(n) as run:
            run.log_param("n", steps)
            for i in range(steps):
                run.log_metrics({"loss": 1 / (i + 1), "auc": 0.5 + i / 20}, step=i)
            run.log_metric("only_a" if n == "a" else "only_b", 1.0)
        runs.append(run.run_id)
    cmp = pg_project.runs.compare(runs)
    page = cmp.to_html(tmp_path / "cmp.html")
    assert (tmp_path / "cmp.html").read_text() == page
    svgs = re.findall(r'<svg class="chart" data-metric="([^"]+)".*?</svg>', page, re.S)
    assert sorted(svgs) == ["auc", "loss", "only_a", "only_b"]
    loss_svg = re.search(r'<svg class="chart" data-metric="loss".*?</svg>', page, re.S).group(0)
    lines = re.findall(r'<polyline data-run="(\w+)" data-points="(\d+)"[^>]*points="([^"]+)"', loss_svg)
    assert {r: int(k) for r, k, _ in lines} == {runs[0]: 5, runs[1]: 8}
    assert [len(pts.split()) for _, _, pts in lines] == [5, 8]
    assert "cdn" not in page.lower() and "<script" not in page
    rows = {label: vals for label, vals, _ in cmp.rows()}
    assert rows["params.n"] == ["5", "8"]


def test_log_dataset_links_run_to_snapshot(project):
    from tests.training.conftest import FEATURES, T0, labels_for
    from loopstack.training.splits import TemporalSplit
    evs = [{"author_id": 1, "is_spam": 0, "n_urls": 0, "ts": T0 + timedelta(hours=h)} for h in range(0, 300, 7)]
    ds = project.build_dataset(labels_for(evs), FEATURES, cutoff=T0 + timedelta(days=30), name="tiny",
                               split=TemporalSplit.weekly(T0 + timedelta(days=7)))
    with project.start_run("train", datasets=[ds]) as run:
        run.log_dataset(ds)  # twice: recorded once
    [d] = project.runs.get(run.run_id).datasets
    assert d == {"dataset_id": ds.id, "name": "tiny", "version": 1, "content_hash": ds.content_hash}


def test_order_by_with_an_unknown_direction_is_an_error_not_ignored(pg_project):
    ids = _grid(pg_project)
    s = pg_project.runs.search
    for bad in ("metrics.auc SIDEWAYS", "metrics.auc DESC extra", "params.lr descending"):
        with pytest.raises(SearchError, match=r"write '<field> \[ASC\|DESC\]'"):
            s(order_by=[bad])
    assert s(order_by=["metrics.auc desc"])[0].run_id == ids[(0.3, 6)]
    assert len(s(order_by=["metrics.`auc` ASC"])) == 6


def test_compare_html_to_an_unwritable_path_is_a_clear_error(pg_project, tmp_path):
    from loopstack.errors import LoopstackError
    ids = []
    for n in ("a", "b"):
        with pg_project.start_run(n) as run:
            run.log_metric("loss", 1.0)
        ids.append(run.run_id)
    with pytest.raises(LoopstackError, match="cannot write the comparison page to .*no/such/dir.*existing, writable"):
        pg_project.runs.compare(ids).to_html(tmp_path / "no" / "such" / "dir" / "cmp.html")
