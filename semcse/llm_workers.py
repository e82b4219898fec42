"""Worker threads for llm.generate that stop when asked: a Ctrl-C ends a run within a moment.

ThreadPoolExecutor is not used: the interpreter joins its threads at exit, so a Ctrl-C waited for
every request in flight (llm_timeout x llm_http_retries, minutes on a slow server). Here the workers
are daemon threads (never joined: a request in flight is simply dropped, its paper asked again on
the next run), a stop event is checked between attempts (llm.Caller), and Ctrl-C sets that event
instead of raising in the middle of a write.
"""
from __future__ import annotations

import queue
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterable, Iterator

POLL_SECONDS = 0.2  # how often the main thread looks at the stop event while it waits for results


def completed(pool: Any, fn: Callable, items: Iterable, window: int,
              stop: threading.Event | None = None) -> Iterator[Future]:
    """Futures of fn(item) as they finish, with at most `window` submitted and unfinished at a time, so
    items are drawn from the stream only as workers free up. Ends early, within POLL_SECONDS, once
    `stop` is set; results already finished by then are still yielded."""
    stop = stop or threading.Event()
    pending: set[Future] = set()
    for item in items:
        if stop.is_set():
            return
        pending.add(pool.submit(fn, item))
        while len(pending) >= window and not stop.is_set():
            finished, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            yield from finished
    while pending and not stop.is_set():
        finished, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
        yield from finished


class DaemonPool:
    """n daemon threads running submitted calls; `submit` returns a Future, like ThreadPoolExecutor's."""

    def __init__(self, workers: int):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"llm-worker-{i}", daemon=True).start()

    def submit(self, fn: Callable, item: Any) -> Future:
        future: Future = Future()
        self.jobs.put((future, fn, item))
        return future

    def shutdown(self) -> None:
        """Cancel what is queued and let idle workers end; busy ones end after their call (not waited for)."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(self.workers):
            self.jobs.put(None)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, fn, item = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(item))
            except BaseException as e:  # noqa: BLE001 (handed to the main thread, as ThreadPoolExecutor does)
                future.set_exception(e)


class StopOnCtrlC:
    """While active (a `with` block, main thread only), SIGINT sets `stop` instead of raising
    KeyboardInterrupt, so the main thread finishes its current write and saves what is done; a second
    Ctrl-C while it saves only prints a line (no traceback, no half-finished compaction)."""

    def __init__(self, stop: threading.Event):
        self.stop, self.fired, self.previous = stop, False, None

    def __enter__(self) -> "StopOnCtrlC":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        print("\nstopping: requests in flight are dropped, saving what is done..." if not self.fired else
              "still saving what is done; one moment", file=sys.stderr, flush=True)
        self.fired = True
        self.stop.set()
