"""Concurrent promotions against SQLite and the real PostgreSQL: exactly one wins, nothing is lost."""
from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

from loopstack.registry import ConcurrentUpdateError, TransitionError
from tests.registry.conftest import ladder_to, make_registry, register


def _race(fns):
    """Run the callables at the same moment (barrier); returns ("ok", value) / ("err", exception) each."""
    barrier = threading.Barrier(len(fns))
    out: list = [None] * len(fns)

    def run(i, fn):
        barrier.wait()
        try:
            out[i] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            out[i] = ("err", exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _at_experiment(reg, n):
    versions = register(reg, "spam", n)
    for v in versions:
        ladder_to(reg, f"models:/spam/{v}", "experiment")
    return versions


def _production_states(reg):
    return [v.version for v in reg.versions("spam") if v.state == "production"]


def test_same_promotion_raced_by_threads_wins_once(reg):
    _at_experiment(reg, 1)
    results = _race([lambda i=i: reg.promote("models:/spam/1", "production", reason=f"thread {i}")
                     for i in range(6)])
    wins = [r for r in results if r[0] == "ok"]
    assert len(wins) == 1
    assert all(isinstance(r[1], TransitionError) and "already production" in str(r[1])
               for r in results if r[0] == "err")
    promotions = [e for e in reg.audit("spam") if e["action"] == "transition" and e["to_state"] == "production"]
    assert len(promotions) == 1 and reg.get("models:/spam@production").version == 1


def test_compare_and_swap_promotions_exactly_one_wins(reg):
    _at_experiment(reg, 2)
    g = reg.generation("spam")
    results = _race([lambda v=v: reg.promote(f"models:/spam/{v}", "production", reason=f"v{v} wins",
                                             expected_generation=g) for v in (1, 2)])
    wins = [r[1].version for r in results if r[0] == "ok"]
    errors = [r[1] for r in results if r[0] == "err"]
    assert len(wins) == 1 and len(errors) == 1 and isinstance(errors[0], ConcurrentUpdateError)
    assert "changed since you read it" in str(errors[0])
    loser = 3 - wins[0]
    assert _production_states(reg) == wins and reg.get("models:/spam@production").version == wins[0]
    assert reg.get(f"models:/spam/{loser}").state == "experiment"
    assert reg.generation("spam") == g + 1


def test_serialized_promotions_lose_no_update(reg):
    _at_experiment(reg, 4)
    results = _race([lambda v=v: reg.promote(f"models:/spam/{v}", "production", reason="race")
                     for v in (1, 2, 3, 4)])
    assert all(r[0] == "ok" for r in results)   # each decided on fresh state, one after the other
    log = [e for e in reg.audit("spam") if e["action"] in ("transition", "replaced")
           and "production" in (e["from_state"], e["to_state"])]
    order = [e["version"] for e in log if e["action"] == "transition"]
    assert sorted(order) == [1, 2, 3, 4]
    replaced = [e["version"] for e in log if e["action"] == "replaced"]
    assert replaced == order[:-1]               # each promotion archived exactly the previous winner
    assert _production_states(reg) == [order[-1]] and reg.get("models:/spam@production").version == order[-1]
    assert sorted(v.state for v in reg.versions("spam")) == ["archived"] * 3 + ["production"]


def _proc_promote(url: str, root: str, version: int, expected: int, start, q) -> None:
    reg = make_registry(url, Path(root))
    start.wait()
    try:
        reg.promote(f"models:/spam/{version}", "production", reason=f"process {version}",
                    expected_generation=expected)
        q.put((version, "ok"))
    except ConcurrentUpdateError:
        q.put((version, "conflict"))
    except Exception as exc:  # noqa: BLE001
        q.put((version, f"unexpected {exc!r}"))
    finally:
        reg.meta.close()


def test_processes_compare_and_swap_exactly_one_wins(reg, meta_url, tmp_path):
    _at_experiment(reg, 4)
    g = reg.generation("spam")
    ctx = mp.get_context("fork")
    start, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_proc_promote, args=(meta_url, str(tmp_path), v, g, start, q)) for v in (1, 2, 3, 4)]
    for p in procs:
        p.start()
    start.set()
    results = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert sorted(results.values()) == ["conflict"] * 3 + ["ok"], results
    winner = next(v for v, r in results.items() if r == "ok")
    assert _production_states(reg) == [winner] and reg.get("models:/spam@production").version == winner
    assert reg.generation("spam") == g + 1
