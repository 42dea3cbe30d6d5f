"""KServe's and BentoML's servers for bench/serve.py, each in its own venv under bench/.venvs/.

Each competitor gets a venv (created once, reused), a small server script wrapping the same ONNX file
and a command line that serves it; the OIP-style JSON body of the benchmark is posted unchanged.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"

KSERVE_SERVER = """
import sys
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        y = self.session.run(None, {"input": x})[0]
        out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")

if __name__ == "__main__":
    path, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=False, workers=1).start(
        [OnnxModel("mlp", path)]
    )
"""

BENTOML_SERVICE = """
import os
import numpy as np
import onnxruntime as ort
import bentoml

@bentoml.service(workers=1)
class MLP:
    def __init__(self):
        self.session = ort.InferenceSession(os.environ["BENCH_ONNX"], providers=["CPUExecutionProvider"])

    @bentoml.api
    def infer(self, inputs: list) -> dict:
        tensor = inputs[0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        y = self.session.run(None, {"input": x})[0]
        return {"outputs": [{"name": "output", "shape": list(y.shape), "datatype": "FP32",
                             "data": y.ravel().tolist()}]}
"""


@dataclass(frozen=True)
class Competitor:
    """A server to compare against: its venv packages and how to serve `onnx_path` on `port`."""

    name: str
    packages: tuple[str, ...]
    path: str  # the infer path the benchmark posts to

    @property
    def venv(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def installed(self) -> bool:
        return self.python.exists() and (self.venv / ".installed").exists()

    def install(self) -> None:
        """Create the venv and install the packages once; raises RuntimeError with pip's reason."""
        if self.installed:
            return
        VENVS.mkdir(parents=True, exist_ok=True)
        steps = [
            ["python3", "-m", "venv", str(self.venv)],
            [str(self.python), "-m", "pip", "install", "--quiet", *self.packages],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step[:4])} failed: {done.stderr.strip()[-300:]}")
        (self.venv / ".installed").write_text("ok\n")

    def command(self, onnx_path: Path, port: int, spare_port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """The argv and extra environment that serve the model on `port`."""
        if self.name == "kserve":
            script = workdir / "kserve_server.py"
            script.write_text(KSERVE_SERVER)
            return [str(self.python), str(script), str(onnx_path), str(port), str(spare_port)], {}
        script = workdir / "bentoml_service.py"
        script.write_text(BENTOML_SERVICE)
        argv = [str(self.venv / "bin" / "bentoml"), "serve", "bentoml_service:MLP", "--port", str(port)]
        argv += ["--host", "127.0.0.1", "--working-dir", str(workdir)]
        return argv, {"BENCH_ONNX": str(onnx_path), "BENTOML_DO_NOT_TRACK": "True"}


COMPETITORS = (
    Competitor("kserve", ("kserve", "onnxruntime", "numpy"), "/v2/models/mlp/infer"),
    Competitor("bentoml", ("bentoml", "onnxruntime", "numpy"), "/infer"),
)
