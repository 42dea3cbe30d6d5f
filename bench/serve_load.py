"""Closed-loop HTTP load for bench/serve.py, run in its own process so it never shares the server's GIL.

`python bench/serve_load.py URL BODY_FILE CONCURRENCY SECONDS` keeps CONCURRENCY keep-alive connections
each sending one POST after another for SECONDS and prints one JSON line: requests, errors, req_s,
p50_ms, p99_ms. A raw asyncio HTTP/1.1 client (not httpx) keeps the client's own cost per request low
on a 2-core machine; wrk replaces it when installed (see `run_wrk`).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("%s", "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %%d %%d %%.3f %%.3f\\n", summary.requests, errors,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def percentile(sorted_values: list[float], share: float) -> float:
    """The `share` percentile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    match = re.search(rb"content-length:\s*(\d+)", lowered)
    if match:
        await reader.readexactly(int(match.group(1)))
    elif b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _worker(host: str, port: int, request: bytes, deadline: float, latencies: list[float]) -> int:
    errors = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                writer.write(request)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
    finally:
        writer.close()
    return errors


async def _run(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    errors = await asyncio.gather(*(_worker(host, port, request, deadline, latencies) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "req_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def run_wrk(url: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One cell measured by wrk (one thread: the server needs the other core)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % str(body_file).replace("\\", "\\\\"))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no result: {out[-300:]}")
    requests, errors = int(match.group(1)), int(match.group(2))
    duration = re.search(r"requests in ([\d.]+)(m?s)", out)
    elapsed = float(duration.group(1)) / (1000 if duration.group(2) == "ms" else 1) if duration else seconds
    return {
        "requests": requests - errors,
        "errors": errors,
        "req_s": (requests - errors) / elapsed,
        "p50_ms": float(match.group(3)),
        "p99_ms": float(match.group(4)),
    }


def measure(url: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One cell: wrk when installed, else this module's asyncio generator in a child process."""
    if shutil.which("wrk"):
        return run_wrk(url, body_file, concurrency, seconds)
    return in_child(__file__, url, body_file, concurrency, seconds)


def in_child(script: str, url: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One cell measured by a load generator `script` (taking URL BODY_FILE CONCURRENCY SECONDS) in a child process."""
    out = subprocess.run(
        [sys.executable, script, url, str(body_file), str(concurrency), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator {Path(script).name} failed: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    url, body_file, concurrency, seconds = argv[0], Path(argv[1]), int(argv[2]), float(argv[3])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_run(url, body_file.read_bytes(), concurrency, seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
