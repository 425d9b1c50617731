"""Kafka edges: the brokers we start (Apache Kafka, the embedded Tansu), producing candles, and the ``stream-infer run`` service loop.

The pure core (``stream_infer.pipeline``) does the work; this package moves bytes and
offsets: consumer group -> ``Pipeline.process`` -> producer -> commit. See docs/service.md.
"""

from __future__ import annotations

from stream_infer.kafka._apache import KAFKA_VERSION, ApacheKafka, KafkaNode, kafka_libs
from stream_infer.kafka._broker import EmbeddedBroker, free_port, tansu_binary, wait_for_broker
from stream_infer.kafka._client import client_kwargs
from stream_infer.kafka._history import HistoryResult, HistorySource, KafkaHistory, collect_history
from stream_infer.kafka._produce import (
    frame_candles,
    klines_events,
    make_producer,
    produce_events,
    produce_files,
)
from stream_infer.kafka._service import READY_INDEX, EnsembleProvider, Service, history_need
from stream_infer.kafka._stats import LatencyWindow, Stats
from stream_infer.kafka._stream_history import (
    LazyHistory,
    Resolved,
    StreamHistorySource,
    not_covered_reason,
)
from stream_infer.kafka._topics import create_topics

__all__ = [
    "KAFKA_VERSION",
    "READY_INDEX",
    "ApacheKafka",
    "EmbeddedBroker",
    "EnsembleProvider",
    "HistoryResult",
    "HistorySource",
    "KafkaHistory",
    "KafkaNode",
    "LatencyWindow",
    "LazyHistory",
    "Resolved",
    "Service",
    "Stats",
    "StreamHistorySource",
    "client_kwargs",
    "collect_history",
    "create_topics",
    "frame_candles",
    "free_port",
    "history_need",
    "kafka_libs",
    "klines_events",
    "make_producer",
    "not_covered_reason",
    "produce_events",
    "produce_files",
    "tansu_binary",
    "wait_for_broker",
]
