"""Committing a batch: ``offset + 1`` per partition still ours, after everything it produced is acked.

A failed commit is not retried on its own: after a rebalance the new owner replays from
the last commit; after any other failure the next batch's commit covers these offsets too.
Either way the records are published again at most once more (at-least-once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from stream_infer.kafka._book import PartitionBook
from stream_infer.kafka._health import BrokerHealth
from stream_infer.kafka._observer import Observer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["Committer", "to_commit"]

log = logging.getLogger("stream_infer.service")


def to_commit(
    topic: str, offsets: Mapping[int, int], assigned: set[TopicPartition]
) -> dict[TopicPartition, int]:
    """The next offsets to commit for the last processed ``offsets`` (partition -> offset),
    left out the partitions no longer ``assigned``."""
    from aiokafka import TopicPartition

    return {tp: o + 1 for p, o in offsets.items() if (tp := TopicPartition(topic, p)) in assigned}


class Committer:
    """Commits with ``consumer`` (set by the service once connected) and books what it did."""

    def __init__(self, book: PartitionBook, health: BrokerHealth, observer: Observer) -> None:
        self.consumer: AIOKafkaConsumer | None = None
        self._book = book
        self._health = health
        self._observer = observer

    async def commit(self, topic: str, offsets: Mapping[int, int]) -> dict[TopicPartition, int]:
        """Commit past ``offsets`` (the last processed offset per partition of ``topic``);
        returns what was committed (empty when nothing was, or the commit failed)."""
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        consumer = self.consumer
        if consumer is None:
            return {}
        commit = to_commit(topic, offsets, consumer.assignment())
        if not commit:
            return {}
        try:
            async with self._health.stall_watch("commit", "the offset commit"):
                await consumer.commit(commit)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions: the new owner replays from the last commit.
            self._observer.commit_failed()
            log.warning("commit of %s failed (%s); the new owner replays them", commit, exc)
            return {}
        except KafkaError as exc:
            self._observer.commit_failed()
            log.warning("commit of %s failed: %r; will be retried with the next batch", commit, exc)
            return {}
        self._observer.committed()
        self._book.committed(commit)
        return commit
