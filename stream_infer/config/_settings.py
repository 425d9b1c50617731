"""Process settings from the environment. Names are the seed's (docs/design.md, Configuration).

Ensemble configuration (which models, which weight) is resolved separately, with the
seed's priority database -> environment -> TOML -> disabled; see ``stream_infer.config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="KAFKA_BOOTSTRAP_SERVERS")
    kafka_candles_topic: str = Field("candles", description="KAFKA_CANDLES_TOPIC")
    kafka_predictions_topic: str = Field("predictions", description="KAFKA_PREDICTIONS_TOPIC")
    kafka_dlq_topic: str = Field("candles.dlq", description="KAFKA_DLQ_TOPIC")
    kafka_group_id: str = Field("stream-infer", description="KAFKA_GROUP_ID")
    # The embedded broker does not wake a waiting fetch (docs/design.md, Local stack): this
    # bounds latency there.
    kafka_fetch_max_wait_ms: int = Field(5, ge=1, description="KAFKA_FETCH_MAX_WAIT_MS")
    kafka_max_poll_records: int = Field(2000, ge=1, description="KAFKA_MAX_POLL_RECORDS")
    kafka_max_message_bytes: int = Field(1_048_576, ge=1024, description="KAFKA_MAX_MESSAGE_BYTES")
    # auto: an idempotent producer where the broker serves one (a send retried after a lost
    # ack is not written twice), a plain one where it cannot (the embedded Tansu broker).
    kafka_enable_idempotence: Literal["auto", "true", "false"] = Field(
        "auto", description="KAFKA_ENABLE_IDEMPOTENCE"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_prefix="DB_", extra="ignore")

    host: str | None = Field(None, description="DB_HOST; unset means no database")
    port: int = Field(5432, description="DB_PORT")
    name: str = Field("stream_infer", description="DB_NAME")
    user: str = Field("postgres", description="DB_USER")
    password: SecretStr | None = Field(None, description="DB_PASSWORD")
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    # The predictions sink (docs/postgres.md): off unless asked for; Kafka is the record.
    write_predictions: bool = Field(False, description="DB_WRITE_PREDICTIONS")
    sink_max_queue: int = Field(10_000, ge=1, description="DB_SINK_MAX_QUEUE")

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    def dsn(self) -> str:
        """Connection string without the password (pass it separately, never log it)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_prefix="", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    ml_device: Literal["cpu", "cuda"] = Field("cpu", description="ML_DEVICE")
    # The documented names differ from the field names, so they are read through an alias
    # (the field name stays accepted as a keyword argument).
    models_root: str | None = Field(
        None,
        validation_alias=AliasChoices("ML_MODELS_ROOT", "models_root"),
        description="ML_MODELS_ROOT: model paths from the database must lie under it",
    )
    metrics_port: int | None = Field(None, description="METRICS_PORT; unset means no HTTP server")
    config_path: str | None = Field(
        None,
        validation_alias=AliasChoices("STREAM_INFER_CONFIG", "config_path"),
        description="STREAM_INFER_CONFIG: the TOML file",
    )
    reload_poll_s: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices("ML_RELOAD_POLL_S", "reload_poll_s"),
        description="ML_RELOAD_POLL_S",
    )
    log_format: Literal["plain", "json"] = Field("plain", description="LOG_FORMAT")
    # Where `run` rebuilds stream state from on start and rebalance (docs/service.md,
    # "State"): the input topic, or Postgres `candles` per stream with the topic for the
    # streams it does not cover (needs DB_HOST).
    history_source: Literal["kafka", "postgres"] = Field(
        "kafka",
        validation_alias=AliasChoices("HISTORY_SOURCE", "history_source"),
        description="HISTORY_SOURCE: kafka or postgres",
    )


class PostgresSourceSettings(BaseSettings):
    """``stream-infer run --source postgres``: predictions from the ``candles`` table
    (docs/postgres.md, "The Postgres source"). The database is ``DatabaseSettings``'."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="PG_SOURCE_", extra="ignore")

    # One process per name at a time (an advisory lock); its progress is stored under it.
    name: str = Field("stream-infer", min_length=1, max_length=200, description="PG_SOURCE_NAME")
    # Where a name met for the first time starts: after the candles already in the table
    # (latest) or at the first candle of every stream (earliest: predicts the history).
    start: Literal["latest", "earliest"] = Field("latest", description="PG_SOURCE_START")
    # Polling interval: the fallback when no insert notification arrives.
    poll_s: float = Field(1.0, gt=0, description="PG_SOURCE_POLL_S")
    # Candles read in one round at most (a backlog is worked through in rounds this size).
    max_candles: int = Field(2000, ge=1, description="PG_SOURCE_MAX_CANDLES")
