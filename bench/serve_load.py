"""siamjax-serve under load: N verify requests, C at a time, over loopback.

    python bench/serve_load.py --workdir W [--requests 200] [--concurrency 16] [--references 2]

Starts `python -m siamjax.serve` on a free loopback port (a fresh database), then sends
--requests POST /api/verify requests from --concurrency concurrent clients (httpx, one event
loop), in two modes, one JSON line each:
  adhoc:    --references reference scans and one questioned scan per request (K + 1 images
            decoded, preprocessed and embedded);
  enrolled: one questioned scan against a writer enrolled once with --references scans.
Each line: requests/s, latency p50 / p90 / p99 / max (ms), failed requests (not 200, or no
answer), and the server's model calls and embedding batches (fewer batches than requests:
concurrent requests shared them). A few requests first warm the server up and are not counted.
Scans are SigComp2011's where $SIAMJAX_DATA_DIR has them (about 1000 x 500 pixels: preprocessing
is most of the work), else synthetic. The client runs on the same machine as the server, so
they share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scans(n: int, folder: str) -> tuple[list[tuple[str, bytes]], str]:
    from onnx_vs_jax import _scan_paths  # The same scans as bench/onnx_vs_jax.py.

    paths, source = _scan_paths(n, folder)
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append((os.path.basename(p), f.read()))
    return out, source


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _load(url, n, concurrency, make_files, data=None) -> dict:
    import httpx

    latencies, failures, errors = [], 0, []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(c: httpx.AsyncClient):
        nonlocal failures
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                r = await c.post(url + "/api/verify", files=make_files(i), data=data)
                ok = r.status_code == 200 and r.json()["decision"] in ("genuine", "forged")
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                ok = False
                errors.append(repr(e)[:200])
            latencies.append(time.perf_counter() - start)
            failures += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p90_ms": _percentile(latencies, 0.90) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "mean_ms": statistics.mean(latencies) * 1e3,
        "failed": failures,
        "first_errors": errors[:3],
    }


def _healthz(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        return json.load(r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--references", type=int, default=2)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--note", default="", help="copied into the line (e.g. what else ran)")
    args = p.parse_args()

    import httpx
    from suite.common import commit_info, machine_info  # bench/suite/, beside this file.

    tmp = tempfile.TemporaryDirectory()
    scans, source = _scans(48, tmp.name)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    log = open(os.path.join(tmp.name, "serve.log"), "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "siamjax.serve", "--workdir", args.workdir, "--port", str(port)]
        + ["--db", os.path.join(tmp.name, "db.sqlite")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.perf_counter()
        while True:
            try:
                _healthz(url)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    log.seek(0)
                    raise SystemExit(
                        f"siamjax-serve did not start:\n{log.read()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        start_s = time.perf_counter() - started
        k = args.references

        def adhoc(i: int):
            picks = [scans[(i * (k + 1) + j) % len(scans)] for j in range(k + 1)]
            return [("reference", f) for f in picks[:k]] + [("questioned", picks[k])]

        def enrolled(i: int):
            return [("questioned", scans[(k + i) % len(scans)])]

        r = httpx.post(
            url + "/api/writers",
            data={"writer": "bench"},
            files=[("reference", s) for s in scans[:k]],
            timeout=120,
        )
        r.raise_for_status()
        common = {
            "benchmark": "serve_load",
            "note": args.note,
            "workdir": os.path.abspath(args.workdir),
            "images": source,
            "references": k,
            "server_start_s": start_s,
            "machine": machine_info(),
            **commit_info(),
        }
        for mode, make, data in (
            ("adhoc", adhoc, None),
            ("enrolled", enrolled, {"writer": "bench"}),
        ):
            asyncio.run(_load(url, args.warmup, min(args.warmup, args.concurrency), make, data))
            before = _healthz(url)
            result = asyncio.run(_load(url, args.requests, args.concurrency, make, data))
            after = _healthz(url)
            calls = {k: after[k] - before[k] for k in ("model_calls", "embed_batches")}
            line = {
                **common,
                "mode": mode,
                **result,
                **calls,  # Embedding batches below requests: requests shared batches.
                "load_avg_1m": os.getloadavg()[0],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            print(json.dumps(line), flush=True)
        if server.poll() is not None:
            raise SystemExit("siamjax-serve died during the load")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    main()
