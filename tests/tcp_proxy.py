"""A TCP proxy that a test can cut and restore, for connection-fault tests.

It runs its own event loop in a thread so that it keeps forwarding while the code
under test blocks or runs in another loop or process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. ``cut()`` drops every connection and refuses
    new ones until ``restore()``; ``stats`` counts connections accepted and bytes moved."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listen_port = listen_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.port = 0
        self.stats = {"connections": 0, "bytes": 0, "refused": 0}

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self) -> None:
        """Drop every open connection and refuse (close at once) new ones."""
        asyncio.run_coroutine_threadsafe(self._set_cut(True), self._loop).result(timeout=5)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_cut(False), self._loop).result(timeout=5)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._listen_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.stats["refused"] += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["refused"] += 1
            writer.transport.abort()
            return
        self.stats["connections"] += 1
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._cut:
                    break
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
