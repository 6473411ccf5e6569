"""Triggers: a schedule whose next run time survives restarts, and an alert callable with filters and a
cooldown. The pipeline's steps are stubbed (each run finishes at once): only triggering is tested."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from loopstack import Project
from loopstack.loop.core import DONE, LoopError
from loopstack.loop.evidence import ManualClock
from loopstack.loop.pipeline import RetrainPipeline
from loopstack.loop.triggers import AlertTrigger, Schedule
from tests.meta.helpers import use_metadata
from tests.loop.helpers import START


class InstantPipeline(RetrainPipeline):
    """Every run finishes in one step (no training)."""

    def step(self, state):
        state.step = DONE
        self.store.save(state, self.clock.now())
        return state


@pytest.fixture
def pl(tmp_path, meta_url):
    """An instant pipeline on an empty project; metadata on SQLite and on PostgreSQL."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "loopstack.yaml").write_text("name: t\n")
    use_metadata(root, meta_url)
    p = Project(root)
    yield InstantPipeline(p, SimpleNamespace(model="spam"), evidence=None, clock=ManualClock(START))
    p.close()


def test_schedule_runs_when_due_and_persists_the_next_time(pl):
    s = Schedule(pl, "7d")
    first = s.tick()
    assert first.step == DONE and first.trigger == "schedule" and "every 7d" in first.reason
    assert s.tick() is None and s.next_run_at == START + timedelta(days=7)
    again = Schedule(pl, "7d")                      # a restarted process reads the stored time
    assert again.next_run_at == START + timedelta(days=7) and not again.due()
    pl.clock.advance(7 * 86400)
    assert again.tick().step == DONE
    pl.clock.advance(30 * 86400)                    # down for a month: one catch-up run, not four
    assert again.tick() is not None and again.tick() is None
    assert again.next_run_at > pl.clock.now()
    assert pl.store.schedule("spam")["last_run_id"] == pl.store.runs("spam")[0].run_id


def test_schedule_resumes_an_unfinished_run_instead_of_starting_one(pl):
    s = Schedule(pl, "1d")
    crashed = pl.start("schedule", "every 1d")
    resumed = s.tick()
    assert resumed.run_id == crashed.run_id and len(pl.store.runs("spam")) == 1


def test_schedule_run_forever_sleeps_until_due(pl):
    done = Schedule(pl, "12h").run_forever(max_runs=3)
    assert len(done) == 3 and pl.clock.now() == START + timedelta(hours=24)


def test_schedule_validates_its_interval(pl):
    with pytest.raises(Exception, match="duration|positive"):
        Schedule(pl, "soon")


ALERT = {"model": "spam", "severity": "act", "layer": "model", "metric": "score_psi", "message": "PSI 0.31 > 0.2"}


def test_alert_triggers_a_run_once_then_cools_down(pl):
    trigger = AlertTrigger(pl, cooldown="6h")
    state = trigger(ALERT)
    assert state.step == DONE and state.trigger == "alert" and state.reason == "score_psi: PSI 0.31 > 0.2"
    assert trigger(ALERT) is None and "cooling down" in trigger.last_skip
    pl.clock.advance(6 * 3600)
    assert trigger(SimpleNamespace(**ALERT)) is not None       # Alert objects work as well as dicts


@pytest.mark.parametrize("change,why", [({"model": "other"}, "for model"), ({"severity": "watch"}, "severity"),
                                        ({"layer": "system", "metric": "error_rate"}, "system-layer")])
def test_alert_filters(pl, change, why):
    trigger = AlertTrigger(pl)
    assert trigger({**ALERT, **change}) is None and why in trigger.last_skip
    assert not pl.store.runs("spam")


def test_alert_skips_while_a_run_is_unfinished(pl):
    pl.start("manual")
    trigger = AlertTrigger(pl, drive=False)
    assert trigger(ALERT) is None and "already retraining" in trigger.last_skip
    with pytest.raises(LoopError, match="unfinished loop run"):
        pl.start("manual")
    assert AlertTrigger(pl, metrics=["recall"])({**ALERT}) is None


def test_alert_filters_take_one_name_and_refuse_unknown_ones(pl):
    # severities="act" was the set {"a", "c", "t"}: no alert ever triggered; a typo ("modle") the same
    assert AlertTrigger(pl, severities="act", layers="model", metrics="score_psi")(ALERT).step == DONE
    for kwargs in ({"severities": ["critical"]}, {"layers": ["modle"]}, {"metrics": ["score-psi"]},
                   {"severities": []}):
        with pytest.raises(LoopError, match=f"AlertTrigger {next(iter(kwargs))}.*choose from"):
            AlertTrigger(pl, **kwargs)
