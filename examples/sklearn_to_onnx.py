"""Fit a scikit-learn classifier on the wine data set and write what `gallery models import` takes:

    python examples/sklearn_to_onnx.py OUT_DIR
    gallery models import OUT_DIR/wine-forest.onnx --name wine-forest \\
        --train OUT_DIR/train.npz --test OUT_DIR/test.npz --class-names class_0,class_1,class_2

The model goes through skl2onnx unchanged (its ZipMap output included: the trainer adapts it). Each
split is an NPZ of `x` (FP32 features) and `y` (the class index of each row). Needs scikit-learn and
skl2onnx (`pip install skl2onnx`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main(out: Path) -> None:
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=50, random_state=0))
    model.fit(x_train, y_train)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wine-forest.onnx").write_bytes(to_onnx(model, x_train[:1]).SerializeToString())
    np.savez(out / "train.npz", x=x_train, y=y_train)
    np.savez(out / "test.npz", x=x_test, y=y_test)
    print(f"accuracy on the test rows: {model.score(x_test, y_test):.4f}; files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "wine-import"))
