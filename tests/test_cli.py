"""The `loopstack` command as users run it (a subprocess): init, apply, config, errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSTACK_")}
    full_env.update(env or {}, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "loopstack", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_init_then_apply_prints_the_diff_and_is_idempotent(tmp_path):
    proj = tmp_path / "spam"
    r = run("init", str(proj))
    assert r.returncode == 0, r.stderr
    assert (proj / "loopstack.yaml").exists() and (proj / "definitions.py").exists()
    r = run("apply", "-p", str(proj))
    assert r.returncode == 0, r.stderr
    assert "+ entity author (v1)" in r.stdout and "+ feature_view author_stats (v1)" in r.stdout
    r = run("apply", "-p", str(proj))
    assert r.returncode == 0 and "no changes" in r.stdout
    defs = proj / "definitions.py"
    defs.write_text(defs.read_text().replace('Count(window="1h", name="comments_1h")',
                                             'Count(window="2h", name="comments_1h")'))
    r = run("apply", "-p", str(proj), "--dry-run")
    assert "~ feature_view author_stats (v2)" in r.stdout and "dry run" in r.stdout
    r = run("features", "list", "-p", str(proj))
    assert "author_stats:comments_1h" in r.stdout and " 1h " in r.stdout  # dry run changed nothing
    r = run("apply", "-p", str(proj))
    assert "~ feature_view author_stats (v2)" in r.stdout
    r = run("features", "versions", "author_stats", "-p", str(proj))
    assert r.returncode == 0 and "comments_1h" in r.stdout and "\u2502 2 " in r.stdout
    r = run("features", "versions", "author_statz", "-p", str(proj))
    assert r.returncode == 2 and "no feature view named 'author_statz'" in r.stderr and "author_stats" in r.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    r = run("apply", "-p", str(tmp_path))
    assert r.returncode == 2 and "loopstack init" in r.stderr and "Traceback" not in r.stderr
    run("init", str(tmp_path))
    r = run("apply", "-p", str(tmp_path), env={"LOOPSTACK_LOG__BACKEND": "kafkaa"})
    assert r.returncode == 2 and "log.backend = 'kafkaa' is not allowed; choose one of: local, redis" in r.stderr
    (tmp_path / "definitions.py").write_text("from loopstack import Count\nx = Count('a')\n")
    r = run("apply", "-p", str(tmp_path))
    assert r.returncode == 2 and "needs a window" in r.stderr and "Traceback" not in r.stderr


def test_config_shows_env_overrides(tmp_path):
    run("init", str(tmp_path))
    r = run("config", "-p", str(tmp_path), env={"LOOPSTACK_OFFLINE__THREADS": "2"})
    assert r.returncode == 0 and "threads: 2" in r.stdout and "backend: local" in r.stdout


def test_config_hides_passwords_and_shows_values_literally(tmp_path):
    run("init", str(tmp_path), "--name", "[bold]spam")
    r = run("config", "-p", str(tmp_path), env={
        "LOOPSTACK_METADATA__BACKEND": "postgresql",
        "LOOPSTACK_METADATA__URL": "postgresql+psycopg://me:s3cret@db:5432/ls",
        "LOOPSTACK_LOG__URL": "redis://:hunter2@cache:6379/0"})
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout and "hunter2" not in r.stdout
    assert "postgresql+psycopg://me:***@db:5432/ls" in r.stdout and "redis://:***@cache:6379/0" in r.stdout
    assert "name: '[bold]spam'" in r.stdout  # rich markup in a value is printed, not applied


def test_usage_errors_print_usage_not_a_traceback(tmp_path):
    r = run("materialize", "-p", str(tmp_path))          # missing START and END
    assert r.returncode == 2 and "Missing argument 'start'" in r.stderr and "Traceback" not in r.stderr
    r = run("materialize", "-1", "5", "-p", str(tmp_path))   # a negative time reads as an option
    assert r.returncode == 2 and "No such option: -1" in r.stderr and "Traceback" not in r.stderr
    r = run("features", "serve", "-p", str(tmp_path), "--max-body-mb", "0")   # typer.BadParameter in a command
    assert r.returncode == 2 and "--max-body-mb must be a positive" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_are_click_messages_not_tracebacks(tmp_path):
    """typer raises its own (vendored) click's exceptions: each is still a usage message and exit 2."""
    for args, words in ((["serve", "-p", str(tmp_path)], "Missing option '--model'"),
                        (["serve", "-p", str(tmp_path), "-m", "spam", "--max-batch-size", "abc"], "--max-batch-size"),
                        (["serve", "-p", str(tmp_path), "-m", "spam", "--max-body-mb", "0"], "--max-body-mb"),
                        (["models", "traffic", "spam", "-p", str(tmp_path), "--canary-percent", "x"],
                         "--canary-percent")):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert words in r.stderr and "Usage:" in r.stderr, (args, r.stderr)


def test_serve_refuses_bad_port_log_level_and_grace_before_loading(tmp_path):
    for args, words in ((["--port", "99999"], "--port"), (["--port", "-1"], "--port"),
                        (["--graceful-timeout-s", "-1"], "--graceful-timeout-s"),
                        (["--log-level", "loud"], "--log-level 'loud' is not a log level: use one of critical")):
        r = run("serve", "-p", str(tmp_path), "-m", "spam", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert words in r.stderr, (args, r.stderr)
