"""Drift of text inputs on seeded texts: quiet on the training distribution, the token row on another topic,
the length rows on longer texts, a warning between 0.1 and 0.25, and what odd texts are counted as."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from monitor_texts import text_classifier, texts
from onnx import TensorProto, helper

from gallery_monitor.drift import DriftRule
from gallery_monitor.text_drift import (
    RANKED_TEXT,
    TEXT_CHARS,
    TEXT_LENGTH,
    TOKENS,
    TextReference,
    TextSamples,
    evaluate_text_drift,
)
from gallery_monitor.text_profile import TextLimits, measure, tokens_of

RULE = DriftRule(psi_threshold=0.2, ks_alpha=0.001, min_samples=200, text_psi_threshold=0.25, text_warn_psi=0.1)
LIMITS = TextLimits()


@pytest.fixture(scope="module")
def classifier() -> ort.InferenceSession:
    return ort.InferenceSession(text_classifier(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def training() -> list[str]:
    return texts(np.random.default_rng(0), 3000)


@pytest.fixture(scope="module")
def reference(training: list[str], classifier: ort.InferenceSession) -> TextReference:
    x = np.array(training)
    assert x.dtype.kind == "U"  # the split contract's text `x`
    return TextReference.from_texts(x, predict(classifier, training))


def predict(classifier: ort.InferenceSession, window: list[str]) -> np.ndarray:
    return classifier.run(None, {"text": np.array(window)})[0].argmax(axis=1)


def judge(reference: TextReference, window: list[str], classifier: ort.InferenceSession, rule: DriftRule = RULE):
    samples = TextSamples.of([measure(t, LIMITS) for t in window])
    return evaluate_text_drift(reference, samples, predict(classifier, window), rule)


def psi_of(report, name: str) -> float:  # type: ignore[no-untyped-def]
    [row] = [f for f in report.features if f.name == name]
    return float(row.psi)


def test_the_training_texts_themselves_have_no_drift(reference, training, classifier) -> None:  # type: ignore[no-untyped-def]
    report = judge(reference, training, classifier)
    assert [f.name for f in report.features] != [] and {f.name for f in report.features} == {
        TEXT_LENGTH,
        TEXT_CHARS,
        TOKENS,
    }
    assert all(f.psi == pytest.approx(0.0, abs=1e-9) for f in report.features)
    assert not report.drifted and report.reasons == [] and report.ranked_by == RANKED_TEXT
    assert report.text is not None and report.text.unseen_token_share == 0.0 and report.text.warnings == []


def test_windows_from_the_training_distribution_stay_quiet(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    largest = 0.0
    for _ in range(30):
        report = judge(reference, texts(rng, 250), classifier)
        assert report.samples == 250 and len(report.features) == 3
        largest = max(largest, *(f.psi for f in report.features))
        assert not report.drifted, report.reasons
    assert 0.0 < largest < 0.1  # small windows wander a little, far from the 0.25 line


def test_texts_on_another_topic_drift_on_tokens_and_not_on_length(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    report = judge(reference, texts(np.random.default_rng(2), 300, topic="cooking"), classifier)
    assert report.drifted
    assert psi_of(report, TOKENS) > 0.25
    assert psi_of(report, TEXT_LENGTH) < 0.1 and psi_of(report, TEXT_CHARS) < 0.1
    assert report.features[0].name == TOKENS  # the largest drift first
    assert (
        report.reasons[0].startswith("tokens: PSI ")
        and "of tokens unseen in training (0.0% normally)" in (report.reasons[0])
    )
    assert not any(r.startswith("text length") for r in report.reasons)
    assert report.text is not None and report.text.unseen_token_share is not None
    assert report.text.unseen_token_share > 0.4  # the cooking words; the common words are still known
    # the moved tokens name training tokens that became rarer
    moved = report.text.moved_tokens
    assert moved and all(m["window_share"] < m["reference_share"] for m in moved)
    assert moved[0]["token"] in {"match", "goal", "team", "the"}


def test_longer_texts_on_the_same_topic_drift_on_length_alone(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    report = judge(reference, texts(np.random.default_rng(3), 300, mean_words=24), classifier)
    assert report.drifted
    assert psi_of(report, TEXT_LENGTH) > 0.25 and psi_of(report, TEXT_CHARS) > 0.25
    assert psi_of(report, TOKENS) < 0.1
    assert [r.split(":")[0] for r in report.reasons] == sorted(
        [TEXT_LENGTH, TEXT_CHARS], key=lambda n: -psi_of(report, n)
    )
    assert (
        report.reasons[0].split(": PSI ")[1].startswith(f"{psi_of(report, report.features[0].name):.3f} > 0.25 and KS")
    )


def test_a_small_shift_is_a_warning_not_drift(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    window = texts(rng, 480) + texts(rng, 20, topic="cooking")  # 4% of the texts on another topic
    report = judge(reference, window, classifier)
    assert 0.1 < psi_of(report, TOKENS) < 0.25
    # no text row drifts; the classifier's answers do (it calls those 20 texts cooking, training had none)
    assert [r.split(":")[0] for r in report.reasons] == ["predicted classes"]
    assert report.text is not None
    assert report.text.warnings == [f"tokens: PSI {psi_of(report, TOKENS):.3f} > 0.1, under 0.25"]


def test_thresholds_come_from_the_rule(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    window = texts(rng, 480) + texts(rng, 20, topic="cooking")
    strict = DriftRule(min_samples=200, text_psi_threshold=0.1, text_warn_psi=0.05)
    report = judge(reference, window, classifier, strict)
    assert report.drifted and report.reasons[0].startswith("tokens: PSI ") and "> 0.1 " in report.reasons[0]
    assert all(f.threshold == 0.1 for f in report.features)
    evidence = report.evidence(strict)
    assert evidence["text"]["psi_threshold"] == 0.1 and evidence["text"]["warn_psi"] == 0.05  # type: ignore[index]
    assert {f["name"] for f in evidence["features"]} == {TEXT_LENGTH, TEXT_CHARS, TOKENS}  # type: ignore[union-attr]


def test_too_few_texts_are_measured_but_not_judged(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    report = judge(reference, texts(np.random.default_rng(5), 50, topic="cooking"), classifier)
    assert psi_of(report, TOKENS) > 0.25 and not report.drifted
    assert report.reasons == ["50 samples in the window, 200 needed to judge drift"]


def test_empty_undecodable_and_huge_texts_are_counted_not_fatal(reference, classifier) -> None:  # type: ignore[no-untyped-def]
    huge = "goal " * 1_000_000
    odd = [
        measure("", LIMITS),
        measure(b"\xff\xfe goal", LIMITS),
        measure("match \ufffd", LIMITS),
        measure(huge, LIMITS),
    ]
    assert [(m.tokens, m.undecodable, m.truncated) for m in odd] == [
        (0, False, False), (2, True, False), (2, True, False), (LIMITS.max_tokens, False, True),
    ]  # fmt: skip
    assert odd[3].chars == len(huge)  # the length in characters is counted in full
    normal = [measure(t, LIMITS) for t in texts(np.random.default_rng(6), 300)]
    report = evaluate_text_drift(reference, TextSamples.of(normal + odd), None, RULE)
    assert report.samples == 304 and not report.drifted
    assert report.text is not None
    assert (report.text.empty_texts, report.text.undecodable_texts, report.text.truncated_texts) == (1, 2, 1)
    assert report.text.max_tokens_read == LIMITS.max_tokens


def test_a_window_of_empty_texts_drifts_on_length_and_has_no_token_row(reference) -> None:  # type: ignore[no-untyped-def]
    report = evaluate_text_drift(reference, TextSamples.of([measure("", LIMITS)] * 300), None, RULE)
    assert report.drifted and {f.name for f in report.features} == {TEXT_LENGTH, TEXT_CHARS}
    assert report.text is not None and report.text.unseen_token_share is None and report.text.empty_texts == 300


def test_training_texts_without_a_single_token_make_no_reference() -> None:
    with pytest.raises(ValueError, match="the 3 training texts hold no tokens"):
        TextReference.from_texts(np.array(["", "   ", ""]))


def test_tokens_are_read_as_the_models_vectorizer_reads_them() -> None:
    """Lowercase, then runs of spaces: what ONNX Runtime's StringNormalizer and StringSplit give."""
    graph = helper.make_graph(
        [
            helper.make_node("StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C.UTF-8"),
            helper.make_node("StringSplit", ["lower"], ["tokens", "counts"]),
        ],
        "split",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [
            helper.make_tensor_value_info("tokens", TensorProto.STRING, ["n", "w"]),
            helper.make_tensor_value_info("counts", TensorProto.INT64, ["n"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sample = [
        "Hello  World",
        "Tab\there\nnew line",
        "  lead and trail  ",
        "",
        "ÉCOLE Über straße",
        "a\u00a0b (dog, cat)",
    ]
    tokens, counts = session.run(None, {"text": np.array(sample)})
    for text, row, count in zip(sample, tokens, counts, strict=True):
        assert tokens_of(text, LIMITS)[0] == list(row[:count]), text
