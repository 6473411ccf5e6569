"""The batching edge: one worker thread, bounded queue, deadlines, failures, shutdown.

These tests use real threads, so they assert behaviour (what fired, what each future got), never timings,
and wait with generous timeouts to stay robust on a loaded machine.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from loopstack.serving import BatchConfig, BatcherClosed, DeadlineExceeded, DynamicBatcher, QueueFull

T = 20.0  # generous timeout for anything that should happen "soon"


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_until(pred, timeout: float = T) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


class Gate:
    """run_batch that records batches and blocks until released (to let requests pile up)."""

    def __init__(self, blocked: bool = True):
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        self.batches: list[list] = []

    def __call__(self, payloads):
        self.batches.append(list(payloads))
        assert self.release.wait(T)
        return [p * 2 for p in payloads]


@pytest.fixture
def batchers():
    made = []
    yield made
    for b in made:
        b.close(drain=False, timeout=T)


def make(batchers, cfg, run, **kw):
    b = DynamicBatcher(cfg, run, name="m", **kw)
    batchers.append(b)
    return b


def test_full_batch_fires_and_results_map_back_in_order(batchers):
    gate = Gate(blocked=False)
    b = make(batchers, BatchConfig(max_batch_size=4, max_latency_ms=600_000), gate)
    futs = [b.submit(i) for i in range(4)]
    assert [f.result(T) for f in futs] == [0, 2, 4, 6]
    assert gate.batches == [[0, 1, 2, 3]]
    s = b.stats()
    assert s["fired"] == {"full": 1, "waited_out": 0, "preferred": 0}
    assert s["batch_sizes"] == {4: 1} and s["batches"] == 1 and s["requests"] == 4 and s["queue_depth"] == 0


def test_waited_out_and_preferred_with_a_fake_clock(batchers):
    clock = FakeClock()
    gate = Gate(blocked=False)
    cfg = BatchConfig(max_batch_size=32, max_latency_ms=100, preferred_batch_sizes=(4,))
    b = make(batchers, cfg, gate, clock=clock)
    futs = [b.submit(i) for i in range(6)]
    clock.t = 0.06                      # past half the budget: the preferred size 4 fires
    wait_until(lambda: len(gate.batches) == 1)
    clock.t = 0.2                       # the remaining two wait out the budget
    assert [f.result(T) for f in futs] == [0, 2, 4, 6, 8, 10]
    assert gate.batches == [[0, 1, 2, 3], [4, 5]]
    assert b.stats()["fired"] == {"full": 0, "waited_out": 1, "preferred": 1}
    assert b.stats()["batch_sizes"] == {2: 1, 4: 1}


def test_concurrent_submitters_each_get_their_own_result(batchers):
    b = make(batchers, BatchConfig(max_batch_size=8, max_latency_ms=2), lambda xs: [x * 2 for x in xs])
    results: dict[int, int] = {}

    def client(base: int) -> None:
        futs = {base + i: b.submit(base + i) for i in range(100)}
        for k, f in futs.items():
            results[k] = f.result(T)

    threads = [threading.Thread(target=client, args=(1000 * t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert results == {k: 2 * k for k in results} and len(results) == 800
    s = b.stats()
    assert s["requests"] == 800 and sum(n * c for n, c in s["batch_sizes"].items()) == 800
    assert sum(s["fired"].values()) == s["batches"]


def test_run_batch_error_fails_that_batch_and_the_worker_survives(batchers):
    calls = []

    def run(xs):
        calls.append(xs)
        if len(calls) == 1:
            raise ValueError("model exploded")
        return xs

    b = make(batchers, BatchConfig(max_batch_size=2, max_latency_ms=600_000), run)
    bad = [b.submit(1), b.submit(2)]
    for f in bad:
        with pytest.raises(ValueError, match="model exploded"):
            f.result(T)
    good = [b.submit(3), b.submit(4)]
    assert [f.result(T) for f in good] == [3, 4]
    assert b.stats()["failed_batches"] == 1


def test_wrong_number_of_results_is_a_clear_error(batchers):
    b = make(batchers, BatchConfig(max_batch_size=2, max_latency_ms=600_000), lambda xs: xs[:1])
    futs = [b.submit(1), b.submit(2)]
    for f in futs:
        with pytest.raises(RuntimeError, match="returned 1 results for a batch of 2"):
            f.result(T)


def test_full_queue_refuses_with_retry_after(batchers):
    gate = Gate()
    b = make(batchers, BatchConfig(max_batch_size=1, max_latency_ms=0, max_queue=2), gate)
    first = b.submit(1)
    wait_until(lambda: b.stats()["in_flight"] == 1)
    queued = [b.submit(2), b.submit(3)]
    with pytest.raises(QueueFull) as err:
        b.submit(4)
    assert err.value.retry_after_s > 0 and "full" in str(err.value)
    assert b.stats()["rejected"] == 1 and b.stats()["queue_depth"] == 2
    gate.release.set()
    assert [f.result(T) for f in [first, *queued]] == [2, 4, 6]


def test_expired_requests_never_reach_the_model(batchers):
    clock = FakeClock(100.0)
    gate = Gate()
    b = make(batchers, BatchConfig(max_batch_size=1, max_latency_ms=0), gate, clock=clock)
    first = b.submit(1)
    wait_until(lambda: b.stats()["in_flight"] == 1)
    late = b.submit(2, deadline=105.0)
    on_time = b.submit(3, deadline=1000.0)
    already = b.submit(4, deadline=99.0)
    with pytest.raises(DeadlineExceeded):
        already.result(T)
    clock.t = 110.0
    gate.release.set()
    assert first.result(T) == 2 and on_time.result(T) == 6
    with pytest.raises(DeadlineExceeded, match="deadline"):
        late.result(T)
    assert [2] not in gate.batches and [4] not in gate.batches
    assert b.stats()["expired"] == 2


def test_cancelled_request_is_skipped(batchers):
    gate = Gate()
    b = make(batchers, BatchConfig(max_batch_size=1, max_latency_ms=0), gate)
    first = b.submit(1)
    wait_until(lambda: b.stats()["in_flight"] == 1)
    cancelled, kept = b.submit(2), b.submit(3)
    assert cancelled.cancel()
    gate.release.set()
    assert first.result(T) == 2 and kept.result(T) == 6
    assert [2] not in gate.batches


def test_close_with_drain_finishes_queued_work():
    gate = Gate()
    b = DynamicBatcher(BatchConfig(max_batch_size=2, max_latency_ms=600_000), gate, name="m")
    futs = [b.submit(i) for i in range(5)]   # two full batches + one that would wait 10 minutes
    closer = threading.Thread(target=b.close, kwargs={"drain": True, "timeout": T})
    closer.start()
    wait_until(lambda: b.closed)
    with pytest.raises(BatcherClosed, match="shut down"):
        b.submit(99)
    gate.release.set()
    closer.join(T)
    assert not closer.is_alive()
    assert [f.result(0) for f in futs] == [0, 2, 4, 6, 8]


def test_close_without_drain_fails_queued_requests_at_once():
    gate = Gate()
    b = DynamicBatcher(BatchConfig(max_batch_size=1, max_latency_ms=0), gate, name="m")
    first = b.submit(1)
    wait_until(lambda: b.stats()["in_flight"] == 1)
    queued = [b.submit(2), b.submit(3)]
    closer = threading.Thread(target=b.close, kwargs={"drain": False, "timeout": T})
    closer.start()
    for f in queued:
        with pytest.raises(BatcherClosed, match="without draining"):
            f.result(T)
    gate.release.set()
    closer.join(T)
    assert first.result(0) == 2   # the batch already running finishes


def test_submit_async(batchers):
    b = make(batchers, BatchConfig(max_batch_size=4, max_latency_ms=1), lambda xs: [x + 1 for x in xs])

    async def main():
        return await asyncio.gather(*(b.submit_async(i) for i in range(10)))

    assert asyncio.run(main()) == list(range(1, 11))


def test_blocks_run_whole_in_one_batch_and_count_their_rows(batchers):
    """A block (one batch request's rows) is one queue entry that is never split across batches: with
    max batch 4, single 0 + block [1, 2, 3] fill one batch; block [4, 5] does not fit after single 6 and
    the next block, so it waits; a block larger than the max batch runs as a batch of its own."""
    gate = Gate()
    b = make(batchers, BatchConfig(max_batch_size=4, max_latency_ms=600_000), gate)

    async def main():
        first = b.submit_future(0)
        blk = b.submit_block([1, 2, 3])
        await asyncio.sleep(0)
        wait_until(lambda: len(gate.batches) == 1)
        assert b.stats()["in_flight"] == 4
        big = b.submit_block([10, 11, 12, 13, 14, 15])      # waits behind nothing: 6 >= 4 fires at once
        gate.release.set()
        return await asyncio.gather(first, blk, big)

    assert asyncio.run(main()) == [0, [2, 4, 6], [20, 22, 24, 26, 28, 30]]
    assert gate.batches == [[0, 1, 2, 3], [10, 11, 12, 13, 14, 15]]
    s = b.stats()
    assert s["requests"] == 10 and s["batch_sizes"] == {4: 1, 6: 1} and s["queue_depth"] == 0


def test_a_one_row_block_gets_a_list_alone_or_beside_single_requests(batchers):
    """A block's future resolves to the list of its rows' results even when it has one row, whether the
    batch holds only blocks of one row or single requests beside it (then items and rows are as many)."""
    gate = Gate(blocked=False)
    b = make(batchers, BatchConfig(max_batch_size=2, max_latency_ms=600_000), gate)

    async def main():
        return [await asyncio.gather(b.submit_block([1]), b.submit_block([2])),
                await asyncio.gather(b.submit_future(3), b.submit_block([4]))]

    assert asyncio.run(main()) == [[[2], [4]], [6, [8]]]


def test_a_block_that_does_not_fit_waits_for_the_next_batch(batchers):
    gate = Gate(blocked=False)
    clock = FakeClock()
    b = make(batchers, BatchConfig(max_batch_size=4, max_latency_ms=10), gate, clock=clock)

    async def main():
        futs = [b.submit_future(1), b.submit_block([2, 3]), b.submit_block([4, 5])]
        assert b.stats()["queue_depth"] == 5
        return await asyncio.gather(*futs)

    # 5 rows queued >= 4: the first batch takes 1 + [2, 3] (3 rows; [4, 5] would make 5), then [4, 5]
    # waits for its budget on the fake clock
    async def run():
        task = asyncio.ensure_future(main())
        await asyncio.sleep(0.05)
        clock.t = 1.0
        return await task

    assert asyncio.run(run()) == [2, [4, 6], [8, 10]]
    assert gate.batches == [[1, 2, 3], [4, 5]]


def test_block_queue_limit_counts_rows(batchers):
    gate = Gate()
    b = make(batchers, BatchConfig(max_batch_size=1, max_latency_ms=0, max_queue=4), gate)

    async def main():
        first = b.submit_future(1)
        wait_until(lambda: b.stats()["in_flight"] == 1)
        queued = b.submit_block([2, 3, 4])
        with pytest.raises(QueueFull):
            b.submit_block([5, 6])            # 3 + 2 rows > 4
        assert b.stats()["queue_depth"] == 3 and b.stats()["rejected"] == 1
        gate.release.set()
        return await asyncio.gather(first, queued)

    assert asyncio.run(main()) == [2, [4, 6, 8]]


def test_model_seconds_sum_the_time_batches_ran(batchers):
    """`model_seconds` (exported as loopstack_serving_model_seconds_total) adds up each batch's run time, so
    model time per batch = model_seconds / batches, apart from the queueing and the HTTP work."""
    def slow(payloads):
        time.sleep(0.05 * len(payloads))
        return payloads
    b = make(batchers, BatchConfig(max_batch_size=2, max_latency_ms=600_000), slow)
    futs = [b.submit(i) for i in range(4)]          # two full batches of 2: 0.1 s each
    assert [f.result(T) for f in futs] == [0, 1, 2, 3]
    s = b.stats()
    assert s["batches"] == 2 and 0.2 <= s["model_seconds"] < 0.2 + 0.5


class Picky:
    """Doubles its payloads; raises ValueError on a batch holding a negative one (a row the model cannot score)."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, payloads):
        self.calls.append(list(payloads))
        if any(p < 0 for p in payloads):
            raise ValueError(f"cannot score {min(payloads)}")
        return [p * 2 for p in payloads]


def _full_batch(b, payloads):
    """Submit `payloads` (an int, or a list for a block) so that they fire as one full batch."""
    async def go():
        futs = [b.submit_block(p) if isinstance(p, list) else b.submit_future(p) for p in payloads]
        return await asyncio.gather(*futs, return_exceptions=True)
    return asyncio.run(go())


def test_a_failing_batch_is_split_so_only_the_bad_request_fails(batchers):
    run = Picky()
    b = make(batchers, BatchConfig(max_batch_size=7, max_latency_ms=600_000), run,   # 7 rows: fires when full
             split_on=lambda e: isinstance(e, ValueError))
    out = _full_batch(b, [1, 2, [3, -4], 5, 6, 7])   # the block [3, -4] is one request: it fails as a whole
    assert out[:2] == [2, 4] and out[3:] == [10, 12, 14]
    assert isinstance(out[2], ValueError)
    assert run.calls[0] == [1, 2, 3, -4, 5, 6, 7] and len(run.calls) <= 1 + 2 * 3   # halves, not one call each
    s = b.stats()
    assert s["batches"] == len(run.calls) and s["failed_batches"] == sum(any(p < 0 for p in c) for c in run.calls)


def test_without_split_on_or_for_other_errors_the_whole_batch_fails(batchers):
    for split_on in (None, lambda e: isinstance(e, KeyError)):
        run = Picky()
        b = make(batchers, BatchConfig(max_batch_size=3, max_latency_ms=600_000), run, split_on=split_on)
        out = _full_batch(b, [1, -2, 3])
        assert all(isinstance(x, ValueError) for x in out) and len(run.calls) == 1
