"""The bulk materializer's writer thread: store writes applied in order, off the thread that builds them."""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from loopstack.features.online.base import WriteBatch
from loopstack.threads import name_os_thread


class OrderedWriter:
    """One thread applying the batches' writes in order, at most one waiting: Python builds batch
    k+1 while the store applies batch k. An error in a write is raised in the caller (at the next
    `put` or `drain`), and nothing after a failed write is written."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.todo: "queue.Queue" = queue.Queue(maxsize=1)
        self.done: "queue.Queue" = queue.Queue()
        self.error: BaseException | None = None
        self.inflight = 0
        self.thread = threading.Thread(target=self._run, name="loopstack-bulk-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        name_os_thread("bulk-writer")
        while True:
            item = self.todo.get()
            if item is None:
                return
            res, batch, cols = item
            if self.error is None:
                try:
                    if cols is not None:
                        self.store.write_columns(batch, *cols)
                    else:
                        self.store.write(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self.error = exc
            self.done.put(res if self.error is None else None)

    def _collect(self, block: bool) -> Iterator[Any]:
        while self.inflight:
            try:
                res = self.done.get(block=block)
            except queue.Empty:
                return
            self.inflight -= 1
            if self.error is not None:
                raise self.error
            yield res
            block = False

    def put(self, res: Any, batch: WriteBatch, cols: tuple | None) -> Iterator[Any]:
        """Queue `batch` (`cols`: a `write_columns` payload); yields the `res` of every batch written so far."""
        yield from self._collect(block=False)
        if self.error is not None:
            raise self.error
        self.todo.put((res, batch, cols))  # blocks while one batch is already waiting
        self.inflight += 1
        yield from self._collect(block=False)

    def drain(self) -> Iterator[Any]:
        """Wait for every queued batch; yields their `res` in order."""
        while self.inflight:
            yield from self._collect(block=True)

    def close(self) -> None:
        """Stop the thread (after the batches already queued)."""
        self.todo.put(None)
        self.thread.join()
