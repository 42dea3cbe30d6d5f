"""Run the bundled model: `python run.py input.npy|input.csv [--output predictions.json]`.

Part of a Model Gallery edge bundle; needs only Python 3.9+, numpy and onnxruntime. It reads model.onnx,
signature.json and classes.json from its own folder, checks the model's sha256, runs the raw feature rows
(one row per line of a CSV, or a 2-D .npy array) and prints one predicted class per line; with --output
it also writes the predictions, class indices and logits as JSON. The preprocessing is inside the model:
feed raw features. A text model (its signature's input is BYTES) reads raw texts instead: one per line of a
UTF-8 .txt file, or a 1-D .npy array of strings; its tokenizer is inside the model too. A regressor (its
signature's task is "regression") prints each row's predictions, comma-separated, instead of a class.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def load_rows(path: Path, n_features: int) -> np.ndarray:
    """The input rows as FP32 [rows, n_features]; SystemExit with a message when they do not fit."""
    if path.suffix == ".npy":
        rows = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        rows = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    else:
        raise SystemExit(f"error: {path.name}: give a .npy or .csv file")
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != n_features:
        raise SystemExit(f"error: {path.name}: expected rows of {n_features} features, got shape {rows.shape}")
    return rows


def load_texts(path: Path) -> np.ndarray:
    """The input texts as a 1-D string array; SystemExit with a message when they do not fit."""
    if path.suffix == ".npy":
        texts = np.load(path, allow_pickle=False)
        if texts.ndim != 1 or texts.dtype.kind not in "US":
            raise SystemExit(f"error: {path.name}: expected a 1-D array of strings, got {texts.dtype} {texts.shape}")
        return texts.astype(str)
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines:
            raise SystemExit(f"error: {path.name}: no texts (one per line)")
        return np.array(lines, dtype=str)
    raise SystemExit(f"error: {path.name}: give a .txt file (one text per line) or a .npy array of strings")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Predict with the bundled ONNX model.")
    parser.add_argument(
        "input", type=Path, help="raw feature rows: .npy (2-D) or .csv (no header); texts: .txt or .npy"
    )
    parser.add_argument("--output", type=Path, help="also write predictions as JSON here")
    args = parser.parse_args(argv)

    signature = json.loads((HERE / "signature.json").read_text())
    classes = json.loads((HERE / "classes.json").read_text())
    model = (HERE / "model.onnx").read_bytes()
    if hashlib.sha256(model).hexdigest() != signature["sha256"]:
        raise SystemExit("error: model.onnx does not match the sha256 in signature.json")
    (tensor_in,), (tensor_out,) = signature["inputs"], signature["outputs"]
    if tensor_in["datatype"] == "BYTES":
        rows = load_texts(args.input)
    else:
        rows = load_rows(args.input, int(tensor_in["shape"][1]))

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    logits = session.run([tensor_out["name"]], {tensor_in["name"]: rows})[0]
    if signature.get("task") == "regression":  # the outputs are the predictions themselves
        for row in logits:
            print(",".join(f"{value:.6g}" for value in row))
        if args.output is not None:
            args.output.write_text(json.dumps({"predictions": logits.tolist()}))
        return 0
    indices = logits.argmax(axis=1)
    labels = [classes[i] if i < len(classes) else str(i) for i in indices]
    for label in labels:
        print(label)
    if args.output is not None:
        result = {"predictions": labels, "class_indices": indices.tolist(), "logits": logits.tolist()}
        args.output.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
