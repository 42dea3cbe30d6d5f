"""The text vectorizer in ONNX ops: fitted on training texts only, counting what a reader would call the same
word, equal to a plain Python count, and exported with the network as one file that takes raw strings."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gallery_common.nn import ExportedModel, build_network
from gallery_trainer.data import Dataset
from gallery_trainer.prepare import FeatureTransform, Split, TargetScaling
from gallery_trainer.spec import ModelSpec, PreparationSpec
from gallery_trainer.text_data import wordnet_topics
from gallery_trainer.text_export import export_text_onnx, text_parity_max_abs_diff, text_signature
from gallery_trainer.text_prepare import prepare_text
from gallery_trainer.text_vectorizer import VectorizerSettings, fit_vectorizer, graph_features, words

TRAIN = ["The dog barks.", "A dog, a cat; a bird", "(Dog) sleeps", "cat food", "bird seed and cat food"]


def python_features(vocabulary: tuple[str, ...], idf: np.ndarray | None, texts: list[str]) -> np.ndarray:
    """The same features written plainly: counts of each vocabulary word, times idf, over the row's L2 norm."""
    column = {word: i for i, word in enumerate(vocabulary)}
    out = np.zeros((len(texts), len(vocabulary)), dtype=np.float64)
    for row, text in enumerate(texts):
        for word in words(text):
            if word in column:
                out[row, column[word]] += 1
    if idf is not None:
        out *= idf
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def test_vocabulary_is_ranked_by_document_frequency_then_alphabetically() -> None:
    vectorizer = fit_vectorizer(TRAIN, VectorizerSettings(max_words=3, min_documents=1, idf=False))
    # cat: 3 texts, dog: 3, a: 1 text (though 3 times), bird: 2, food: 2
    assert vectorizer.vocabulary == ("cat", "dog", "bird")
    rare = fit_vectorizer(TRAIN, VectorizerSettings(min_documents=2, idf=False))
    assert rare.vocabulary == ("cat", "dog", "bird", "food")
    with pytest.raises(ValueError, match=r"preparation\.text\.min_documents: no word appears in 9 or more"):
        fit_vectorizer(TRAIN, VectorizerSettings(min_documents=9))


def test_the_graph_counts_a_word_whatever_its_case_and_punctuation() -> None:
    vectorizer = fit_vectorizer(TRAIN, VectorizerSettings(min_documents=1, idf=False))
    dog = vectorizer.vocabulary.index("dog")
    texts = ['Dog, (dog) DOG. "dog" dogs', "", "zebra unicorn", "dog\ncat\r\nbird\tfood\xa0seed  and"]
    counts = graph_features(vectorizer.to_onnx(), texts)
    # four counts of dog and nothing else in the first row (dogs is another word); no words, no features
    assert counts[0, dog] == pytest.approx(1.0) and np.count_nonzero(counts[0]) == 1
    assert not counts[1].any() and not counts[2].any()
    # line breaks, tabs and no-break spaces separate words too (ONNX's StringSplit alone splits on spaces)
    assert {vectorizer.vocabulary[i] for i in np.nonzero(counts[3])[0]} == {"dog", "cat", "bird", "food", "seed", "and"}
    assert counts.dtype == np.float32 and counts.shape == (4, vectorizer.n_features)
    assert graph_features(vectorizer.to_onnx(), []).shape == (0, vectorizer.n_features)


@pytest.mark.parametrize("idf", [False, True])
def test_onnx_features_equal_the_python_count(idf: bool) -> None:
    dataset = wordnet_topics()
    train = dataset.x[::3]
    # held-out definitions, some with their words joined by line breaks and tabs as text files have them
    other = np.array([text.replace(" ", "\n", 2).replace(" ", "\t", 1) for text in dataset.x[1::7].tolist()])
    vectorizer = fit_vectorizer(train, VectorizerSettings(max_words=800, min_documents=2, idf=idf))
    expected = python_features(vectorizer.vocabulary, vectorizer.idf, other.tolist())
    actual = vectorizer.features(other)
    assert np.abs(actual - expected).max() < 1e-6
    assert np.count_nonzero(actual.sum(axis=1)) > 0.9 * len(other)  # most texts hit the vocabulary


def test_the_vectorizer_sees_only_the_training_split() -> None:
    dataset = wordnet_topics()
    prepared = prepare_text(dataset, PreparationSpec(), seed=0)
    training_words = {word for text in prepared.data.train.x.tolist() for word in words(text)}
    assert set(prepared.vectorizer.vocabulary) <= training_words
    held_out_only = {word for text in prepared.data.test.x.tolist() for word in words(text)} - training_words
    assert held_out_only and not held_out_only & set(prepared.vectorizer.vocabulary)
    # published splits keep the texts; the ranks' features are the graph's features of those texts
    assert prepared.data.train.x.dtype.kind == "U"
    assert np.array_equal(prepared.train_features.x, prepared.vectorizer.features(prepared.data.train.x))
    assert prepared.train_features.x.shape == (len(prepared.data.train), prepared.vectorizer.n_features)


def test_identical_texts_in_two_splits_are_dropped_from_the_later_one() -> None:
    texts = np.array([f"text number {i % 30} about {'cats' if i % 2 else 'dogs'}" for i in range(60)])
    dataset = Dataset(texts, np.arange(60) % 2, "classification", ["a", "b"], ["text"], None, "f")
    prepared = prepare_text(dataset, PreparationSpec(), seed=0)
    train = set(prepared.data.train.x.tolist())
    assert not train & set(prepared.data.validation.x.tolist()) and not train & set(prepared.data.test.x.tolist())
    assert sum(prepared.data.leakage["dropped"].values()) > 0


def test_export_joins_vectorizer_and_network_into_one_file_that_takes_strings(tmp_path: Path) -> None:
    vectorizer = fit_vectorizer(TRAIN, VectorizerSettings(min_documents=1))
    n = vectorizer.n_features
    torch.manual_seed(0)
    network = build_network(
        ModelSpec(hidden=[8], activation="gelu"),
        FeatureTransform(np.zeros(n, np.float32), np.ones(n, np.float32)),
        3,
        None,
    )
    model = ExportedModel(network, TargetScaling()).eval()
    path = tmp_path / "model.onnx"
    export_text_onnx(model, vectorizer.to_onnx(), n, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file, the network's own export removed
    loaded = onnx.load(str(path))
    assert loaded.ir_version == 10
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (text_input,) = session.get_inputs()
    assert (text_input.name, text_input.type) == ("text", "tensor(string)") and len(text_input.shape) == 1
    assert [o.name for o in session.get_outputs()] == ["logits"]
    texts = np.array(["a dog and a cat", "", "bird seed"])
    diff, outputs = text_parity_max_abs_diff(model, vectorizer.to_onnx(), path, texts)
    assert diff < 1e-5 and outputs.shape == (3, 3)
    with torch.no_grad():
        direct = model(torch.from_numpy(vectorizer.features(texts))).numpy()
    assert np.abs(outputs - direct).max() < 1e-5
    signature = text_signature(3)
    assert signature.inputs[0].model_dump() == {"name": "text", "datatype": "BYTES", "shape": [-1]}


def test_split_features_file_round_trips_as_a_text_split(tmp_path: Path) -> None:
    from gallery_common.contracts import read_split
    from gallery_trainer.engine.job import save_split

    save_split(tmp_path / "s.npz", Split(np.array(["one text", "another"]), np.array([0, 1])))
    split = read_split(tmp_path / "s.npz")
    assert split.is_text and split.x.tolist() == ["one text", "another"] and split.y.dtype == np.int64


def test_a_text_job_workdir_holds_text_splits_and_the_ranks_features(tmp_path: Path) -> None:
    from gallery_common.contracts import read_split
    from gallery_trainer.engine.job import FEATURE_FILES, VECTORIZER_FILE, load_training_split
    from gallery_trainer.pipeline import prepare_job
    from gallery_trainer.spec import parse_spec

    text_job = {"name": "t", "data": {"source": "builtin", "name": "wordnet_topics"}}
    prepared = prepare_job(parse_spec(text_job | {"preparation": {"text": {"max_words": 500}}}), tmp_path)
    assert prepared.job.n_features == 500 and prepared.feature_names == ["text"]
    published = read_split(tmp_path / "train_split.npz")
    ranks = load_training_split(tmp_path, "train")
    assert published.is_text and ranks.x.shape == (len(published), 500) and ranks.x.dtype == np.float32
    vectorizer = onnx.load(str(tmp_path / VECTORIZER_FILE))
    assert np.array_equal(ranks.x, graph_features(vectorizer, published.x))
    # a tabular job in the same workdir must not train on the text job's features
    prepare_job(parse_spec({"name": "iris", "data": {"source": "builtin", "name": "iris"}}), tmp_path)
    assert not any((tmp_path / name).exists() for name in (*FEATURE_FILES.values(), VECTORIZER_FILE))
    assert load_training_split(tmp_path, "train").x.shape[1] == 4
