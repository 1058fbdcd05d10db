#!/usr/bin/env python
"""Throughput of ``factlearn serve`` (issue 21): N concurrent clients over loopback.

    python scripts/bench_serve.py [RUN_DIR] [--images DIR] [--clients 1,8,32] [--seconds 5]
                                  [--requests 2000] [--device cpu] [--json OUT]

Starts ``factlearn serve RUN_DIR --port 0`` (127.0.0.1 only) twice: with micro-batching (the
defaults) and without it (``--max-batch 1``). For each client count, N clients (on one asyncio loop) each keep one
HTTP connection and send ``POST /query`` with one image, back to back, until the level has run
``--seconds`` or answered ``--requests`` (whichever comes first), timed once every client has
connected and sent one untimed query; it reports queries/s, p50 and
p99 latency, and the images per forward pass (from ``/health``). Without RUN_DIR it makes a tiny
world and a tiny two-task run in a temporary folder (configs/tiny.yaml). The clients share the
machine with the server: on few cores they take part of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "factlearn-bench-boundary"


def tiny_run(folder: Path) -> Path:
    """A tiny world and a finetune run of two tasks on it (configs/tiny.yaml), in ``folder``."""
    from factlearn.config import load_config
    from factlearn.data.synth import generate_world
    from factlearn.training import train

    world, run = folder / "world", folder / "run"
    generate_world(world, seed=3, facts=12, images_per_fact=6, size=32, workers=1)
    train(world, load_config(ROOT / "configs" / "tiny.yaml", {"method.name": "finetune"}), run, seed=0, device="cpu")
    return run


@contextmanager
def server(run_dir: Path, *args: str) -> Iterator[str]:
    """``factlearn serve run_dir --port 0 *args`` on 127.0.0.1 for the time of the block; yields its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "factlearn", "serve", str(run_dir), "--host", "127.0.0.1",
                             "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if " on http://" not in line:
            raise SystemExit(f"factlearn serve did not start: {line}{proc.stderr.read()}")
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def multipart(name: str, data: bytes) -> bytes:
    """One image as the multipart body of POST /query."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def get_json(url: str, path: str) -> dict:
    """GET ``path`` of the server at ``url`` as JSON."""
    host, port = address(url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def address(url: str) -> tuple[str, int]:
    """(host, port) of ``http://host:port/``."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> int:
    """One POST /query on a kept-alive connection; returns the status."""
    writer.write(b"POST /query HTTP/1.1\r\nHost: bench\r\nContent-Type: multipart/form-data; boundary="
                 + BOUNDARY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def level(url: str, bodies: list[bytes], clients: int, seconds: float, requests: int) -> dict:
    """N clients sending queries back to back, each on its own connection; bounded by ``seconds``
    and ``requests``. One event loop drives them all, so the clients do not fight over threads."""
    host, port = address(url)
    conns = [await asyncio.open_connection(host, port) for _ in range(clients)]
    await asyncio.gather(*(ask(r, w, bodies[i % len(bodies)]) for i, (r, w) in enumerate(conns)))  # warm
    latencies: list[float] = []
    failed, budget = [0], [requests]
    batches_before = get_json(url, "/health")["batches"]
    start = time.perf_counter()

    async def client(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = i
        while time.perf_counter() < start + seconds and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            status = await ask(reader, writer, bodies[n % len(bodies)])
            latencies.append(time.perf_counter() - t0)
            failed[0] += status != 200
            n += clients
        writer.close()

    await asyncio.gather(*(client(i, r, w) for i, (r, w) in enumerate(conns)))
    elapsed = time.perf_counter() - start
    batches = get_json(url, "/health")["batches"] - batches_before
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "queries": len(ms), "failed": failed[0], "seconds": round(elapsed, 2),
            "qps": round(len(ms) / elapsed, 1), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            "images_per_batch": round(len(ms) / max(1, batches), 2)}


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (docs/serve.md quotes it)."""
    lines = ["| server | clients | queries/s | p50 ms | p99 ms | images per forward pass | queries |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['clients']} | {r['qps']} | {r['p50_ms']} | {r['p99_ms']} | {r['images_per_batch']} "
              f"| {r['queries']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    """Both servers, every client count; the table on stdout, the rows in --json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a trained run (default: make a tiny one)")
    parser.add_argument("--images", type=Path, help="folder of query images (default: the run's data images)")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="most seconds per level")
    parser.add_argument("--requests", type=int, default=2000, help="most queries per level")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or tiny_run(Path(tmp))
        folder = args.images or Path(json.loads((run_dir / "run.json").read_text())["data"]) / "images"
        files = sorted(folder.glob("*.png"))[:32]
        if not files:
            raise SystemExit(f"no .png images in {folder}")
        bodies = [multipart(f.name, f.read_bytes()) for f in files]
        rows = []
        for mode, serve_args in (("micro-batched", []), ("--max-batch 1", ["--max-batch", "1"])):
            with server(run_dir, "--device", args.device, *serve_args) as url:
                asyncio.run(level(url, bodies, 1, 1.0, 20))  # warm-up
                for n in map(int, args.clients.split(",")):
                    rows.append({"mode": mode, **asyncio.run(level(url, bodies, n, args.seconds, args.requests))})
    print(table(rows))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}; clients and server on one machine")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
