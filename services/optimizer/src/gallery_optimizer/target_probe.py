"""Runs one model on one execution provider and prints what it measured: a script, not a module to import.

It runs in the target's own interpreter (OpenVINO's venv has its own onnxruntime build and no Model
Gallery packages), so it needs only the standard library, numpy and onnxruntime. The parent verified the
model first and gives it a copy of the verified bytes; this process caps its own address space and core
dumps before it loads the graph.

    python target_probe.py MODEL ROWS_NPY PROVIDER OPTIONS_JSON MEMORY_BYTES OUTPUTS_NPY

Prints one JSON line: `{"provider": ..., "b1": [p50, p99], "b32": [p50, p99]}` (milliseconds per call,
one intra-op thread, as the CPU measurement is taken), or `{"error": "..."}` when the provider cannot
load or run the model, or ONNX Runtime put the graph on another provider instead. The outputs on every
row go to OUTPUTS_NPY, so the parent scores accuracy on this target too.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time

# the same warm-up and time budget as gallery_optimizer.measure.latencies_ms
LATENCY_BUDGET_S = 0.6
MAX_RUNS = 400
MIN_RUNS = 20


def _latencies_ms(session, name, output, x, batch):  # type: ignore[no-untyped-def]
    import numpy as np

    rows = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    if rows.dtype.kind != "U":  # a text model's rows stay strings
        rows = rows.astype(np.float32)
    feed = {name: rows}
    for _ in range(5):
        session.run([output], feed)
    times: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        session.run([output], feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return [float(np.percentile(times, 50)), float(np.percentile(times, 99))]


def main(argv: list[str]) -> int:
    model, rows, provider, options, memory, outputs_path = argv[1:7]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if int(memory) > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    import numpy as np
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    session_options.intra_op_num_threads = 1
    session_options.inter_op_num_threads = 1
    with open(model, "rb") as f:
        data = f.read()
    providers: list[object] = [(provider, json.loads(options))]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")  # so a provider that takes no node is seen, not an error
    try:
        session = ort.InferenceSession(data, session_options, providers=providers)
    except Exception as exc:  # the provider's refusal is the answer, e.g. an IR version it does not read
        # ONNX Runtime prefixes the reason with a status code and often the C++ function that raised it
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip().splitlines()[-1])
        reason = re.sub(r"^\S+:\d+ \S+?\(.*?\) ", "", reason)
        print(json.dumps({"error": f"{provider} cannot load the model: {reason}"}))
        return 0
    used = session.get_providers()[0]
    if used != provider:
        print(json.dumps({"error": f"ONNX Runtime put the model on {used}, not {provider}"}))
        return 0
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    x = np.load(rows, allow_pickle=False)
    outputs = [session.run([output], {name: np.ascontiguousarray(x[i : i + 512])})[0] for i in range(0, len(x), 512)]
    np.save(outputs_path, np.concatenate(outputs).astype(np.float32), allow_pickle=False)
    b1 = _latencies_ms(session, name, output, x, 1)
    b32 = _latencies_ms(session, name, output, x, 32)
    print(json.dumps({"provider": used, "b1": b1, "b32": b32}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
