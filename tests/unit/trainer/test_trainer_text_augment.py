"""Text augmentation (EDA): WordNet synonyms, insertion, swap and deletion; seeded, never empty, and only the
training split grows."""

import random

import numpy as np
import pytest

from gallery_trainer.data import Dataset
from gallery_trainer.spec import PreparationSpec, TextAugmentation
from gallery_trainer.text_augment import (
    STOP_WORDS,
    augment_texts,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from gallery_trainer.text_prepare import prepare_text
from gallery_trainer.wordnet import synonyms

# WordNet 3.0's synsets holding "dog" (the animal, the frump, the cad, the hot dog, the andiron, the pawl, ...)
DOG_SYNONYMS = {"hound", "frump", "cad", "bounder", "heel", "frank", "hotdog", "wiener", "pawl", "andiron", "firedog"}


def test_synonyms_come_from_wordnet() -> None:
    assert set(synonyms("dog")) >= DOG_SYNONYMS and "dog" not in synonyms("dog")
    assert synonyms("Dog") == synonyms("dog")
    assert synonyms("qwertyuiop") == ()
    assert set(synonyms("car")) >= {"auto", "automobile", "machine", "motorcar"}


def test_synonym_replacement_puts_a_wordnet_synonym_in_place_and_keeps_punctuation() -> None:
    rng = random.Random(3)
    for _ in range(20):
        out = synonym_replacement(["the", "(dog),", "of", "it"], 0.5, rng)
        assert out[0] == "the" and out[2:] == ["of", "it"]  # function words are never replaced
        assert out[1].startswith("(") and out[1].endswith("),")
        assert out[1][1:-2] in synonyms("dog")


def test_operations_never_empty_a_text() -> None:
    rng = random.Random(0)
    assert random_deletion(["only"], 0.99, rng) == ["only"]
    assert random_swap(["alone"], 1.0, rng) == ["alone"]
    assert random_insertion(["the", "of"], 1.0, rng) == ["the", "of"]  # nothing has synonyms: unchanged
    assert len(random_insertion(["dog", "runs"], 0.5, rng)) == 3
    swapped = random_swap(["a", "b", "c", "d"], 0.25, rng)
    assert sorted(swapped) == ["a", "b", "c", "d"] and swapped != ["a", "b", "c", "d"]


def test_augmentation_is_seeded_and_adds_nonempty_labelled_copies() -> None:
    x = np.array(["the dog barks at the mailman", "a small car drives on the road", "ok"])
    y = np.array([0, 1, 2])
    spec = TextAugmentation(copies=4, synonyms=0.3, insert=0.2, swap=0.2, delete=0.3)
    first = augment_texts(x, y, spec, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, augment_texts(x, y, spec, seed=7), strict=True))
    other = augment_texts(x, y, spec, seed=8)
    assert first[0].tolist() != other[0].tolist()
    texts, labels = first
    assert texts.dtype.kind == "U" and labels.dtype == np.int64
    assert all(text.strip() for text in texts.tolist())
    assert not set(texts.tolist()) & set(x.tolist())  # unchanged copies are not added
    # each copy keeps its source's label: the dog sentence's copies mention no car
    assert {int(label) for text, label in zip(texts.tolist(), labels.tolist(), strict=True) if "road" in text} == {1}
    assert all(2 <= count <= 4 for count in np.bincount(labels, minlength=3)[:2].tolist())


def test_only_the_training_split_grows() -> None:
    texts = np.array(
        [f"the dog number {i} barks at a car" if i % 2 else f"fresh bread and cheese {i}" for i in range(80)]
    )
    dataset = Dataset(texts, np.arange(80) % 2, "classification", ["food", "animal"], ["text"], None, "f")
    plain = prepare_text(dataset, PreparationSpec(), seed=0)
    augmented = prepare_text(
        dataset, PreparationSpec.model_validate({"augmentation": {"text": {"copies": 2, "synonyms": 0.3}}}), seed=0
    )
    n_train = len(plain.data.train)
    assert len(plain.train_features) == n_train and plain.augmented == 0
    assert 0 < augmented.augmented <= 2 * n_train
    assert len(augmented.train_features) == n_train + augmented.augmented
    assert augmented.data.leakage["augmented_train_rows"] == augmented.augmented
    # the published splits, validation features and the vocabulary are those of the unaugmented job
    for name in ("train", "validation", "test"):
        assert augmented.data.split(name).x.tolist() == plain.data.split(name).x.tolist()
    assert np.array_equal(augmented.validation_features.x, plain.validation_features.x)
    assert augmented.vectorizer.vocabulary == plain.vectorizer.vocabulary


@pytest.mark.parametrize("word", ["the", "of", "and"])
def test_function_words_are_stop_words(word: str) -> None:
    assert word in STOP_WORDS
