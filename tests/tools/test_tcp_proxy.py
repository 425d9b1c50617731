from __future__ import annotations

import socket
import threading

from tests.tcp_proxy import TcpProxy


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(
                target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(1024), b"")],
                daemon=True,
            ).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(1024)


def test_forwards_cuts_and_restores() -> None:
    srv, port = _echo_server()
    with TcpProxy("127.0.0.1", port) as proxy:
        assert _roundtrip(proxy.port, b"hello") == b"hello"
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        live.sendall(b"x")
        assert live.recv(10) == b"x"
        proxy.cut()
        assert live.recv(10) == b""  # dropped: the peer sees the connection end
        try:
            got = _roundtrip(proxy.port, b"again")
        except OSError:
            got = b""
        assert got == b""
        proxy.restore()
        assert _roundtrip(proxy.port, b"back") == b"back"
        assert proxy.stats["connections"] >= 2 and proxy.stats["refused"] >= 1
        live.close()
    srv.close()
