"""The committer without a broker: what is committed, what a failure does to the book."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from stream_infer.kafka import BrokerHealth, Committer, Observer, PartitionBook
from stream_infer.kafka._committer import to_commit

T = "candles"
P0, P1 = TopicPartition(T, 0), TopicPartition(T, 1)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition], error: Exception | None = None) -> None:
        self.assigned = assigned
        self.error = error
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.error is not None:
            raise self.error
        self.commits.append(dict(offsets))


def committer(consumer: Any) -> tuple[Committer, PartitionBook, Observer]:
    book, obs = PartitionBook(), Observer()
    c = Committer(book, BrokerHealth("nowhere:9092", obs), obs)
    c.consumer = consumer
    book.assign(consumer.assignment() if consumer is not None else set(), {}, held=())
    book.settle(book.assigned)
    return c, book, obs


def test_the_next_offset_of_assigned_partitions_only() -> None:
    assert to_commit(T, {0: 9, 1: 4}, {P0}) == {P0: 10}
    assert to_commit(T, {}, {P0}) == {}


async def test_a_commit_moves_the_book() -> None:
    consumer = FakeConsumer({P0, P1})
    c, book, obs = committer(consumer)
    assert await c.commit(T, {0: 9, 1: 4, 2: 7}) == {P0: 10, P1: 5}
    assert consumer.commits == [{P0: 10, P1: 5}]
    assert book.next_offsets() == {P0: 10, P1: 5}
    assert obs.stats.commits == 1 and obs.stats.commit_failures == 0


async def test_nothing_ours_nothing_committed() -> None:
    consumer = FakeConsumer({P1})
    c, _, obs = committer(consumer)
    assert await c.commit(T, {0: 9}) == {}
    assert consumer.commits == [] and obs.stats.commits == 0


async def test_a_failed_commit_is_counted_and_leaves_the_book_alone() -> None:
    for error in (CommitFailedError("rebalanced"), KafkaConnectionError("gone")):
        consumer = FakeConsumer({P0}, error)
        c, book, obs = committer(consumer)
        assert await c.commit(T, {0: 9}) == {}
        assert book.next_offset(P0) == 0, "still the offset it was assigned at"
        assert (obs.stats.commits, obs.stats.commit_failures) == (0, 1)


async def test_no_consumer_no_commit() -> None:
    c, _, obs = committer(None)
    assert await c.commit(T, {0: 1}) == {} and obs.stats.commits == 0
