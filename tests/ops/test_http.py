from __future__ import annotations

import asyncio

from stream_infer.ops import Metrics, OpsServer


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_routes_and_readiness_flip() -> None:
    metrics = Metrics()
    state = {"ready": False}
    server = OpsServer(metrics, lambda: state["ready"])
    await server.start()
    try:
        assert await _get(server.port, "/healthz") == (200, b"ok\n")
        assert (await _get(server.port, "/readyz"))[0] == 503
        state["ready"] = True
        assert (await _get(server.port, "/readyz"))[0] == 200
        metrics.candles.inc(3)
        metrics.dead_letters.labels("rule:high_bound").inc()
        metrics.set_ensemble("7", "v2")
        code, body = await _get(server.port, "/metrics")
        assert code == 200
        text = body.decode()
        assert "stream_infer_candles_consumed_total 3.0" in text
        assert 'stream_infer_dead_letters_total{reason="rule:high_bound"} 1.0' in text
        assert 'stream_infer_ensemble_info{ensemble_id="7",version="v2"} 1.0' in text
        assert (await _get(server.port, "/nope"))[0] == 404
        assert (await _get(server.port, "/metrics", method="POST"))[0] == 405
    finally:
        await server.close()


async def test_garbage_request_does_not_kill_the_server() -> None:
    server = OpsServer(Metrics(), lambda: True)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\xff garbage without end of headers")
        writer.write_eof()
        await reader.read()
        writer.close()
        assert await _get(server.port, "/healthz") == (200, b"ok\n")
    finally:
        await server.close()
