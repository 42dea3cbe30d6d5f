"""The floor of bench/serve.py: a bare FastAPI + orjson endpoint over the same ONNX Runtime session.

    python bench/serve_floor.py MODEL.onnx PORT [--intra-op-threads N] [--spinning]

No validation beyond what numpy does, no metrics, no batching, no middleware: the least any OIP server
on FastAPI can spend on `POST /v2/models/mlp/infer`. The session is built as our model server builds it
(`intra_op_num_threads` only when given, intra-op spinning on or off as the model server's settings
say; bench/serve.py passes their defaults) and runs in a worker thread, as blocking work must; uvicorn
runs with the model server's options (uvloop, httptools, no access log).
"""

from __future__ import annotations

import argparse

import anyio
import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def create_app(onnx_path: str, intra_op_threads: int = 0, spinning: bool = False) -> FastAPI:
    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    @app.post("/v2/models/mlp/infer")
    async def infer(request: Request) -> Response:
        tensor = orjson.loads(await request.body())["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        y = (await anyio.to_thread.run_sync(session.run, None, {"input": x}))[0]
        answer = {
            "model_name": "mlp",
            "outputs": [{"name": "output", "shape": y.shape, "datatype": "FP32", "data": y.reshape(-1)}],
        }
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the ONNX file")
    parser.add_argument("port", type=int)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0 lets ONNX Runtime choose")
    parser.add_argument("--spinning", action="store_true", help="let intra-op threads spin between runs")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.model, args.intra_op_threads, args.spinning),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )
