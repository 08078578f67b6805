"""The sink interface and the thread that feeds sinks off the inference loop."""

from __future__ import annotations

import abc
import logging
import queue
import threading

from pi_daemon.events import EventRecord

log = logging.getLogger(__name__)


class Sink(abc.ABC):
    """Receives every event record, in sequence order. Methods run on the dispatcher
    thread, never the inference loop's."""

    name = "sink"

    @abc.abstractmethod
    def on_event(self, record: EventRecord) -> None: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        pass

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


_STOP = object()

# The sink thread sleeps this long between batches instead of waking for every result.
# Woken per result, it ran right when the loop was between invoke() calls and needed the
# GIL (the bench showed preprocessing several times slower); in batches it mostly runs
# while the loop is inside invoke(), with the GIL released. 50 ms of delivery delay is
# nothing to a log line or a JSONL reader.
BATCH_INTERVAL_S = 0.05


class SinkDispatcher:
    """Hands events to sinks on one background thread through a bounded queue.

    The loop only does a non-blocking put: if a sink is stuck on slow storage the
    queue fills and further events are dropped and counted, instead of stalling
    inference (and with it the watchdog). `close()` drains what is queued.
    """

    def __init__(
        self, sinks: list[Sink], capacity: int = 1024, batch_interval_s: float = BATCH_INTERVAL_S
    ) -> None:
        self.sinks = sinks
        self.batch_interval_s = batch_interval_s
        self._closing = threading.Event()  # cuts the between-batch sleep short on close()
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self.dropped_events = 0
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="sinks", daemon=True)
        self._thread.start()

    def submit(self, event: EventRecord) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped_events += 1
            if not self._warned:
                self._warned = True
                log.warning("sinks are too slow; dropping events (counted in summaries)")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            while event is not _STOP:
                self._deliver(event)
                try:
                    event = self._queue.get_nowait()
                except queue.Empty:
                    break
            if event is _STOP:
                return
            if self.batch_interval_s > 0:
                self._closing.wait(self.batch_interval_s)

    def _deliver(self, event: object) -> None:
        assert isinstance(event, EventRecord)
        for sink in self.sinks:
            try:
                sink.on_event(event)
            except Exception:
                log.exception("sink %s failed on an event", sink.name)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver everything queued, then flush and close every sink."""
        if self._thread.is_alive():
            self._closing.set()
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("sinks did not drain within %.1f s; some events are lost", timeout)
        for sink in self.sinks:
            try:
                sink.flush()
                sink.close()
            except Exception as error:
                log.error("closing sink %s failed: %s", sink.name, error)
