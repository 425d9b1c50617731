"""The partition book: which partitions are ours, which are warm, where each one resumes.

Pure bookkeeping, no broker: the service tells it what the rebalance listener and the
commits say, and asks it which records may be processed. Its rules:

- a partition is *warm* (its records may be processed) only while assigned, once its
  streams are rebuilt (or were current already);
- ``next_offset`` is the offset after the last commit of ours, kept only for assigned
  partitions;
- a partition that comes back to us with nobody having committed since (its committed
  offset is still our ``next_offset``, > 0) and whose streams we still hold stays warm:
  nothing to rebuild;
- ``ready`` once the first assignment is settled and every assigned partition is warm.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka import TopicPartition

__all__ = ["PartitionBook"]


class PartitionBook:
    """Assigned, warm, next offsets and revoked partitions, kept consistent by its methods."""

    def __init__(self) -> None:
        self._assigned: set[TopicPartition] = set()
        self._warm: set[TopicPartition] = set()
        self._next: dict[TopicPartition, int] = {}
        self._revoked: set[TopicPartition] = set()
        self._settled_once = False

    # -- reading -------------------------------------------------------------------------

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The last assignment, less what was revoked since."""
        return frozenset(self._assigned)

    @property
    def warm(self) -> frozenset[TopicPartition]:
        return frozenset(self._warm)

    @property
    def revoked(self) -> frozenset[TopicPartition]:
        """Revoked and not assigned to us again since."""
        return frozenset(self._revoked)

    @property
    def settled_once(self) -> bool:
        """An assignment has been settled (its partitions rebuilt or found current)."""
        return self._settled_once

    def is_warm(self, tp: TopicPartition) -> bool:
        return tp in self._warm

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The next offset to process (the committed one), None when not ours."""
        return self._next.get(tp)

    def next_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._next)

    def ready(self, assignment: Iterable[TopicPartition]) -> bool:
        """The first assignment is settled and every partition of ``assignment`` is warm."""
        return self._settled_once and set(assignment) <= self._warm

    def warm_among(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        return set(tps) & self._warm

    # -- what happened -------------------------------------------------------------------

    def revoke(self, tps: Collection[TopicPartition]) -> None:
        """The group took these: no record of theirs is processed until assigned again."""
        gone = set(tps)
        self._warm -= gone
        self._assigned -= gone
        self._revoked |= gone

    def assign(
        self,
        tps: Collection[TopicPartition],
        committed: Mapping[TopicPartition, int | None],
        held: Collection[int],
    ) -> dict[TopicPartition, int]:
        """A new assignment: returns the partitions to rebuild, each with the offset it
        resumes at (its committed offset, 0 when none). ``held``: partitions whose streams
        are still in memory; one of them resuming where we left it stays warm."""
        self._assigned = set(tps)
        self._revoked -= self._assigned
        todo: dict[TopicPartition, int] = {}
        for tp in sorted(self._assigned, key=lambda t: (t.topic, t.partition)):
            got = committed.get(tp)
            start = got if got is not None else 0
            if tp.partition in held and self._next.get(tp) == start and start > 0:
                # Ours before the rebalance and nobody committed since: state is current.
                self._warm.add(tp)
                continue
            todo[tp] = start
            self._next[tp] = start
        return todo

    def settle(self, rebuilt: Iterable[TopicPartition]) -> None:
        """The assignment's rebuild is over: ``rebuilt`` are warm; the rest warm up later
        (``mark_warm``). Offsets of partitions no longer ours are forgotten."""
        self._warm = (self._warm | set(rebuilt)) & self._assigned
        for tp in list(self._next):
            if tp not in self._assigned:
                del self._next[tp]
        self._settled_once = True

    def mark_warm(self, tp: TopicPartition) -> None:
        """A partition of the consumer's assignment rebuilt late, before its first records
        (the listener's rebuild failed, or has not run yet): it is ours and warm."""
        self._assigned.add(tp)
        self._revoked.discard(tp)
        self._warm.add(tp)

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """These next offsets were committed."""
        self._next.update(offsets)
