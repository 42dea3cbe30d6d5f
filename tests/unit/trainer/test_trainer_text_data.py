"""Text data sets: a CSV of (text, label), a folder of .txt files per class, the built-in wordnet_topics set,
and the job-spec rules for text jobs; every refusal names the field, line or file at fault."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from gallery_common.artifacts import FileArtifactStore
from gallery_trainer.data import DataError, load_dataset
from gallery_trainer.spec import DataSpec, SpecError, parse_spec
from gallery_trainer.text_data import PER_CLASS, WORDNET_TOPICS

EXAMPLE_SPEC = Path(__file__).resolve().parents[3] / "examples" / "text-topics.yaml"
CSV = "id,text,label\n1,A dog barks at night,animal\n2,Fresh bread and butter,food\n3,The cat sleeps,animal\n"


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore((tmp_path / "artifacts").as_uri())


def csv_spec(store: FileArtifactStore, content: bytes, **fields: str) -> DataSpec:
    ref = store.put("datasets/texts.csv", content)
    return DataSpec(source="text_csv", uri=ref.uri, sha256=hashlib.sha256(content).hexdigest(), **fields)  # type: ignore[arg-type]


def test_text_csv_gives_one_unicode_text_per_row_and_label_indices(store: FileArtifactStore) -> None:
    dataset = load_dataset(csv_spec(store, CSV.encode()), store)
    assert dataset.x.dtype.kind == "U" and dataset.x.shape == (3,)
    assert dataset.x.tolist() == ["A dog barks at night", "Fresh bread and butter", "The cat sleeps"]
    assert dataset.class_names == ["animal", "food"] and dataset.y.tolist() == [0, 1, 0]
    assert dataset.feature_names == ["text"] and dataset.task == "classification"


def test_text_csv_columns_are_named_by_the_spec(store: FileArtifactStore) -> None:
    content = b"topic,body\nx,first text\ny,second text\n"
    dataset = load_dataset(csv_spec(store, content, text_column="body", target="topic"), store)
    assert dataset.x.tolist() == ["first text", "second text"] and dataset.class_names == ["x", "y"]
    with pytest.raises(DataError, match=r"data\.text_column: no column 'text' in the CSV header \(topic, body\)"):
        load_dataset(csv_spec(store, content, target="topic"), store)
    with pytest.raises(DataError, match=r"data\.target: no column 'label'"):
        load_dataset(csv_spec(store, content, text_column="body"), store)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,label\n  ,a\nsome text,b\n", r"data: CSV line 2: the text is empty"),
        (b"text,label\none,a\ntwo,a\n", r"data: classification needs at least 2 classes, found 1"),
        (b"text,label\none,\ntwo,b\n", r"data\.target: CSV line 2 has no label"),
        (b"text,label\ncaf\xe9,a\n", r"data: the CSV file is not UTF-8 text"),
        (b"text,label\n", r"data: the CSV file needs a header row and at least one text"),
        (b"text,label\n" + b"x" * 20_001 + b",a\nshort,b\n", r"more than the 20000 allowed"),
    ],
)
def test_bad_text_csv_is_refused_naming_the_line(store: FileArtifactStore, content: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(csv_spec(store, content), store)


def write_folder(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_text_folder_classes_are_subfolders(tmp_path: Path) -> None:
    write_folder(
        tmp_path / "docs",
        {
            "spam/1.txt": b"win money now\n",
            "spam/2.TXT": b"cheap pills",
            "ham/a.txt": b"lunch at noon?",
            "ham/x.md": b"no",
        },
    )
    dataset = load_dataset(DataSpec(source="text_folder", path=str(tmp_path / "docs")))
    assert dataset.class_names == ["ham", "spam"]
    assert dataset.x.tolist() == ["lunch at noon?", "win money now", "cheap pills"]
    assert dataset.y.tolist() == [0, 1, 1]


def test_text_folder_in_the_store(store: FileArtifactStore) -> None:
    store.put("datasets/mail/spam/1.txt", b"win money")
    store.put("datasets/mail/ham/1.txt", b"see you")
    dataset = load_dataset(DataSpec(source="text_folder", uri=store.uri_for("datasets/mail")), store)
    assert dataset.class_names == ["ham", "spam"] and dataset.x.tolist() == ["see you", "win money"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a/1.txt": b"fine", "b/2.txt": b"\xff\xfe\xfa bad"}, r"data: b/2\.txt is not UTF-8 text"),
        ({"a/1.txt": b"fine", "b/2.txt": b" \n "}, r"data: b/2\.txt: the text is empty"),
        ({"a/1.txt": b"one", "a/2.txt": b"two"}, r"found 1"),
        ({"a/1.md": b"one"}, r"data: no \.txt files in class subfolders"),
    ],
)
def test_bad_text_folders_are_refused_naming_the_file(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    write_folder(tmp_path / "docs", files)
    with pytest.raises(DataError, match=message):
        load_dataset(DataSpec(source="text_folder", path=str(tmp_path / "docs")))


def test_text_folder_outside_the_data_roots_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_DATA_ROOTS", str(tmp_path / "elsewhere"))
    write_folder(tmp_path / "docs", {"a/1.txt": b"one", "b/1.txt": b"two"})
    with pytest.raises(DataError, match=r"data\.path: .* not an absolute path inside the data roots"):
        load_dataset(DataSpec(source="text_folder", path=str(tmp_path / "docs")))


def test_wordnet_topics_are_wordnet_definitions_built_the_same_way_every_time() -> None:
    first = load_dataset(DataSpec(source="builtin", name="wordnet_topics"))
    second = load_dataset(DataSpec(source="builtin", name="wordnet_topics"))
    assert first.class_names == list(WORDNET_TOPICS)
    assert first.x.dtype.kind == "U" and len(first.x) == PER_CLASS * len(WORDNET_TOPICS)
    assert np.bincount(first.y).tolist() == [PER_CLASS] * len(WORDNET_TOPICS)
    assert first.fingerprint == second.fingerprint and first.x.tolist() == second.x.tolist()
    # WordNet 3.0's first noun.animal synset (the kingdom Animalia), its gloss without the example sentences
    assert first.x[0] == "taxonomic kingdom comprising all living or extinct animals"
    assert all(text.strip() and '"' not in text for text in first.x.tolist()[:50])


def test_text_specs_check_their_fields() -> None:
    text_job = {"name": "topics", "data": {"source": "builtin", "name": "wordnet_topics"}}
    spec = parse_spec(text_job)
    assert spec.data.is_text and spec.preparation.vectorizer.max_words == 5000 and spec.preparation.vectorizer.idf

    def problems(**sections: object) -> list[str]:
        with pytest.raises(SpecError) as caught:
            parse_spec({**text_job, **sections})
        return caught.value.problems

    assert problems(data={"source": "text_csv"}) == [
        "data.uri: required for a text_csv data set (an artifact store URI)",
        "data.sha256: required for a text_csv data set",
    ]
    assert problems(data={"source": "text_folder"}) == [
        "data.path: give exactly one of path (a local folder) or uri (an artifact store folder)"
    ]
    assert problems(data={"source": "text_folder", "path": "/data/docs", "task": "regression"}) == [
        "data.task: text data sets are classification data sets"
    ]
    assert problems(model={"architecture": "cnn"}) == ["model.architecture: a text model is an mlp over word features"]
    assert problems(preparation={"pca": {"components": 2}}) == [
        "preparation: texts are vectorized by preparation.text; remove pca and select_k_best"
    ]
    assert problems(preparation={"augmentation": {"tabular": {"noise": 0.1}}}) == [
        "preparation.augmentation: a text job augments with augmentation.text only"
    ]
    assert problems(preparation={"text": {"max_words": 0, "min_documents": 0}}) == [
        "preparation.text.max_words: Input should be greater than or equal to 1",
        "preparation.text.min_documents: Input should be greater than or equal to 1",
    ]
    assert problems(preparation={"augmentation": {"text": {"copies": 2}}}) == [
        "preparation.augmentation.text.synonyms: give at least one of synonyms, insert, swap or delete above 0"
    ]
    assert problems(preparation={"augmentation": {"text": {"copies": 17, "delete": 1.0, "synonyms": 2}}}) == [
        "preparation.augmentation.text.copies: Input should be less than or equal to 16",
        "preparation.augmentation.text.synonyms: Input should be less than or equal to 1",
        "preparation.augmentation.text.delete: Input should be less than 1",
    ]
    tabular = {"name": "iris", "data": {"source": "builtin", "name": "iris"}}
    with pytest.raises(SpecError) as caught:
        parse_spec({**tabular, "preparation": {"text": {"idf": False}, "augmentation": {"text": {"swap": 0.1}}}})
    assert caught.value.problems == [
        "preparation.text: needs a text data set (text_csv, text_folder, wordnet_topics)",
        "preparation.augmentation.text: needs a text data set (text_csv, text_folder, wordnet_topics)",
    ]


def test_text_fields_stay_out_of_other_specs_and_round_trip_in_text_specs() -> None:
    tabular = parse_spec({"name": "iris", "data": {"source": "builtin", "name": "iris"}}).model_dump(mode="json")
    assert "text_column" not in tabular["data"] and "text" not in tabular["preparation"]
    assert "text" not in tabular["preparation"]["augmentation"]
    text = parse_spec(EXAMPLE_SPEC.read_text())
    dumped = text.model_dump(mode="json")
    assert dumped["data"]["text_column"] == "text" and dumped["preparation"]["text"]["max_words"] == 3000
    assert dumped["preparation"]["augmentation"]["text"]["synonyms"] == 0.1
    assert parse_spec(dumped) == text


def test_the_example_csv_loads_and_splits(store: FileArtifactStore) -> None:
    from gallery_trainer.spec import PreparationSpec
    from gallery_trainer.text_prepare import prepare_text

    content = (Path(__file__).resolve().parents[3] / "examples" / "text-topics.csv").read_bytes()
    dataset = load_dataset(csv_spec(store, content), store)
    assert dataset.class_names == ["animal", "food"] and np.bincount(dataset.y).tolist() == [12, 12]
    # a quoted text keeps its commas
    assert dataset.x[0] == "A small domesticated cat that hunts mice, sleeps all day and purrs when stroked."
    prepared = prepare_text(dataset, PreparationSpec.model_validate({"text": {"min_documents": 1}}), seed=0)
    assert [len(prepared.data.split(name)) for name in ("train", "validation", "test")] == [16, 4, 4]
    assert prepared.train_features.x.shape == (16, prepared.vectorizer.n_features)
