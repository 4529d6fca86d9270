"""Bounded loopback load test of the REST service: requests/s and p50/p99 latency of ``POST /search``.

Starts ``python -m workbench serve`` on 127.0.0.1 at a free port in a subprocess (demo data, the given
workdir; onnxruntime by default), waits for ``/health``, then for each concurrency
level keeps that many requests in flight for ``--seconds`` (closed loop: each worker sends its next
request when the last one is answered), cycling through demo photos. Stops the server at the end, prints
a table and writes JSON (default ``benchmarks/results/api_load.json``). Nothing leaves 127.0.0.1.

    .venv/bin/python benchmarks/api_load.py [--seconds 60] [--concurrency 1 4 16] [--k 10]

With ``--hostile N`` each level also runs beside N hostile clients, and the table gives the good clients'
throughput as a share of the quiet run. ``--hostile-kind decode`` sends the costliest accepted image (a 4000x4000
PNG of a few kB); ``--hostile-kind refused`` floods a refused upload: a request head declaring a body over the
upload limit plus its first 64 kB, answered 413 (sent with raw sockets, so the client side stays cheap and the
figure measures the server). Hostile clients connect from another loopback address (``--hostile-address``,
default 127.0.0.2), as another machine would: the service's per-client refusal budget is keyed by address.

    .venv/bin/python benchmarks/api_load.py --concurrency 8 --hostile 8 --hostile-kind refused --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="duration of each concurrency level (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="(default: %(default)s)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of unmeasured requests first (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=10, help="results per search (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--workdir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--queries", type=int, default=32, help="distinct demo photos to cycle through")
    parser.add_argument(
        "--hostile",
        type=int,
        default=0,
        help="also run each level beside this many clients sending the costliest accepted image (a 4000x4000 PNG "
        "of a few kB) and report normal throughput with them as a share of without (default: %(default)s)",
    )
    parser.add_argument(
        "--hostile-kind",
        choices=("decode", "refused"),
        default="decode",
        help="decode: a costly accepted image; refused: an upload over the size limit, 413 (default: %(default)s)",
    )
    parser.add_argument("--hostile-address", default="127.0.0.2", help="loopback address of the hostile clients")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every (quiet, hostile) pair this many times; each hostile level is compared with the quiet one "
        "of its round and the median share is reported, which steadies the figure on a shared machine "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "api_load.json")
    return parser


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> tuple[subprocess.Popen, float]:
    """The service in a subprocess; returns it and the seconds until ``/health`` answered."""
    import httpx

    command = [
        sys.executable,
        "-m",
        "workbench",
        "serve",
        "--quiet",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data",
        str(args.data),
        "--workdir",
        str(args.workdir),
    ]
    log = open(Path(tempfile.gettempdir()) / f"workbench-api-load-{port}.log", "w")  # noqa: SIM115  (held by the server)
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    start = time.perf_counter()
    while time.perf_counter() - start < 300:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("server did not become healthy in 300 s")


def hostile_payload() -> bytes:
    """Cheap to send, costly to decode: 16 Mpx (the default upload ceiling for PNG) in a few kilobytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4000, 4000), (200, 40, 40)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


#: What a refused-upload client declares: just over the default 20 MiB upload limit (plus multipart slack).
REFUSED_DECLARED_BYTES = 21 * 1024 * 1024 + 128 * 1024


async def refused_upload(port: int, local_address: str) -> str:
    """One oversize upload from ``local_address``: the head and the first 64 kB of the body; returns the answer's
    kind (``"http 413"``, ``"http 429"``...) or the error's name."""
    boundary = "hostileboundary"
    first = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff" * 65536
    head = (
        f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {REFUSED_DECLARED_BYTES}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local_address, 0))
        writer.write(head + first)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        parts = status.split()
        return f"http {parts[1].decode()}" if len(parts) > 1 else "no answer"
    except (TimeoutError, OSError) as err:
        return type(err).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def run_level(
    url: str,
    payloads: list[tuple[str, bytes]],
    concurrency: int,
    seconds: float,
    warmup: float,
    k: int,
    hostile: int = 0,
    hostile_kind: str = "decode",
    hostile_address: str = "127.0.0.2",
) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    hostile_counts: dict[str, int] = {}
    bomb = hostile_payload() if hostile else b""
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client,
        httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=max(1, hostile)), timeout=60) as attacker,
    ):

        async def hostile_worker(until: float) -> None:
            port = int(url.rsplit(":", 1)[1])
            while time.perf_counter() < until:
                if hostile_kind == "refused":
                    kind = await refused_upload(port, hostile_address)
                    hostile_counts[kind] = hostile_counts.get(kind, 0) + 1
                    continue
                try:
                    response = await attacker.post("/search", files={"file": ("big.png", bomb, "image/png")})
                    kind = f"http {response.status_code}"
                except httpx.HTTPError as err:
                    kind = type(err).__name__
                hostile_counts[kind] = hostile_counts.get(kind, 0) + 1
                if kind == "http 503":
                    await asyncio.sleep(0.05)  # a client honouring Retry-After would wait longer

        async def worker(index: int, until: float, record: bool) -> None:
            n = index
            while time.perf_counter() < until:
                name, data = payloads[n % len(payloads)]
                n += concurrency
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/search", files={"file": (name, data, "image/jpeg")}, data={"k": str(k)}
                    )
                    ok = response.status_code == 200 and len(response.json()["hits"]) == k
                    kind = None if ok else f"http {response.status_code}"
                except httpx.HTTPError as err:
                    kind = type(err).__name__
                if record:
                    if kind is None:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors[kind] = errors.get(kind, 0) + 1

        warm_until = time.perf_counter() + warmup
        await asyncio.gather(
            *(worker(i, warm_until, False) for i in range(concurrency)),
            *(hostile_worker(warm_until) for _ in range(hostile)),
        )
        hostile_counts.clear()
        began = time.perf_counter()
        await asyncio.gather(
            *(worker(i, began + seconds, True) for i in range(concurrency)),
            *(hostile_worker(began + seconds) for _ in range(hostile)),
        )
        elapsed = time.perf_counter() - began
    ms = np.asarray(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "hostile_clients": hostile,
        "hostile_kind": hostile_kind if hostile else None,
        "hostile_answers": hostile_counts,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "requests_per_second": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 1) if len(ms) else None,
    }


def main(args: argparse.Namespace) -> int:
    import httpx

    photos = sorted(args.data.glob("*/*.jpg"))[:: max(1, len(list(args.data.glob("*/*.jpg"))) // args.queries)][
        : args.queries
    ]
    payloads = [(path.name, path.read_bytes()) for path in photos]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    port = free_port()
    server, startup = start_server(args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(f"{url}/health").json()
        print(
            f"server healthy after {startup:.1f} s: {health['backend']} {health['fingerprint']}, gallery {health['gallery_size']}"
        )
        levels = []
        for round_, concurrency in ((r, c) for r in range(args.rounds) for c in args.concurrency):
            for hostile in sorted({0, args.hostile}):
                result = asyncio.run(
                    run_level(
                        url,
                        payloads,
                        concurrency,
                        args.seconds,
                        args.warmup,
                        args.k,
                        hostile,
                        args.hostile_kind,
                        args.hostile_address,
                    )
                )
                result |= {"round": round_, "load_average_1min": round(os.getloadavg()[0], 2)}
                levels.append(result)
                print(
                    f"  round {round_} concurrency {concurrency:>2} + {hostile} hostile: {result['requests_per_second']:7.1f} req/s, "
                    f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}"
                    + (f", hostile answers {result['hostile_answers']}" if hostile else ""),
                    flush=True,
                )
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    report = {
        "endpoint": "POST /search",
        "k": args.k,
        "seconds_per_level": args.seconds,
        "warmup_seconds": args.warmup,
        "distinct_queries": len(payloads),
        "server_startup_seconds": round(startup, 2),
        "health": health,
        "levels": levels,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": "client and server share the machine's cores; closed loop, one uvicorn process",
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    baseline = {(r["round"], r["concurrency"]): r["requests_per_second"] for r in levels if r["hostile_clients"] == 0}
    print(
        "\n| round | concurrency | hostile clients | req/s | share of quiet | p50 ms | p99 ms | errors | load 1 min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in levels:
        quiet = baseline[(r["round"], r["concurrency"])]
        share = r["requests_per_second"] / quiet if quiet else float("nan")
        r["share_of_quiet"] = round(share, 3)
        print(
            f"| {r['round']} | {r['concurrency']} | {r['hostile_clients']} | {r['requests_per_second']} | {share:.2f} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['load_average_1min']} |"
        )
    if args.hostile:
        medians = {}
        for concurrency in args.concurrency:
            shares = [r["share_of_quiet"] for r in levels if r["concurrency"] == concurrency and r["hostile_clients"]]
            medians[concurrency] = float(np.median(shares))
            print(
                f"median share of quiet at concurrency {concurrency} with {args.hostile} hostile: {medians[concurrency]:.2f}"
            )
        report["median_share_of_quiet"] = medians
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average before {load_before}, after {report['load_average_after']}")
    print(f"\nwrote {args.out}")
    return 0 if all(r["errors"] == 0 for r in levels) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
