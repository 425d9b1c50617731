"""Kafka edges: the brokers we start (Apache Kafka, the embedded Tansu), producing candles, and the ``stream-infer run`` service loop.

The pure core (``stream_infer.pipeline``) does the work; this package moves bytes and
offsets: consumer group -> ``Pipeline.process`` -> producer -> commit. ``Service`` wires
its parts: ``PartitionBook`` (which partitions are ours, warm, where they resume),
``BrokerHealth``, ``Publisher``, ``Committer``, ``Rebuilder``, ``BatchProcessor`` and one
``Observer`` for every count. See docs/service.md.
"""

from __future__ import annotations

from stream_infer.kafka._apache import KAFKA_VERSION, ApacheKafka, KafkaNode, kafka_libs
from stream_infer.kafka._book import PartitionBook
from stream_infer.kafka._broker import EmbeddedBroker, free_port, tansu_binary, wait_for_broker
from stream_infer.kafka._client import client_kwargs
from stream_infer.kafka._committer import Committer
from stream_infer.kafka._factory import HotReload, ServiceOptions, build_service
from stream_infer.kafka._health import BrokerHealth
from stream_infer.kafka._history import HistoryResult, HistorySource, KafkaHistory, collect_history
from stream_infer.kafka._observer import (
    BatchClock,
    BatchDone,
    Observer,
    PrometheusObserver,
    observer_for,
)
from stream_infer.kafka._processor import BatchProcessor
from stream_infer.kafka._produce import (
    frame_candles,
    klines_events,
    make_producer,
    produce_events,
    produce_files,
)
from stream_infer.kafka._publisher import Outgoing, Publisher, outgoing
from stream_infer.kafka._rebuild import Rebuilder, history_need
from stream_infer.kafka._service import EnsembleProvider, Service
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
    "ApacheKafka",
    "BatchClock",
    "BatchDone",
    "BatchProcessor",
    "BrokerHealth",
    "Committer",
    "EmbeddedBroker",
    "EnsembleProvider",
    "HistoryResult",
    "HistorySource",
    "HotReload",
    "KafkaHistory",
    "KafkaNode",
    "LatencyWindow",
    "LazyHistory",
    "Observer",
    "Outgoing",
    "PartitionBook",
    "PrometheusObserver",
    "Publisher",
    "Rebuilder",
    "Resolved",
    "Service",
    "ServiceOptions",
    "Stats",
    "StreamHistorySource",
    "build_service",
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
    "observer_for",
    "outgoing",
    "produce_events",
    "produce_files",
    "tansu_binary",
    "wait_for_broker",
]
