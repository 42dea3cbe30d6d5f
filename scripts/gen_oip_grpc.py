"""Regenerate the Open Inference Protocol's gRPC modules from the .proto committed beside them.

    .venv/bin/python scripts/gen_oip_grpc.py   (or `make proto`)

Writes gallery_common/oip_grpc/grpc_predict_v2_pb2.py, its .pyi stub and grpc_predict_v2_pb2_grpc.py
with grpcio-tools (pinned in requirements/dev.txt: its protoc writes protobuf 6.33.5 gencode, which the
protobuf runtimes 6.33 and 7.x both import; newer grpcio-tools write gencode that 6.x refuses).

One change is made to protoc's output: the messages are registered in a descriptor pool of their own
instead of protobuf's default one. tritonclient.grpc (and any other OIP client in the same process)
registers the same `inference.*` message names in the default pool, and a second file defining them
there fails to import; on the wire nothing changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = ROOT / "libs" / "common" / "src"
PROTO = "gallery_common/oip_grpc/grpc_predict_v2.proto"
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = (
    "# a pool of its own: an OIP client in the same process (tritonclient.grpc) registers the same\n"
    "# inference.* names in the default pool (written by scripts/gen_oip_grpc.py)\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def main() -> int:
    args = [
        "grpc_tools.protoc",
        f"-I{SOURCE_ROOT}",
        f"--python_out={SOURCE_ROOT}",
        f"--pyi_out={SOURCE_ROOT}",
        f"--grpc_python_out={SOURCE_ROOT}",
        str(SOURCE_ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        print(f"protoc failed on {PROTO}", file=sys.stderr)
        return 1
    generated = SOURCE_ROOT / PROTO.replace(".proto", "_pb2.py")
    text = generated.read_text()
    if text.count(DEFAULT_POOL) != 1:
        print(f"{generated}: protoc's output no longer registers the file as expected; look at it", file=sys.stderr)
        return 1
    generated.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    print(f"generated {generated.relative_to(ROOT)} and its _grpc module")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
