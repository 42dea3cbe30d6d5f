"""Preparing a text job: the seeded split and the leakage check on the raw texts, the vectorizer fitted on the
training texts only, augmentation of the training texts only, and the features the ranks train on.

The published splits keep the raw texts (what the gate, the optimizer and the monitor read); the ranks
read FP32 feature splits computed by running the vectorizer's ONNX graph in ONNX Runtime, the very graph
that is exported in front of the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gallery_trainer.data import DataError, Dataset
from gallery_trainer.prepare import FeatureTransform, PreparedData, Split, TargetScaling, check_leakage, split_indices
from gallery_trainer.spec import PreparationSpec
from gallery_trainer.text_vectorizer import TextVectorizer, VectorizerSettings, fit_vectorizer


@dataclass
class PreparedText:
    """A text job's splits (raw texts), its fitted vectorizer and the ranks' feature splits."""

    data: PreparedData
    vectorizer: TextVectorizer
    train_features: Split
    validation_features: Split
    augmented: int


def prepare_text(dataset: Dataset, spec: PreparationSpec, seed: int) -> PreparedText:
    """Split the texts, drop or report texts found in two splits, fit the vectorizer on the training texts
    and compute the ranks' features; augmentation (seeded by `seed`) adds rows to the training features only."""
    indices = split_indices(dataset.y, spec.split, dataset.task)
    splits = {name: Split(dataset.x[idx], dataset.y[idx]) for name, idx in indices.items()}
    splits, leakage = check_leakage(splits, spec.leakage)
    train, validation = splits["train"], splits["validation"]
    settings = VectorizerSettings(
        max_words=spec.vectorizer.max_words, min_documents=spec.vectorizer.min_documents, idf=spec.vectorizer.idf
    )
    try:
        vectorizer = fit_vectorizer(train.x, settings)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    train_x, train_y = train.x, train.y
    augmented = 0
    if spec.augmentation.text is not None:
        from gallery_trainer.text_augment import augment_texts

        extra_x, extra_y = augment_texts(train.x, train.y, spec.augmentation.text, seed)
        augmented = len(extra_x)
        train_x, train_y = np.concatenate([train.x, extra_x]), np.concatenate([train.y, extra_y])
    leakage["rows"] = {name: len(split) for name, split in splits.items()}
    leakage["augmented_train_rows"] = augmented
    identity = FeatureTransform(
        mean=np.zeros(vectorizer.n_features, dtype=np.float32), scale=np.ones(vectorizer.n_features, dtype=np.float32)
    )
    data = PreparedData(
        train=train,
        validation=validation,
        test=splits["test"],
        transform=identity,
        target=TargetScaling(),
        leakage=leakage,
    )
    return PreparedText(
        data=data,
        vectorizer=vectorizer,
        train_features=Split(vectorizer.features(train_x), train_y),
        validation_features=Split(vectorizer.features(validation.x), validation.y),
        augmented=augmented,
    )
