"""Preparation: stratified seeded splits, the leakage check, feature engineering fitted on train only."""

import numpy as np
import pytest

from gallery_trainer.data import DataError, Dataset, load_dataset
from gallery_trainer.prepare import Split, check_leakage, fit_transform, prepare, split_indices
from gallery_trainer.spec import DataSpec, PreparationSpec, SplitSpec


def _dataset(x: np.ndarray, y: np.ndarray, task: str = "classification") -> Dataset:
    names = [str(c) for c in np.unique(y)] if task == "classification" else None
    return Dataset(x.astype(np.float32), y, task, names, [f"f{i}" for i in range(x.shape[1])], None, "0" * 64)


def test_stratified_split_keeps_class_proportions_in_every_split() -> None:
    y = np.array([0] * 600 + [1] * 300 + [2] * 100)
    parts = split_indices(y, SplitSpec(train=0.6, validation=0.2, test=0.2, seed=3), "classification")
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(1000))  # disjoint, complete
    for name, fraction in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        counts = np.bincount(y[parts[name]], minlength=3)
        np.testing.assert_allclose(counts, [600 * fraction, 300 * fraction, 100 * fraction], atol=1)


def test_split_is_fixed_by_its_seed() -> None:
    y = np.arange(200) % 4
    first = split_indices(y, SplitSpec(seed=7), "classification")
    again = split_indices(y, SplitSpec(seed=7), "classification")
    other = split_indices(y, SplitSpec(seed=8), "classification")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])


def test_a_class_too_small_to_stratify_is_explained() -> None:
    y = np.array([0] * 50 + [1])
    with pytest.raises(DataError, match=r"preparation.split: .*examples per class: 0: 50, 1: 1"):
        split_indices(y, SplitSpec(), "classification")


def _planted_splits() -> dict[str, Split]:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 4)).astype(np.float32)
    validation = rng.normal(size=(20, 4)).astype(np.float32)
    test = rng.normal(size=(20, 4)).astype(np.float32)
    validation[[2, 5, 9]] = train[[0, 1, 2]]  # 3 train rows copied into validation
    test[[0, 1]] = train[[10, 11]]  # 2 into test
    test[[7]] = validation[[15]]  # 1 validation row into test
    labels = {
        n: np.zeros(len(a), dtype=np.int64) for n, a in (("train", train), ("validation", validation), ("test", test))
    }
    return {"train": Split(train, labels["train"]), "validation": Split(validation, labels["validation"]),
            "test": Split(test, labels["test"])}  # fmt: skip


def test_leakage_check_counts_planted_duplicates_per_pair() -> None:
    splits, report = check_leakage(_planted_splits(), "report")
    assert report["duplicates"] == {"train_validation": 3, "train_test": 2, "validation_test": 1}
    assert len(splits["validation"]) == 20 and len(splits["test"]) == 20  # report keeps them


def test_leakage_drop_removes_duplicates_from_the_later_split() -> None:
    splits, report = check_leakage(_planted_splits(), "drop")
    assert report["dropped"] == {"validation": 3, "test": 3}
    assert len(splits["train"]) == 50 and len(splits["validation"]) == 17 and len(splits["test"]) == 17
    _, second = check_leakage(splits, "report")
    assert sum(second["duplicates"].values()) == 0


def test_leakage_fail_names_the_pairs() -> None:
    with pytest.raises(DataError, match=r"preparation.leakage: 6 examples appear in two splits"):
        check_leakage(_planted_splits(), "fail")


def test_standardisation_is_fitted_on_the_training_split_only() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=5.0, scale=2.0, size=(400, 3))
    x[:, 1] = 7.0  # a constant feature must not divide by zero
    y = (x[:, 0] > 5).astype(np.int64)
    prepared = prepare(_dataset(x, y), PreparationSpec())
    np.testing.assert_allclose(prepared.transform.mean, prepared.train.x.mean(axis=0), rtol=1e-5)
    assert not np.allclose(prepared.transform.mean[0], x[:, 0].mean(), rtol=1e-6, atol=0)
    standardised = prepared.transform.apply(prepared.train.x)
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=0)[[0, 2]], 1, rtol=1e-4)
    assert np.all(standardised[:, 1] == 0)


def test_feature_selection_keeps_the_informative_features() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6))
    y = (x[:, 4] + 0.5 * x[:, 1] > 0).astype(np.int64)
    transform = fit_transform(x.astype(np.float32), y, PreparationSpec(select_k_best=2), "classification")
    assert transform.selected is not None and transform.selected.tolist() == [1, 4]
    assert transform.apply(x).shape == (300, 2)


def test_feature_selection_for_regression_and_too_many_features() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (3 * x[:, 2]).astype(np.float32)
    transform = fit_transform(x, y, PreparationSpec(select_k_best=1), "regression")
    assert transform.selected is not None and transform.selected.tolist() == [2]
    with pytest.raises(DataError, match="select_k_best: k=9 but the data has 5 features"):
        fit_transform(x, y, PreparationSpec(select_k_best=9), "regression")


def test_pca_fitted_on_train_matches_scikit_learn() -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    digits = load_dataset(DataSpec(source="builtin", name="digits"))
    prepared = prepare(digits, PreparationSpec(pca={"components": 10}))
    expected = PCA(n_components=10, svd_solver="full").fit(StandardScaler().fit_transform(prepared.train.x))
    got = prepared.transform.apply(prepared.test.x)
    want = expected.transform(StandardScaler().fit(prepared.train.x).transform(prepared.test.x))
    assert got.shape == (len(prepared.test), 10)
    # principal axes are defined up to sign
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=2e-3)


def test_pca_by_variance_ratio_keeps_enough_components() -> None:
    digits = load_dataset(DataSpec(source="builtin", name="digits"))
    prepared = prepare(digits, PreparationSpec(pca={"variance": 0.8}))
    projected = prepared.transform.apply(prepared.train.x)
    standardised = (prepared.train.x - prepared.transform.mean) / prepared.transform.scale
    kept = projected.var(axis=0).sum() / standardised.var(axis=0).sum()
    assert 0.8 <= kept < 0.9
    assert projected.shape[1] < 64


def test_regression_targets_are_scaled_from_the_training_split() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 2))
    y = (100 + 10 * x[:, 0]).astype(np.float32)
    prepared = prepare(_dataset(x, y, "regression"), PreparationSpec())
    assert prepared.target.mean == pytest.approx(float(prepared.train.y.mean()), rel=1e-5)
    assert prepared.target.scale == pytest.approx(float(prepared.train.y.std()), rel=1e-5)
    assert prepared.leakage["rows"] == {"train": 70, "validation": 15, "test": 15}
