"""A "Quay host" a tenant could point a connection Secret at (issue 18): one that answers one byte
every ``interval`` seconds (in its status line, or in a body it announces as huge), or an endless
fast body. Real TCP on 127.0.0.1, so the function's HTTP client meets it as it would in a cluster.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType


class HostileHost:
    """``mode``: "trickle-headers" (the status line, a byte at a time), "trickle-body" (headers at
    once, then the body a byte at a time) or "flood" (headers, then an endless body at full speed)."""

    def __init__(self, mode: str, *, interval: float = 2.0) -> None:
        self.mode, self.interval = mode, interval
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)  # so that the accept loop sees the stop flag
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> HostileHost:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)  # the request (small: headers and a short JSON body at most)
                if self.mode == "trickle-headers":
                    self._trickle(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 1000)
                elif self.mode == "trickle-body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000000000\r\n\r\n")
                    self._trickle(conn, b'{"tokens": [' + b" " * 10_000_000)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    chunk = b" " * 65536
                    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                    conn.settimeout(0.2)
                    while not self._stop.is_set():
                        try:
                            conn.sendall(frame)
                        except TimeoutError:
                            continue
            except OSError:
                return

    def _trickle(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(self.interval if i else 0):
                return
            conn.sendall(data[i:i + 1])


def elapsed(started: float) -> float:
    return time.monotonic() - started
