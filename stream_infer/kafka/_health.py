"""Broker health: whether Kafka answers, the idle probe, and the watch on slow sends and commits.

aiokafka retries quietly: a fetch returns nothing, a send or commit just waits. So the
service tells "caught up" from "the broker is gone" itself: an empty poll probes the end
offsets (at most every ``probe_interval_s``), and a send or commit waiting longer than
``2 * probe_interval_s`` marks the broker unreachable until it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from stream_infer.kafka._observer import Observer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["BrokerHealth"]

log = logging.getLogger("stream_infer.service")

# How long the idle probe waits for the broker's answer.
_PROBE_TIMEOUT_S = 2.0


class BrokerHealth:
    """Reachability of the broker at ``bootstrap``, reported to ``observer``."""

    def __init__(
        self,
        bootstrap: str,
        observer: Observer,
        *,
        probe_interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self.probe_interval_s = probe_interval_s
        self._observer = observer
        self._monotonic = monotonic
        self._reachable = False
        self._down_since: float | None = None
        self._last_probe = 0.0

    @property
    def reachable(self) -> bool:
        """The broker answered the last request (a fetch with records, or the idle probe)."""
        return self._reachable

    def mark(self, ok: bool) -> None:
        """The broker answered (``ok``) or did not; logs when it comes back."""
        now = self._monotonic()
        if ok and not self._reachable and self._down_since is not None:
            log.info(
                "Kafka at %s answers again after %.1f s", self.bootstrap, now - self._down_since
            )
        if not ok and self._down_since is None:
            self._down_since = now
        if ok:
            self._down_since = None
        self._reachable = ok
        self._observer.reachable(ok)

    async def probe(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int] | None:
        """When idle, ask the broker for the end offsets of the assignment (at most every
        ``probe_interval_s``): an empty poll alone cannot tell "caught up" from "the broker
        is gone". Returns the end offsets, None when it did not ask or got no answer."""
        from aiokafka.errors import KafkaError

        now = self._monotonic()
        if now - self._last_probe < self.probe_interval_s:
            return None
        self._last_probe = now
        tps = list(consumer.assignment())
        try:
            if tps:
                ends = await asyncio.wait_for(consumer.end_offsets(tps), _PROBE_TIMEOUT_S)
            else:
                await asyncio.wait_for(consumer.topics(), _PROBE_TIMEOUT_S)
                ends = {}
        except (KafkaError, TimeoutError, OSError) as exc:
            if self._reachable:
                self._observer.fetch_failed()
                log.warning(
                    "Kafka at %s does not answer (%r); not ready until it does",
                    self.bootstrap,
                    exc,
                )
            self.mark(False)
            return None
        self.mark(True)
        return dict(ends)

    @contextlib.asynccontextmanager
    async def stall_watch(self, op: str, what: str) -> AsyncIterator[None]:
        """Around a wait on the broker: when it lasts longer than ``2 * probe_interval_s``, log
        it, count it under ``op`` and mark the broker unreachable (aiokafka retries quietly);
        when it then completes, the broker is back."""
        stalled = False
        bound = 2 * self.probe_interval_s

        async def watch() -> None:
            nonlocal stalled
            await asyncio.sleep(bound)
            stalled = True
            self._observer.stalled(op)
            log.warning(
                "%s not acknowledged after %.0f s; Kafka at %s does not answer, waiting",
                what,
                bound,
                self.bootstrap,
            )
            self.mark(False)

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
        if stalled:
            self.mark(True)
