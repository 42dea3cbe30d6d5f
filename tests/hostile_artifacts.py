"""Artifacts an attacker would send, built for the tests: NPZ decompression bombs, NPZ files whose zip
entries lie about their sizes, and ONNX models that never finish or allocate gigabytes.

Everything here is built by hand (zip records with `struct`, graphs with `onnx.helper`) so each file is
exactly the attack it names and nothing a library would tidy up.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BOMB_SEGMENT_BYTES = 40_000_000  # a 4 GB bomb is 100 of these: 40 MB of zeros deflate to ~39 KB


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A .npy 1.0 header for `shape` and `dtype`, padded as numpy pads it."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def deflate(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush()


def npz_bomb(rows: int = 1_000_000, columns: int = 1000, *, extra: dict[str, np.ndarray] | None = None) -> bytes:
    """An NPZ of ~4 MB whose `x.npy` inflates to `rows` x `columns` FP32 zeros (4 GB by default) and a small `y`.

    The deflate stream is one 40 MB zero block, flushed so it stands alone, repeated: building it takes a
    second, not the minute compressing 4 GB would.
    """
    data_bytes = rows * columns * 4
    assert data_bytes % BOMB_SEGMENT_BYTES == 0, "the bomb is whole segments of zeros"
    header = npy_header((rows, columns))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(BOMB_SEGMENT_BYTES)
    segment_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = segment_compressor.compress(zeros) + segment_compressor.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final, empty block
    repeats = data_bytes // BOMB_SEGMENT_BYTES
    crc = zlib.crc32(header)
    for _ in range(repeats):
        crc = zlib.crc32(zeros, crc)
    members = [("x.npy", crc, head + segment * repeats + tail, len(header) + data_bytes)]
    labels = {"y": np.zeros(4, np.int64), **(extra or {})}
    for name, array in labels.items():
        raw = _npy(array)
        members.append((f"{name}.npy", zlib.crc32(raw), deflate(raw), len(raw)))
    return _zip_records(members)


def _zip_records(members: list[tuple[str, int, bytes, int]]) -> bytes:
    """Local headers, data and a central directory, as in APPNOTE 4.3 (deflate, no zip64: sizes < 4 GiB)."""
    out = io.BytesIO()
    central = io.BytesIO()
    for name, crc, compressed, size in members:
        encoded = name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(compressed), size, len(encoded), 0))
        out.write(encoded)
        out.write(compressed)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                8,
                0,
                0,
                crc,
                len(compressed),
                size,
                len(encoded),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(encoded)
    directory = central.getvalue()
    start = out.tell()
    out.write(directory)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), start, 0))
    return out.getvalue()


def lying_npz(real_rows: int = 250_000, declared_size: int = 1000) -> bytes:
    """An NPZ whose `x.npy` inflates to `real_rows` x 4 FP32 values (4 MB by default) but whose zip entry
    declares `declared_size` bytes, plus an honest `y`: a reader that trusts the declared size is fooled.
    The CRC is that of the declared prefix, so a reader that stops at the declared size sees no corruption."""
    x, y = _npy(np.ones((real_rows, 4), np.float32)), _npy(np.zeros(real_rows, np.int64))
    return _zip_records(
        [
            ("x.npy", zlib.crc32(x[:declared_size]), deflate(x), declared_size),
            ("y.npy", zlib.crc32(y), deflate(y), len(y)),
        ]
    )


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_with_header_shape(shape: tuple[int, ...]) -> bytes:
    """An NPZ whose `x.npy` header claims `shape` (FP32) but whose data is 16 bytes; and a `y`."""
    raw = npy_header(shape) + bytes(16)
    labels = _npy(np.zeros(2, np.int64))
    return _zip_records(
        [
            ("x.npy", zlib.crc32(raw), deflate(raw), len(raw)),
            ("y.npy", zlib.crc32(labels), deflate(labels), len(labels)),
        ]
    )


def loop_model(n_features: int, n_classes: int, trip_count: int = 2**40) -> bytes:
    """`features` FP32 [-1, F] in, `logits` FP32 [-1, C] out: a MatMul, then an ONNX `Loop` that adds 1 to
    the logits `trip_count` times. With 2**40 it runs for days."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "add_one",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", n_classes]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", n_classes]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    weights = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["scores"]),
            helper.make_node("Loop", ["trip_count", "keep_going", "scores"], ["logits"], body=body),
        ],
        "endless_loop",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist()),
            helper.make_tensor("trip_count", TensorProto.INT64, [], [trip_count]),
            helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def allocating_model(n_features: int, n_classes: int, side: int = 2**15) -> bytes:
    """`features` FP32 [-1, F] in, `logits` [-1, C] out, computed through a `side` x `side` FP32 tensor of
    ones (4 GiB by default) that ConstantOfShape allocates on every run."""
    weights = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["side_by_side"],
                ["huge"],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("ReduceMax", ["huge"], ["peak"], keepdims=0),
            helper.make_node("MatMul", ["features", "W"], ["scores"]),
            helper.make_node("Mul", ["scores", "peak"], ["logits"]),
        ],
        "allocates",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist()),
            helper.make_tensor("side_by_side", TensorProto.INT64, [2], [side, side]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def data_triggered_loop_model(n_features: int, n_classes: int) -> bytes:
    """`features` FP32 [-1, F] in, `logits` [-1, C] out: a MatMul, then a `Loop` that adds 1 to the logits as
    many times as the largest feature value in the batch. Harmless on features below 1, endless on a row
    holding 1e12: a model that passes one measurement and freezes on other data."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "add_one",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", n_classes]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", n_classes]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    weights = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["scores"]),
            helper.make_node("ReduceMax", ["features"], ["largest"], keepdims=0),
            helper.make_node("Cast", ["largest"], ["trip_count"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trip_count", "", "scores"], ["logits"], body=body),
        ],
        "data_triggered_loop",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        [helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


LOOKUP_TABLE = np.arange(15, dtype=np.float32).reshape(5, 3)


def lookup_model() -> bytes:
    """rows = table[index] (INT64 [-1] -> FP32 [-1, 3]); an index past 4 makes ONNX Runtime raise.

    One request with a bad index in a dynamic batch is the failure that must not reach the others.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(LOOKUP_TABLE, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8).SerializeToString()
