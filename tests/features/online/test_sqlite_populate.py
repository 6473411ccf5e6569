"""`online.populate`: a serving reader of the SQLite online store maps the whole file at its first `lookup`
(`populate_map`, MADV_POPULATE_READ), so later first touches of pages take no page fault; off, only the pages
read are mapped."""
from __future__ import annotations

import os

import pytest

from loopstack.features.online.sqlite import SQLiteOnlineStore, populate_map


def _mapped_kib(path: str) -> int:
    """Resident KiB of this process's memory maps of `path` (from /proc/self/smaps)."""
    real, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and head[0][0] in "0123456789abcdef" and ":" in head[3]:
                inside = len(head) == 6 and head[5].strip() == real
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("populate") / "online.db")
    store = SQLiteOnlineStore(path, populate=False)
    con = store._con()
    con.execute("BEGIN")
    con.executemany("INSERT OR REPLACE INTO kv(hash, field, value) VALUES (?, ?, ?)",
                    [(f"h{i}", "f", os.urandom(400)) for i in range(20_000)])
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return path


@pytest.mark.parametrize("populate", [True, False])
def test_the_first_lookup_maps_the_whole_file_only_when_asked(db, populate):
    size_kib = os.path.getsize(db) // 1024
    assert size_kib > 8_000
    store = SQLiteOnlineStore(db, populate=populate)
    try:
        got = store.lookup(["h7"])
        assert len(got["h7"]["f"]) == 400
        assert (store.populating is not None) is populate
        if populate:
            store.populating.join(30)
        mapped = _mapped_kib(db)
        if populate:
            assert mapped >= 0.95 * size_kib
            assert store.lookup(["h19999"])["h19999"]["f"]        # reads go on as before
        else:
            assert 0 < mapped < 0.2 * size_kib
    finally:
        store.close()


def test_populate_map_of_a_file_not_mapped_does_nothing(tmp_path):
    assert populate_map(str(tmp_path / "nothing.db")) == 0
