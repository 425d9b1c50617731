"""The partition book's rules, without a broker: assigned, warm, next offsets, revoked."""

from __future__ import annotations

from aiokafka import TopicPartition

from stream_infer.kafka import PartitionBook

T = "candles"
P0, P1, P2 = (TopicPartition(T, p) for p in range(3))


def test_not_ready_before_the_first_assignment_is_settled() -> None:
    book = PartitionBook()
    assert not book.ready([]) and not book.settled_once
    todo = book.assign({P0, P1}, {P0: None, P1: 7}, held=())
    assert todo == {P0: 0, P1: 7}, "no commit: from offset 0; else from the committed offset"
    assert book.next_offsets() == {P0: 0, P1: 7}
    assert not book.ready([P0, P1]), "assigned, not yet rebuilt"
    book.settle({P0, P1})
    assert book.ready([P0, P1]) and book.settled_once
    assert book.ready([]), "an empty assignment is ready once one was settled"


def test_a_partition_whose_rebuild_failed_stays_cold_until_marked_warm() -> None:
    book = PartitionBook()
    book.assign({P0, P1}, {P0: 5, P1: 9}, held=())
    book.settle({P0})
    assert book.is_warm(P0) and not book.is_warm(P1)
    assert not book.ready([P0, P1])
    book.mark_warm(P1)
    assert book.ready([P0, P1]) and book.warm == {P0, P1}


def test_revoke_takes_warmth_and_ownership() -> None:
    book = PartitionBook()
    book.assign({P0, P1}, {}, held=())
    book.settle({P0, P1})
    book.revoke([P1])
    assert book.warm == {P0} and book.assigned == {P0} and book.revoked == {P1}
    assert not book.ready([P0, P1])
    book.assign({P0, P1}, {P0: 0, P1: 0}, held={0, 1})
    assert book.revoked == frozenset(), "assigned again: no longer revoked"


def test_a_partition_coming_back_unchanged_stays_warm() -> None:
    book = PartitionBook()
    book.assign({P0, P1}, {P0: 10, P1: 20}, held=())
    book.settle({P0, P1})
    book.committed({P0: 15, P1: 25})
    book.revoke([P0, P1])
    # P0: nobody committed since and its streams are held -> warm, nothing to rebuild.
    # P1: another member committed 30 -> rebuild from there.
    todo = book.assign({P0, P1}, {P0: 15, P1: 30}, held={0, 1})
    assert todo == {P1: 30}
    assert book.is_warm(P0) and book.next_offset(P1) == 30


def test_coming_back_is_rebuilt_when_streams_are_gone_or_nothing_was_committed() -> None:
    book = PartitionBook()
    book.assign({P0, P1}, {}, held=())
    book.settle({P0, P1})
    book.committed({P0: 4})
    book.revoke([P0, P1])
    todo = book.assign({P0, P1}, {P0: 4, P1: None}, held={1})
    assert todo == {P0: 4, P1: 0}, "P0's streams were dropped; P1 has no commit (offset 0)"


def test_settle_forgets_partitions_no_longer_ours() -> None:
    book = PartitionBook()
    book.assign({P0, P1, P2}, {P0: 1, P1: 2, P2: 3}, held=())
    book.settle({P0, P1, P2})
    book.revoke([P0, P1, P2])
    book.assign({P2}, {P2: 3}, held={2})
    book.settle(set())
    assert book.next_offsets() == {P2: 3} and book.warm == {P2}
    assert book.next_offset(P0) is None
    # a rebuilt partition that the assignment does not hold is not warm
    book.assign({P0}, {P0: 0}, held=())
    book.settle({P0, P1})
    assert book.warm == {P0}


def test_commits_move_next_offsets() -> None:
    book = PartitionBook()
    book.assign({P0}, {P0: 3}, held=())
    book.settle({P0})
    book.committed({P0: 11})
    assert book.next_offset(P0) == 11
    assert book.warm_among([P0, P1]) == {P0}
