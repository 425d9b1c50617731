"""Create topics with a given partition count (explicitly: auto-created topics get the broker's default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream_infer._errors import BrokerError

__all__ = ["create_topics"]

_TOPIC_ALREADY_EXISTS = 36


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication: int = 1,
    client: Mapping[str, Any] | None = None,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create each ``{name: partitions}`` topic that does not exist yet; returns those created.

    A topic that exists is left as it is (its partition count is not changed). ``configs``:
    topic settings for each new topic (e.g. ``{"max.message.bytes": "8388608"}``).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    kw = dict(client or {})
    kw["bootstrap_servers"] = bootstrap
    admin = AIOKafkaAdminClient(**kw)
    try:
        await admin.start()
    except Exception as exc:
        await admin.close()
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        resp = await admin.create_topics(
            [
                NewTopic(name, n, replication, topic_configs=dict(configs or {}))
                for name, n in topics.items()
            ]
        )
    finally:
        await admin.close()
    created: list[str] = []
    for name, code, message in resp.topic_errors:
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            raise BrokerError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())
    return created
