"""The explaining client of bench/explain.py, a process of its own that imports little and takes only idle
CPU (SCHED_IDLE): on a 2-core machine its own JSON work would otherwise be counted against the server.

    python bench/explain_client.py URL MODEL ROWS.npy SECONDS NSAMPLES

Prints `ready` once connected, explains rows back to back (SHAP) for SECONDS, then prints how many it
got answered.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
import numpy as np
import orjson


def main(url: str, model: str, rows_file: str, seconds: float, nsamples: int) -> int:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    rows = np.load(rows_file)
    done = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        client.get("/v2/health/ready")
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            row = rows[done % len(rows)]
            body = {
                "inputs": [{"name": "features", "shape": [1, row.size], "datatype": "FP32", "data": row.tolist()}],
                "parameters": {"nsamples": nsamples, "seed": done},
            }
            answer = client.post(f"/v2/models/{model}/explain", content=orjson.dumps(body))
            if answer.status_code != 200:
                print(f"explain answered {answer.status_code}: {answer.text[:300]}", file=sys.stderr)
                return 1
            done += 1
    print(done, flush=True)
    return 0


if __name__ == "__main__":
    url, model, rows_file, seconds, nsamples = sys.argv[1:6]
    sys.exit(main(url, model, rows_file, float(seconds), int(nsamples)))
