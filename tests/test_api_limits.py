"""The REST service under hostile clients, served by uvicorn on 127.0.0.1 as ``serve`` runs it: slow heads and
bodies are cut off, costly images go to their own low-priority lane, and ordinary requests keep being served."""

import io
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx
import uvicorn
from PIL import Image

from workbench.api import ServeSettings, create_app, uvicorn_options
from workbench.workspace import WorkspaceSpec, configure

#: real uvicorn servers with real deadlines: a few seconds each, run by `make test-slow` in CI
pytestmark = pytest.mark.slow
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 1.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dataset):
    def start(heavy_queue: int) -> tuple[str, uvicorn.Server, threading.Thread]:
        spec = WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path_factory.mktemp("limits"), backend="torch")
        settings = ServeSettings(
            spec,
            header_timeout_s=HEADER_TIMEOUT,
            body_timeout_s=BODY_TIMEOUT,
            heavy_pixels=1_000_000,
            heavy_queue=heavy_queue,
            refusal_burst=100_000,  # refused requests on purpose, all from 127.0.0.1
        )
        port = free_port()
        instance = uvicorn.Server(
            uvicorn.Config(create_app(settings), **uvicorn_options(settings, "127.0.0.1", port, "warning"))
        )
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return base, instance, thread
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    started = []

    def make(heavy_queue: int = 2) -> str:
        base, instance, thread = start(heavy_queue)
        started.append((instance, thread))
        return base

    yield make
    for instance, thread in started:
        instance.should_exit = True
        thread.join(timeout=10)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_slow_request_heads_are_closed_and_others_still_served(server):
    base = server()
    sockets = []
    for _ in range(30):  # each opens a request head and never finishes it
        client = socket.create_connection(("127.0.0.1", port_of(base)))
        client.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\n")
        client.settimeout(HEADER_TIMEOUT + 3)
        sockets.append(client)
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200  # an ordinary client is not starved
    start = time.monotonic()
    for client in sockets:
        assert client.recv(1024) == b""  # closed by the server, not by us
        client.close()
    assert time.monotonic() - start < HEADER_TIMEOUT + 2


def test_slow_bodies_get_408(server):
    base = server()
    client = socket.create_connection(("127.0.0.1", port_of(base)))
    head = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
    client.sendall(head + b"Content-Length: 5000\r\n\r\n" + part)
    start, answer = time.monotonic(), b""
    client.settimeout(0.25)
    while time.monotonic() - start < BODY_TIMEOUT + 4 and not answer:
        try:
            client.sendall(b"x")  # one byte at a time, far below any real upload
            answer = client.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
    client.settimeout(2)
    try:  # the head and the body can arrive in separate packets: read on until the server closes
        while chunk := client.recv(4096):
            answer += chunk
    except OSError:
        pass
    client.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and time.monotonic() - start < BODY_TIMEOUT + 3


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_costly_images_use_their_own_lane_and_are_refused_when_it_is_full(server, tiny_dataset):
    heavy = png(1500, 1500)  # 2.25 Mpx decoded: over the 1 Mpx "heavy" mark, within the upload limits
    ordinary = (tiny_dataset / "fish/gc_fish1.jpg").read_bytes()
    open_lane, no_lane = server(heavy_queue=2), server(heavy_queue=0)
    for base in (open_lane, no_lane):
        response = httpx.post(f"{base}/embed", files={"file": ("photo.jpg", ordinary)}, timeout=30)
        assert response.status_code == 200, response.text  # ordinary uploads never queue for the heavy lane
    response = httpx.post(f"{open_lane}/embed", files={"file": ("big.png", heavy)}, timeout=30)
    assert response.status_code == 200, response.text
    refused = httpx.post(f"{no_lane}/embed", files={"file": ("big.png", heavy)}, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_busy"
    assert refused.headers["retry-after"] == "2" and "big.png" in refused.json()["error"]["message"]
