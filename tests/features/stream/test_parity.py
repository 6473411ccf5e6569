"""The skew alarm: parity passes on a clean pipeline, names the feature when a stored value is tampered
with, and the CLI (materialize, materialize-incremental, stream, features parity) exits accordingly."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
import typer
from typer.testing import CliRunner

from loopstack.features.online.base import WriteBatch
from loopstack.features.online.state import (LATEST, TILE, decode_latest, encode_latest, encode_tile,
                                             tile_partials, tile_raw)
from loopstack.features.parity import check_parity, values_match
from tests.features.stream._defs import gen_events, in_time_order, make_project


def cli() -> typer.Typer:
    """The top-level CLI with the online commands mounted (the same way cli.py is to mount them)."""
    from loopstack import cli as top
    from loopstack.features.cli_online import app as features_online, root_app
    names = {c.name for c in top.app.registered_commands}
    if "materialize" not in names:  # until cli.py mounts them: the same two lines, on copies
        app = typer.Typer()
        app.registered_commands = list(top.app.registered_commands) + list(root_app.registered_commands)
        from loopstack.features.cli import app as features_app
        feats = typer.Typer()
        feats.registered_commands = list(features_app.registered_commands) + list(features_online.registered_commands)
        app.add_typer(feats, name="features")
        return app
    return top.app


def test_values_match_rules():
    assert values_match(None, None)[0] and values_match(float("nan"), None)[0]
    assert not values_match(None, 0)[0] and not values_match(0.0, None)[0]
    assert values_match(1.0, 1.0 + 1e-12)[0] and not values_match(1.0, 1.0001)[0]
    assert values_match(3, 3)[0] and not values_match(3, 4)[0] and values_match(3, 3.0)[0]
    assert values_match(2**60, 2**60)[0] and not values_match(2**60, 2**60 + 1)[0]  # ints exact, no float rounding
    assert not values_match("ham", "spam")[0] and values_match("ham", "ham")[0]
    t = datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert values_match(t, t)[0] and not values_match(t, t.replace(microsecond=1))[0]
    ok, severity = values_match(1.0, 3.5)
    assert not ok and math.isclose(severity, 2.5)


@pytest.fixture(params=["sqlite", "redis"])
def streamed(tmp_path, request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    p = make_project(tmp_path / "proj", request.param, url)
    p.log.append("events", in_time_order(gen_events(300, seed=31)))
    from loopstack.features.stream import StreamProcessor
    with StreamProcessor(p) as sp:
        while sp.step(200):
            pass
    yield p
    p.close()


def test_clean_pipeline_has_no_mismatch(streamed):
    report = check_parity(streamed, sample=50, seed=3)
    assert report.ok and report.exit_code == 0, report.table()
    assert report.entities == {"wins": 7, "plain": 7}
    assert len(report.times["wins"]) >= 4
    assert all(f.checked > 0 for f in report.features.values())
    res = CliRunner().invoke(cli(), ["features", "parity", "-p", str(streamed.root), "--sample", "20"])
    assert res.exit_code == 0, res.output
    assert "agree" in res.output


def _tamper_plain(p, author: int) -> None:
    hk = f"plain|{author}"
    latest = decode_latest(p.online_store.read([hk])[hk][LATEST])
    latest[2][2] = (latest[2][2] or 0) + 1000          # plain slot 0 is last_n: [ts, order, value]
    p.online_store.write(WriteBatch(puts={hk: {LATEST: encode_latest(latest)}}))


def test_tampered_plain_value_is_reported_by_name(streamed):
    _tamper_plain(streamed, 3)
    report = check_parity(streamed, sample=50)
    assert not report.ok and report.exit_code == 1
    bad = {name for name, f in report.features.items() if f.mismatches}
    assert bad == {"plain:last_n"}
    worst = report.features["plain:last_n"].worst[0]
    assert worst.entity == 3 and worst.online == worst.offline + 1000
    res = CliRunner().invoke(cli(), ["features", "parity", "-p", str(streamed.root)])
    assert res.exit_code == 1 and "plain:last_n" in res.output and "skew" in res.output


def test_tampered_window_tile_is_reported(streamed):
    plan = streamed.online.plan("wins")
    hk = "wins|2"
    fields = streamed.online_store.read([hk])[hk]
    newest = max(f for f in fields if f.startswith(TILE))
    partials, raw = tile_partials(fields[newest]), tile_raw(fields[newest])
    for row in raw:
        row[2 + plan.columns.index("n")] = 10_000          # the raw events of the newest tile
    for sig, part in zip(plan.sigs, partials):
        if sig.kind == "max" and plan.columns[sig.col - 2] == "n":
            part[1] = 10_000                               # ... and its partial
    streamed.online_store.write(WriteBatch(puts={hk: {newest: encode_tile(partials, raw)}}))
    report = check_parity(streamed, sample=50)
    bad = {name for name, f in report.features.items() if f.mismatches}
    assert "wins:max_n_2h" in bad and "wins:cnt_1h" not in bad and report.exit_code == 1


def test_cli_materialize_incremental_and_stream(tmp_path):
    p = make_project(tmp_path / "proj")
    events = in_time_order(gen_events(200, seed=32))
    p.log.append("events", events)
    runner, app, root = CliRunner(), cli(), str(p.root)
    mid = events[100]["ts"].replace(tzinfo=None).isoformat()  # naive ISO: UTC
    res = runner.invoke(app, ["materialize", "2000-01-01", mid, "-p", root, "--views", "wins"])
    assert res.exit_code == 0, res.output
    assert "rows/s" in res.output and "wins" in res.output
    res = runner.invoke(app, ["materialize-incremental", "2100-01-01", "-p", root])
    assert res.exit_code == 0, res.output
    from loopstack.features.materialize import materialized_intervals
    from loopstack.timeutil import to_us
    assert materialized_intervals(p, "wins") == [(to_us("2000-01-01"), to_us("2100-01-01"))]
    res = runner.invoke(app, ["features", "parity", "-p", root])
    assert res.exit_code == 0, res.output
    p.log.append("events", [{"author_id": 77, "n": 5, "amount": 1.0, "label": "x", "ts": datetime.now(timezone.utc)}])
    res = runner.invoke(app, ["stream", "-p", root, "--idle-timeout", "0.5"])
    assert res.exit_code == 0, res.output
    assert p.online.get_online_features(["plain:last_n"], [{"author_id": 77}]).rows[0]["last_n"] == 5
    res = runner.invoke(app, ["materialize", "yesterday", "2100-01-01", "-p", root])
    assert res.exit_code != 0 and "ISO 8601" in str(res.exception or res.output)
    p.close()


@pytest.mark.parametrize("kwargs, message", [({"sample": 0}, "sample must be >= 1"),
                                             ({"sample": -3}, "sample must be >= 1"),
                                             ({"rel_tol": -1.0}, "rel_tol must be a non-negative"),
                                             ({"abs_tol": float("nan")}, "abs_tol must be a non-negative"),
                                             ({"n_random_times": -1}, "n_random_times must be >= 0")])
def test_parity_rejects_a_sample_or_tolerance_that_checks_nothing(tmp_path, kwargs, message):
    from loopstack.errors import RetrievalError
    p = make_project(tmp_path / "proj")
    p.log.append("events", in_time_order(gen_events(50, seed=33)))
    from loopstack.features.materialize import materialize
    materialize(p, "2000-01-01", "2100-01-01")
    with pytest.raises(RetrievalError, match=message):   # not a ValueError from random.sample / math.isclose,
        check_parity(p, **kwargs)                          # nor a green report that checked nothing
    res = CliRunner().invoke(cli(), ["features", "parity", "-p", str(p.root), "--sample", "0"])
    assert res.exit_code != 0 and isinstance(res.exception, RetrievalError)
    p.close()
