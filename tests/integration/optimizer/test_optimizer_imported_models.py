"""The optimizer on an imported model: only its ONNX file and splits are known (no trainer spec, no
PyTorch weights). A scikit-learn random forest through skl2onnx and the import's adapter: INT8 (nothing to
quantize) and FP16 (ONNX-ML operators) are refused with the reason, pruning too (no weights), and the
distilled student learns from the forest's answers with its own preprocessing fitted on the train rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from foreign_models import fit_digits, optimizer_inputs, skl2onnx_forest

from gallery_optimizer.pipeline import optimize
from gallery_optimizer.policy import OptimizationPolicy
from gallery_trainer.onnx_adapt import adapt_model

POLICY = OptimizationPolicy(student_hidden=[64], distill_epochs=30, accuracy_budget=0.03)


def test_an_imported_forest_is_distilled_and_quantized_but_not_pruned(tmp_path: Path) -> None:
    fitted = fit_digits()
    forest_file, forest = skl2onnx_forest(fitted)
    model = tmp_path / "model.onnx"
    model.write_bytes(adapt_model(forest_file).model)
    # an import's spec names its features and records no network: nothing is built from it
    spec = {"source": "import", "task": "classification", "feature_names": [f"pixel {i}" for i in range(64)]}
    inputs = optimizer_inputs(
        tmp_path, model, (fitted.x_train, fitted.y_train), (fitted.x_test, fitted.y_test), spec=spec
    )
    report = optimize(inputs, POLICY, tmp_path / "work", model="digits-forest", version=1)

    # a tree ensemble has no Gemm, MatMul or Conv: an "INT8" variant would be the FP32 graph under another name
    for name in ("int8_dynamic", "int8_static"):
        row = report.variant(name)
        assert row.path is None and f"{name} quantized nothing" in (row.error or ""), row.error
    # ONNX Runtime's FP16 converter mistypes a graph of ONNX-ML operators: refused with the reason
    fp16 = report.variant("fp16")
    assert fp16.path is None and "ONNX-ML operators (TreeEnsembleClassifier)" in (fp16.error or ""), fp16.error
    for name in ("pruned_magnitude", "pruned_structured"):
        row = report.variant(name)
        assert row.path is None and "an imported model has neither" in (row.error or "")

    student = report.variant("distilled")
    assert student.error is None and student.path is not None, student.error
    assert any("no stored spec" in note for note in student.notes)
    half = len(fitted.x_test) // 2  # the test split: the second half of the held-out rows
    x_test, y_test = fitted.x_test[half:], fitted.y_test[half:]
    forest_accuracy = float((forest.predict(x_test) == y_test).mean())
    session = ort.InferenceSession(str(student.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"features": x_test.astype(np.float32)})
    # the student, taking the same raw features, answers nearly as the forest does
    assert float((logits.argmax(axis=1) == y_test).mean()) >= forest_accuracy - 0.05
    assert student.accuracy == pytest.approx(float((logits.argmax(axis=1) == y_test).mean()), abs=1e-6)
