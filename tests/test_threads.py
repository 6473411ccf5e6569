"""OS thread names: what `top -H` and /proc show for loopstack's threads."""
from __future__ import annotations

import threading
from pathlib import Path

from loopstack.threads import name_os_thread


def _comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_a_thread_names_itself_in_the_os():
    got: dict = {}

    def work() -> None:
        got["set"] = name_os_thread()
        got["comm"] = _comm(threading.get_native_id())

    t = threading.Thread(target=work, name="batcher-spam/v12-and-more")
    t.start()
    t.join()
    assert got == {"set": True, "comm": "batcher-spam/v1"}     # Linux keeps 15 bytes
    assert _comm(threading.get_native_id()) != "batcher-spam/v1"   # only the calling thread


def test_the_batcher_worker_is_named(tmp_path):
    from loopstack.serving.batcher import BatchConfig, DynamicBatcher
    seen: list = []
    b = DynamicBatcher(BatchConfig(4, 1.0), lambda rows: [seen.append(_comm(threading.get_native_id())) or r
                                                          for r in rows], name="m/v3")
    try:
        assert b.submit(7).result(5) == 7
    finally:
        b.close()
    assert seen == ["batcher-m/v3"]
