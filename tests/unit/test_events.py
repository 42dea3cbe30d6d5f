import orjson
import pytest

from gallery_common.events import (
    PAYLOADS,
    ArtifactRef,
    InvalidEvent,
    ModelDegraded,
    ModelExperimentConcluded,
    ModelTrained,
    json_schemas,
    make_event,
    parse_event,
)

SHA = "ab" * 32


def trained() -> ModelTrained:
    return ModelTrained(
        model="digits",
        run_id="run-7",
        artifacts={"onnx": ArtifactRef(uri="s3://models/digits/run-7/model.onnx", sha256=SHA, size=10)},
        metrics={"val_accuracy": 0.97},
    )


def test_envelope_is_cloudevents_structured_json() -> None:
    event = make_event(trained(), source="/modelgallery/trainer")
    doc = orjson.loads(event.to_json())
    assert doc["specversion"] == "1.0"
    assert doc["type"] == "io.modelgallery.model.trained.v1"
    assert doc["subject"] == "digits/run-7"
    assert doc["datacontenttype"] == "application/json"
    assert doc["data"]["artifacts"]["onnx"]["sha256"] == SHA
    assert event.nats_subject == "model.trained.default"


def test_round_trip_gives_the_typed_payload_back() -> None:
    event = make_event(ModelDegraded(model="digits", version=3, kind="drift", reason="PSI 0.4"), source="/m")
    event.traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    parsed = parse_event(event.to_json())
    assert isinstance(parsed.data, ModelDegraded)
    assert parsed.subject == "digits/3"
    assert parsed.traceparent == event.traceparent
    assert parsed.id == event.id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"type": "io.modelgallery.model.exploded.v1"}', "unknown event type"),
        (
            b'{"type": "io.modelgallery.model.trained.v1", "source": "s", "subject": "a/b", "data": {"model": "a"}}',
            "data.run_id",
        ),
    ],
)
def test_malformed_events_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw)


def test_artifacts_travel_by_reference_only() -> None:
    with pytest.raises(ValueError):
        ArtifactRef(uri="file:///x", sha256="not-a-digest")
    with pytest.raises(ValueError):
        ArtifactRef(uri="data:base64,AAAA", sha256=SHA)


def test_every_event_has_a_schema() -> None:
    schemas = json_schemas()
    assert set(schemas) == {f"io.modelgallery.model.{name}.v1" for name in PAYLOADS}
    assert {
        "trained",
        "validated",
        "rejected",
        "optimized",
        "deployed",
        "deployment_failed",
        "rolled_back",
        "degraded",
        "outcome",
        "experiment_concluded",
        "usage",
    } == set(PAYLOADS)
    assert "data" in schemas["io.modelgallery.model.rolled_back.v1"]["properties"]


def test_an_experiment_concluded_event_names_the_winner_as_its_subject() -> None:
    payload = ModelExperimentConcluded(
        model="iris",
        experiment_id="e1",
        outcome="winner",
        winner=4,
        control=3,
        versions=[3, 4],
        metric="accuracy",
        effect=0.031,
        interval=(0.004, 0.058),
        p_value=0.03,
        samples={"3": 4100, "4": 4100},
        traffic_moved=True,
        reason="version 4 wins",
    )
    event = parse_event(make_event(payload, "/deployer").to_json())
    assert event.subject == "iris/4" and event.data == payload
    with pytest.raises(InvalidEvent, match="versions"):
        parse_event(make_event(payload, "/deployer").to_json().replace(b"[3,4]", b"[3]"))
