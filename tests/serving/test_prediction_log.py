"""The prediction log writer: batches in the background, blocks (never drops) when briefly full,
flushes everything on close, spills what the event log refuses."""
from __future__ import annotations

import json
import threading
import time

from loopstack.serving.prediction_log import PredictionLog, sampled


class FakeLog:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail, self.batches, self.topics = delay, fail, [], []
        self.gate = threading.Event()
        self.gate.set()

    def create_topic(self, config, exist_ok=True):
        self.topics.append(config)

    def append(self, topic, records):
        self.gate.wait()
        time.sleep(self.delay)
        if self.fail:
            raise OSError("disk full")
        self.batches.append((topic, list(records)))


def test_records_are_written_in_batches_and_flushed_on_close():
    log = FakeLog()
    plog = PredictionLog(log, batch_size=50, flush_interval_s=0.05)
    assert log.topics[0].name == "predictions" and log.topics[0].key_field == "model"
    for i in range(120):
        assert plog.put({"request_id": str(i), "model": "m"})
    plog.close()
    written = [r["request_id"] for _, b in log.batches for r in b]
    assert written == [str(i) for i in range(120)] and max(len(b) for _, b in log.batches) <= 50
    assert plog.stats()["written"] == 120 and plog.stats()["dropped"] == 0


def test_a_full_queue_blocks_briefly_instead_of_dropping():
    log = FakeLog()
    log.gate.clear()                       # the writer is stuck on its first append for 0.3 s
    plog = PredictionLog(log, max_queue=5, batch_size=1, flush_interval_s=0.01, block_timeout_s=5)
    threading.Timer(0.3, log.gate.set).start()
    t = time.monotonic()
    for i in range(8):                     # 1 with the writer + 5 queued: the rest wait for room
        assert plog.put({"request_id": str(i)})
    assert 0.2 < time.monotonic() - t < 4
    plog.close()
    assert plog.stats()["blocked"] >= 1 and plog.stats()["dropped"] == 0
    assert [r["request_id"] for _, b in log.batches for r in b] == [str(i) for i in range(8)]


def test_put_many_takes_what_fits_at_once_and_waits_for_room_for_the_rest():
    import asyncio
    log = FakeLog()
    log.gate.clear()                       # the writer is stuck on its first append for 0.3 s
    plog = PredictionLog(log, max_queue=6, batch_size=4, flush_interval_s=0.01, block_timeout_s=5)
    threading.Timer(0.3, log.gate.set).start()
    first = [{"request_id": str(i)} for i in range(4)]
    second = [{"request_id": str(i)} for i in range(4, 12)]

    async def main():
        a = await plog.put_many_async(first)
        time.sleep(0.1)                    # the writer took the first 4 and is stuck: 6 slots free
        return a, await plog.put_many_async(second)   # 6 fit now, 2 wait for room

    t = time.monotonic()
    assert asyncio.run(main()) == (4, 8)
    assert time.monotonic() - t > 0.2
    plog.close()
    assert plog.stats()["accepted"] == 12 and plog.stats()["dropped"] == 0 and plog.stats()["blocked"] >= 1
    assert [r["request_id"] for _, b in log.batches for r in b] == [str(i) for i in range(12)]


def test_what_the_log_refuses_at_close_is_spilled_to_a_file(tmp_path):
    log = FakeLog(fail=True)
    spill = tmp_path / "spill.jsonl"
    plog = PredictionLog(log, flush_interval_s=0.01, spill_path=spill)
    for i in range(3):
        plog.put({"request_id": str(i)})
    time.sleep(0.1)
    plog.close()
    lines = [json.loads(x) for x in spill.read_text().splitlines()]
    assert sorted(x["request_id"] for x in lines) == ["0", "1", "2"] and plog.stats()["spilled"] == 3


def test_feature_sampling_is_deterministic_per_request():
    ids = [f"r{i}" for i in range(2000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert picked == [i for i in ids if sampled(i, 0.1)] and 120 < len(picked) < 280
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])


def test_deferred_records_are_made_after_the_caller_yields_and_flush_waits_for_them():
    """`defer` (the server's path: records are built after the answer is written) builds nothing until the
    event loop's next turn, counts the records against the bound meanwhile, and `flush` waits for them."""
    import asyncio
    log = FakeLog()
    plog = PredictionLog(log, max_queue=10, batch_size=100, flush_interval_s=0.01)
    made: list[int] = []

    def build():
        made.append(1)
        return [{"request_id": "a", "model": "m"}, {"request_id": "b", "model": "m"}]

    async def main():
        assert plog.has_room(10) and not plog.has_room(11)
        plog.defer(build, 2)
        assert made == [] and plog.stats()["accepted"] == 0
        assert plog.has_room(8) and not plog.has_room(9)      # room held for the records not built yet
        plog.defer(lambda: 1 / 0, 1)                           # a failing build is logged, not raised
        await asyncio.sleep(0)
        assert made == [1] and plog.stats()["accepted"] == 2 and plog.has_room(8) and not plog.has_room(9)

    asyncio.run(main())
    plog.flush(5)
    assert plog.stats()["written"] == 2
    plog.close()
    assert [r["request_id"] for _, b in log.batches for r in b] == ["a", "b"]
