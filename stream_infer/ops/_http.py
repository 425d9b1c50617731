"""A minimal asyncio HTTP/1.1 server for /metrics, /healthz and /readyz.

Small on purpose: three GET routes do not justify a web framework dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from stream_infer.ops._metrics import Metrics

log = logging.getLogger(__name__)

_MAX_REQUEST = 8192


class OpsServer:
    """Serves metrics and health on ``host:port`` (port 0 picks a free one; see ``port``)."""

    def __init__(
        self, metrics: Metrics, ready: Callable[[], bool], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._host = host
        self._port = port
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("ops server on http://%s:%d (/metrics /healthz /readyz)", self._host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        line = head[: min(len(head), _MAX_REQUEST)].split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
        if method != "GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path == "/metrics":
            status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
        elif path == "/healthz":
            status, ctype, body = "200 OK", "text/plain", b"ok\n"
        elif path == "/readyz":
            ok = self._ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            ctype, body = "text/plain", b"ready\n" if ok else b"not ready\n"
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
