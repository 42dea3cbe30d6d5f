"""The one-line event rendering of `gallery events tail`."""

from __future__ import annotations

from datetime import UTC, datetime

from gallery_cli.event_lines import event_line, summarize
from gallery_common.events import ArtifactRef, ModelOptimized, ModelRejected, ModelTrained, VariantResult, make_event

SHA = "ab" * 32


def test_a_trained_event_fits_on_one_line_with_its_trace() -> None:
    payload = ModelTrained(
        model="digits",
        run_id="run-7",
        artifacts={
            "onnx": ArtifactRef(uri="s3://m/digits/model.onnx", sha256=SHA),
            "weights": ArtifactRef(uri="s3://m/digits/w.safetensors", sha256=SHA),
        },
        metrics={"val_accuracy": 0.971234},
    )
    event = make_event(payload, source="/modelgallery/trainer", event_id="3f2a9c1e-0000-4000-8000-000000000000")
    event.time = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    event.traceparent = f"00-{'4b' * 16}-{'00f0' * 4}-01"
    assert event_line(event) == (
        "2026-01-02T03:04:05.678Z  model.trained.default  digits/run-7  3f2a9c1e  "
        f"trace={'4b' * 16}  artifacts=[onnx,weights] metrics={{val_accuracy:0.9712}}"
    )


def test_summary_shows_artifact_uris_and_counts_long_lists() -> None:
    payload = ModelOptimized(
        model="digits",
        version=3,
        recommended="int8",
        recommended_artifact=ArtifactRef(uri="s3://m/int8.onnx", sha256=SHA),
        variants=[VariantResult(name="fp32"), VariantResult(name="int8")],
    )
    assert summarize(payload) == "recommended=int8 recommended_artifact=s3://m/int8.onnx variants=[2 items]"


def test_summary_is_cut_to_width() -> None:
    payload = ModelRejected(model="digits", version=2, reasons=["accuracy 0.41 below the 0.90 gate"] * 10)
    text = summarize(payload, width=40)
    assert len(text) == 40 and text.endswith("…") and text.startswith("reasons=[accuracy 0.41")
    assert "trace=-" in event_line(make_event(payload, source="/x"))
