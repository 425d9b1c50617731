"""The live side of tests/reload/test_under_load.py, in its own process.

It produces candle events on a fixed schedule and consumes the predictions topic, and
records for every candle the time from its send to its prediction's arrival: the service's
bound is end to end (produce -> prediction consumed). In its own process because the
service under test shares a GIL with anything in its own: a producer there would be held
up by the very stalls it should measure (a candle sent late looks fast), and a consumer
there could not see them either.

    python -m tests.reload._loadgen EVENTS.json OUT.json

EVENTS.json: {"bootstrap", "candles_topic", "predictions_topic", "rate", "chunk",
"events": [[key, value], ...]} (str, UTF-8). It prints ``ready`` once its consumer is
positioned, waits for a line on stdin, prints ``live <wall ms>`` as it sends the first
event, and writes OUT.json: {"latency_ms": {"SYMBOL open_time": ms}, "sent_at_ms": {key:
wall-clock ms}, "sent": n, "missing": [...]} once every event's prediction arrived (or after
``timeout_s``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.kafka_helpers import topic_partitions


async def _consume(
    consumer: Any, sent: dict[str, float], arrived: dict[str, float], done: asyncio.Event
) -> None:
    while not done.is_set():
        batch = await consumer.getmany(timeout_ms=100)
        now = time.perf_counter()
        for msgs in batch.values():
            for m in msgs:
                p = orjson.loads(m.value)
                key = f"{p['symbol']} {p['open_time']}"
                if key in sent and key not in arrived:
                    arrived[key] = now


async def main(spec_path: Path, out_path: Path, timeout_s: float = 60.0) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    spec = orjson.loads(spec_path.read_bytes())
    events = [(k.encode(), v.encode()) for k, v in spec["events"]]
    keys = []
    for _, v in events:
        c = orjson.loads(v)
        keys.append(f"{c['symbol']} {c['open_time']}")
    rate, chunk = float(spec["rate"]), int(spec["chunk"])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"],
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=int(spec.get("fetch_max_wait_ms", 5)),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"], acks="all", linger_ms=0, enable_idempotence=False
    )
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    sent_wall: dict[str, float] = {}
    arrived: dict[str, float] = {}
    done = asyncio.Event()
    try:
        topic = spec["predictions_topic"]
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)  # every prediction; only those of our events are timed
        reader = asyncio.create_task(_consume(consumer, sent, arrived, done))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t0 = time.perf_counter()
        print(f"live {time.time() * 1000:.0f}", flush=True)
        for i in range(0, len(events), chunk):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            # Each send is timed as it is handed to the producer; the acks are awaited per
            # chunk (waiting for each single ack would fall behind the schedule).
            futs = []
            for key, (k, v) in zip(keys[i : i + chunk], events[i : i + chunk], strict=True):
                sent[key] = time.perf_counter()
                sent_wall[key] = time.time() * 1000.0
                futs.append(await producer.send(spec["candles_topic"], v, key=k))
            await asyncio.gather(*futs)
        deadline = time.perf_counter() + timeout_s
        while len(arrived) < len(sent) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        done.set()
        await reader
    finally:
        await producer.stop()
        await consumer.stop()
    out = {
        "latency_ms": {k: 1000.0 * (arrived[k] - sent[k]) for k in sent if k in arrived},
        "sent_at_ms": sent_wall,
        "sent": len(sent),
        "missing": [k for k in sent if k not in arrived],
    }
    out_path.write_bytes(orjson.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
