"""A local HTTP server on 127.0.0.1 for download tests and benchmarks/ingest.py: never the internet.

Routes (``GET``):

    /img/<name>            an image from ``images`` (Content-Length set)
    /chunked/<name>        the same image, chunked transfer encoding
    /as-text/<name>        the image with ``Content-Type: text/plain`` (content decides, not headers)
    /404, /500             errors
    /flaky/<n>/<name>      HTTP 503 for the first <n> requests of this path, then the image
    /slow                  waits ``slow_seconds`` before answering (bounded, so shutdown is quick)
    /drip                  headers at once, then one byte every 50 ms (a body that never finishes in time)
    /big-declared          Content-Length far over any cap (the body is never sent)
    /big-chunked           a chunked body of ``big_bytes`` with no Content-Length
    /html                  an HTML page with status 200
    /truncated/<name>      the first half of an image
    /redirect/<name>       302 to /img/<name>;  /redirect-loop: 302 to itself;  /redirect-ftp: 302 to ftp://
    /close                 closes the connection without answering
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerState:
    """What the server serves, and what it saw."""

    images: dict[str, bytes]
    slow_seconds: float = 1.5
    big_bytes: int = 3 * 1024 * 1024
    hits: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(
        self, status: int, body: bytes, content_type: str = "application/octet-stream", headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _image(self, name: str) -> bytes | None:
        data = self.state.images.get(name)
        if data is None:
            self._send(404, b"no such image", "text/plain")
        return data

    def _chunked(self, pieces: Iterator[bytes], content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in pieces:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.state.lock:
            self.state.hits[path] += 1
            hits = self.state.hits[path]
        parts = path.strip("/").split("/")
        route, rest = parts[0], parts[1:]
        try:
            if route == "img" and rest:
                if (data := self._image(rest[-1])) is not None:
                    self._send(200, data, "image/jpeg")
            elif route == "chunked" and rest:
                if (data := self._image(rest[-1])) is not None:
                    self._chunked((data[i : i + 4096] for i in range(0, len(data), 4096)), "image/jpeg")
            elif route == "as-text" and rest:
                if (data := self._image(rest[-1])) is not None:
                    self._send(200, data, "text/plain")
            elif route == "truncated" and rest:
                if (data := self._image(rest[-1])) is not None:
                    self._send(200, data[: len(data) // 2], "image/jpeg")
            elif route == "flaky" and len(rest) == 2:
                if hits <= int(rest[0]):
                    self._send(503, b"try again", "text/plain")
                elif (data := self._image(rest[1])) is not None:
                    self._send(200, data, "image/jpeg")
            elif route == "404":
                self._send(404, b"not found", "text/plain")
            elif route == "500":
                self._send(500, b"server error", "text/plain")
            elif route == "slow":
                time.sleep(self.state.slow_seconds)
                self._send(200, b"too late", "text/plain")
            elif route == "drip":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(int(self.state.slow_seconds / 0.05)):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif route == "big-declared":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.close_connection = True
            elif route == "big-chunked":
                block = b"\x00" * 65536
                self._chunked((block for _ in range(self.state.big_bytes // len(block) + 1)), "image/jpeg")
            elif route == "html":
                self._send(
                    200, b"<!doctype html><title>Not here</title><p>Image moved.</p>", "text/html; charset=utf-8"
                )
            elif route == "redirect" and rest:
                self._send(302, b"", "text/plain", {"Location": f"/img/{rest[-1]}"})
            elif route == "redirect-loop":
                self._send(302, b"", "text/plain", {"Location": "/redirect-loop"})
            elif route == "redirect-ftp":
                self._send(302, b"", "text/plain", {"Location": "ftp://127.0.0.1/secret.jpg"})
            elif route == "close":
                self.close_connection = True
                self.connection.shutdown(2)
            else:
                self._send(404, b"unknown route", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@contextmanager
def serve(state: ServerState) -> Iterator[str]:
    """Serve ``state`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
