"""Group commit: what arrives while a batch is being committed goes into the next batch.

Webhooks arrive one per HTTP request, many at once under load. Committing each in its own transaction
costs a dozen round trips and a WAL flush per delivery; `GroupCommit` hands them to a few committer
threads instead, each taking everything waiting (up to `max_batch`) and applying it with one call —
`WebhookProcessor.receive_many`, one transaction. Nobody waits for a batch to fill: a lone delivery is
applied at once, alone; batches grow only when deliveries queue up behind a commit in progress.

Each submitter gets its own answer once its batch has committed (the contract: a 200 means stored).
If the batch as a whole fails, each of its items is applied again on its own, so one delivery the
database refuses fails only itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger("integration.intake")

Item = TypeVar("Item")
Answer = TypeVar("Answer")

_STOP = object()


class GroupCommit(Generic[Item, Answer]):
    """Applies submitted items in batches on `committers` threads (started on first use)."""

    def __init__(self, apply_many: Callable[[Sequence[Item]], list[Answer]], *, max_batch: int = 64,
                 committers: int = 2, name: str = "group-commit") -> None:
        if max_batch < 1 or committers < 1:
            raise ValueError("max_batch and committers must be at least 1")
        self._apply_many = apply_many
        self.max_batch = max_batch
        self.committers = committers
        self.name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, item: Item) -> Future[Answer]:
        """Queue `item`; the future holds its answer (or its error) once its batch is done."""
        future: Future[Answer] = Future()
        with self._lock:
            if not self._threads:
                self._threads = [threading.Thread(target=self._run, name=f"{self.name}-{n}", daemon=True)
                                 for n in range(self.committers)]
                for thread in self._threads:
                    thread.start()
            self._queue.put((item, future))
        return future

    def close(self, timeout_s: float = 30.0) -> None:
        """Apply what is queued, then stop the committers (a later `submit` starts them again: an app is
        started and stopped more than once in tests)."""
        with self._lock:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._queue.put(_STOP)
        for thread in threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is _STOP:
                    stop = True
                    break
                batch.append(following)
            self._apply(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _apply(self, batch: list[tuple[Item, Future[Answer]]]) -> None:
        batch = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            answers = self._apply_many([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} items")
        except BaseException as error:  # noqa: BLE001 — handed to the submitters, never swallowed
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            log.warning("a batch failed as a whole; applying its items one by one",
                        extra={"batch": len(batch), "error": f"{type(error).__name__}: {error}"[:500]})
            for item, future in batch:
                try:
                    future.set_result(self._apply_many([item])[0])
                except BaseException as alone:  # noqa: BLE001 — this item's own failure, to its submitter
                    future.set_exception(alone)
            return
        for (_, future), answer in zip(batch, answers, strict=True):  # lengths checked above
            future.set_result(answer)
