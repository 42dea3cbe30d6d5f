"""Messages between a Flower process and the trainer's own process: a JSON header and raw arrays over a pipe.

Flower runs in its own interpreter (`.venv-flower`, see `requirements/flower.txt`): every flwr release pins
packages below what the services need. So the Flower side of a site or of the coordinator is a relay that
imports only flwr, numpy and this module, and the training side (torch, the model code) stays in the
trainer's interpreter. A message is an 8-byte big-endian length, that many bytes of JSON, then the raw
bytes of each array the JSON lists (dtype, shape): nothing is pickled, and a reader refuses dtypes and
sizes it does not expect.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gallery_common.errors import GalleryError
from gallery_common.site_tokens import SITE_NAME_PATTERN as SITE_NAME_PATTERN
from gallery_common.site_tokens import SITE_TOKENS_ENV, SiteTokensInvalid, parse_site_tokens

FLOWER_PYTHON_ENV = "GALLERY_FLOWER_PYTHON"
TLS_ENV = {
    "root_certificate": "GALLERY_FEDERATION_ROOT_CERTIFICATE",
    "certificate": "GALLERY_FEDERATION_CERTIFICATE",
    "private_key": "GALLERY_FEDERATION_PRIVATE_KEY",
}
# the CA that issues the sites' certificates (a PEM file, or the PEM itself, as Kubernetes hands over an
# optional Secret's key): with it, a site must present one (mutual TLS) and is admitted as the site its
# certificate names
CLIENT_CA_ENV = "GALLERY_FEDERATION_CLIENT_CA"
PEM_BEGIN = "-----BEGIN "


def pem_bytes(given: str) -> bytes:
    """A PEM given inline (it starts with -----BEGIN) or as the path of its file."""
    return given.encode() if given.lstrip().startswith(PEM_BEGIN) else Path(given).read_bytes()


ALLOWED_DTYPES = ("float32", "float64", "int64")
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_ARRAY_BYTES = 2 * 1024**3

Message = tuple[dict[str, Any], list[np.ndarray]]


class FederationError(GalleryError):
    """Federated training cannot go on; the message is the reason a user reads."""


class RelayClosed(FederationError):
    """The other end of a relay pipe is gone (its process ended)."""


def flower_python() -> Path:
    """The interpreter that has flwr: `$GALLERY_FLOWER_PYTHON`, else `.venv-flower` beside this venv."""
    configured = os.environ.get(FLOWER_PYTHON_ENV)
    path = Path(configured) if configured else Path(sys.prefix).parent / ".venv-flower" / "bin" / "python"
    if not path.exists():
        raise FederationError(
            f"Flower's interpreter {path} does not exist: run `make install` (it builds .venv-flower) "
            f"or set {FLOWER_PYTHON_ENV} to a Python that has flwr (requirements/flower.txt)"
        )
    return path


def coordinator_tls() -> dict[str, str] | None:
    """The coordinator's TLS files (PEM paths by role) from `GALLERY_FEDERATION_*`, or None for plain gRPC;
    with `GALLERY_FEDERATION_CLIENT_CA` also `client_ca`, the CA the sites' certificates must chain to.
    FederationError when only some are set or one cannot be read."""
    given = {role: os.environ.get(name, "") for role, name in TLS_ENV.items()}
    client_ca = os.environ.get(CLIENT_CA_ENV, "")
    if not any(given.values()) and not client_ca:
        return None
    missing = [TLS_ENV[role] for role, path in given.items() if not path]
    if missing:
        needs = f"{CLIENT_CA_ENV} asks sites for certificates over TLS, which" if client_ca else "federation TLS"
        raise FederationError(f"{needs} needs all three files; {', '.join(missing)} not set")
    names = {**TLS_ENV, "client_ca": CLIENT_CA_ENV}
    if client_ca:
        given["client_ca"] = client_ca
    for role, path in given.items():
        inline = role == "client_ca" and path.lstrip().startswith(PEM_BEGIN)
        if not inline and not Path(path).is_file():
            raise FederationError(f"federation TLS: {names[role]}={path} is not a readable file")
    return given


def coordinator_site_tokens() -> dict[str, str] | None:
    """The sites the coordinator admits ({name: sha256 of its token}) from `GALLERY_FEDERATION_SITE_TOKENS`,
    or None to admit any site; FederationError when the list cannot be read."""
    text = os.environ.get(SITE_TOKENS_ENV, "").strip()
    if not text:
        return None
    try:
        return parse_site_tokens(text)
    except SiteTokensInvalid as exc:
        raise FederationError(str(exc)) from None


def flower_environment() -> dict[str, str]:
    """The environment of a Flower process: Flower's usage telemetry off (it would call out of a site)."""
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def write_message(stream: BinaryIO, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> int:
    """Write one message and flush; returns the bytes written (what crossed the pipe)."""
    contiguous = [np.ascontiguousarray(array) for array in arrays]
    for array in contiguous:
        if array.dtype.name not in ALLOWED_DTYPES:
            raise FederationError(f"relay: arrays of {array.dtype} cannot be sent (only {', '.join(ALLOWED_DTYPES)})")
    described = {**header, "arrays": [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in contiguous]}
    encoded = json.dumps(described).encode("utf-8")
    try:
        stream.write(struct.pack(">Q", len(encoded)) + encoded)
        for array in contiguous:
            stream.write(array.tobytes())
        stream.flush()
    except (BrokenPipeError, ValueError, OSError) as exc:
        raise RelayClosed(f"relay: the other process is gone ({exc})") from None
    return 8 + len(encoded) + sum(a.nbytes for a in contiguous)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise RelayClosed("relay: the other process closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> Message:
    """Read one message; RelayClosed when the writer is gone, FederationError when the message is malformed."""
    (length,) = struct.unpack(">Q", _read_exactly(stream, 8))
    if length > MAX_HEADER_BYTES:
        raise FederationError(f"relay: a header of {length} bytes is more than {MAX_HEADER_BYTES}")
    header = json.loads(_read_exactly(stream, length))
    if not isinstance(header, dict):
        raise FederationError("relay: a message header must be a JSON object")
    arrays = []
    for spec in header.pop("arrays", []):
        dtype, shape = str(spec["dtype"]), tuple(int(n) for n in spec["shape"])
        if dtype not in ALLOWED_DTYPES or any(n < 0 for n in shape):
            raise FederationError(f"relay: refused an array of {dtype} {list(shape)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes > MAX_ARRAY_BYTES:
            raise FederationError(f"relay: refused an array of {nbytes} bytes")
        arrays.append(np.frombuffer(_read_exactly(stream, nbytes), dtype=dtype).reshape(shape).copy())
    return header, arrays


def arrays_nbytes(arrays: Sequence[np.ndarray]) -> int:
    """The bytes of a list of arrays' values (what a model update weighs on the wire, without framing)."""
    return int(sum(np.asarray(a).nbytes for a in arrays))
