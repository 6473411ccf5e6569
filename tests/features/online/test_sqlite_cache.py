"""`online.cache_mb`: the SQLite page cache of the store's reading/writing connections (what streaming and
materialization write through), set from loopstack.yaml; the memory-mapped serving connection keeps SQLite's."""
from __future__ import annotations

import threading

import pytest

from loopstack.features.online.base import WriteBatch
from loopstack.features.online.sqlite import SQLiteOnlineStore
from loopstack.project import Project

SQLITE_DEFAULT = -2000   # SQLite's own default: 2,000 KiB


def _cache(con) -> int:
    return con.execute("PRAGMA cache_size").fetchone()[0]


@pytest.mark.parametrize("yaml_value, want", [(None, SQLITE_DEFAULT), (16, -16 * 1024), (256, -256 * 1024)])
def test_the_configured_cache_reaches_every_writing_connection(tmp_path, yaml_value, want):
    Project.init(tmp_path / "p", name="p", example=False)
    extra = "" if yaml_value is None else f"  cache_mb: {yaml_value}\n"
    yaml = f"name: p\nonline:\n  backend: sqlite\n  path: data/online.db\n{extra}"
    (tmp_path / "p" / "loopstack.yaml").write_text(yaml)
    project = Project(tmp_path / "p")
    store = project.online_store
    assert isinstance(store, SQLiteOnlineStore)
    store.write(WriteBatch(puts={"v|1": {"f": b"x"}}))
    assert _cache(store._con()) == want
    other: list[int] = []    # a connection is per thread: a writer thread gets the same setting
    t = threading.Thread(target=lambda: other.append(_cache(store._con())))
    t.start()
    t.join()
    assert other == [want]
    assert store.lookup(["v|1"]) == {"v|1": {"f": b"x"}}
    assert _cache(store._con(mapped=True)) == SQLITE_DEFAULT   # serving reads go through the memory map
    project.close()
