"""Connection options shared by every Kafka client the service makes (settings -> aiokafka kwargs)."""

from __future__ import annotations

from typing import Any

from stream_infer.config import KafkaSettings

__all__ = ["client_kwargs"]


def client_kwargs(settings: KafkaSettings, bootstrap: str | None = None) -> dict[str, Any]:
    """``bootstrap_servers`` and the security options of ``settings`` for any aiokafka client."""
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        kw["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            kw["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kw
