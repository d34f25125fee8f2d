"""Images/s of `fastmuse serve` under concurrent load, dynamic batching on vs off, side by side.

    cd benchmarks && ../.venv/bin/python serve_throughput.py [--model muse-128] [--requests 32]

Starts one server per setting (a separate process, as in production), fires `--requests`
concurrent single-image requests at it (distinct prompts and seeds), and prints wall time,
images/s, median and worst latency; then the ratio batched / unbatched. Only rows of one
run compare: absolute figures vary between machines and runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time

import httpx

from fastmuse.serve.process import start_server


def serve(model: str, max_batch: int, window_ms: float) -> tuple[subprocess.Popen, str]:
    return start_server("--model", model, "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms),
                        "--max-queue", "1000", "--timeout", "3600", timeout_s=600, stdout=subprocess.DEVNULL)


async def load(url: str, requests: int) -> tuple[float, list[float]]:
    async def one(c: httpx.AsyncClient, i: int) -> float:
        t0 = time.perf_counter()
        r = await c.post("/v1/images/generations", json={"prompt": f"a red circle {i}", "seed": i})
        r.raise_for_status()
        return time.perf_counter() - t0

    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=1000)) as c:
        await one(c, requests)  # warm-up
        t0 = time.perf_counter()
        latencies = await asyncio.gather(*(one(c, i) for i in range(requests)))
        return time.perf_counter() - t0, list(latencies)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="muse-128")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="batched setting's images per batch")
    a = p.parse_args()
    rows = {}
    for name, max_batch, window in (("unbatched", 1, 0.0), ("batched", a.max_batch, 20.0)):
        proc, url = serve(a.model, max_batch, window)
        try:
            wall, lat = asyncio.run(load(url, a.requests))
        finally:
            proc.terminate()
            proc.wait()
        rows[name] = {
            "max_batch": max_batch,
            "wall_s": round(wall, 2),
            "images_per_s": round(a.requests / wall, 3),
            "latency_median_s": round(statistics.median(lat), 2),
            "latency_max_s": round(max(lat), 2),
        }
        print(
            f"{name:10s} max_batch {max_batch:3d}: {a.requests} images in {wall:6.1f} s = "
            f"{a.requests / wall:5.2f} img/s, latency median {statistics.median(lat):5.1f} s, "
            f"max {max(lat):5.1f} s",
            flush=True,
        )
    ratio = rows["batched"]["images_per_s"] / rows["unbatched"]["images_per_s"]
    print(f"batched / unbatched throughput: {ratio:.2f}x")
    print(json.dumps({"model": a.model, "requests": a.requests, **rows, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
