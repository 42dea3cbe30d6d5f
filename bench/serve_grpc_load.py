"""Closed-loop OIP gRPC load for bench/serve.py, run in its own process so it never shares the server's GIL.

`python bench/serve_grpc_load.py grpc://HOST:PORT/MODEL BODY_FILE CONCURRENCY SECONDS` keeps CONCURRENCY
ModelInfer calls in flight on one channel (HTTP/2 multiplexes them), each caller sending the next as
soon as its answer is in, for SECONDS, and prints one JSON line: requests, errors, req_s, p50_ms,
p99_ms. BODY_FILE is the REST benchmark's JSON body; its tensors go as tritonclient.grpc sends them,
in raw_input_contents. The request is serialized once and answers are not parsed (after the first,
checked by `check_answer`), so the client's own cost per call stays low on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
from grpc import aio

from gallery_common.contracts.oip import DATATYPES, raw_tensor_bytes
from gallery_common.oip_grpc import grpc_predict_v2_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import in_child, percentile

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def target(url: str) -> tuple[str, str]:
    """(host:port, model) of a `grpc://host:port/model` URL."""
    parts = urlsplit(url)
    model = parts.path.strip("/")
    if parts.scheme != "grpc" or not parts.netloc or not model:
        raise ValueError(f"expected grpc://HOST:PORT/MODEL, got {url!r}")
    return parts.netloc, model


def infer_request(model: str, body_file: Path) -> pb.ModelInferRequest:
    """The REST JSON body's tensors as a ModelInferRequest with raw input contents."""
    document = orjson.loads(body_file.read_bytes())
    request = pb.ModelInferRequest(model_name=model)
    for tensor in document["inputs"]:
        array = np.asarray(tensor["data"], dtype=DATATYPES[tensor["datatype"]]).reshape(tensor["shape"])
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        request.raw_input_contents.append(raw_tensor_bytes(array))
    return request


def check_answer(url: str, body_file: Path, batch: int, outputs: int) -> None:
    """One call before measuring: RuntimeError unless the answer holds `batch` rows of `outputs` FP32 values."""
    address, model = target(url)

    async def call() -> pb.ModelInferResponse:
        async with aio.insecure_channel(address) as channel:
            infer = channel.unary_unary(
                MODEL_INFER,
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            return await infer(infer_request(model, body_file), timeout=10)

    try:
        answer = asyncio.run(call())
    except aio.AioRpcError as exc:
        raise RuntimeError(f"{url} answered {exc.code().name}: {exc.details()}") from None
    values = np.frombuffer(answer.raw_output_contents[0], "<f4") if answer.raw_output_contents else np.empty(0)
    if list(answer.outputs[0].shape) != [batch, outputs] or values.size != batch * outputs:
        raise RuntimeError(f"{url} answered shape {list(answer.outputs[0].shape)}, expected {[batch, outputs]}")


async def _run(address: str, request: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    async with aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out: nothing serialized per call

        async def caller(deadline: float) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await infer(request, timeout=30)
                except aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller(started + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def measure(url: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One cell, measured by this module in a child process (bench/serve.py's `Target.load`)."""
    return in_child(__file__, url, body_file, concurrency, seconds)


def main(argv: list[str]) -> int:
    url, body_file, concurrency, seconds = argv[0], Path(argv[1]), int(argv[2]), float(argv[3])
    address, model = target(url)
    request = infer_request(model, body_file).SerializeToString()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_run(address, request, concurrency, seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
