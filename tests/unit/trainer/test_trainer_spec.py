"""The job spec: YAML/JSON parsing, every bad field reported at once, hashing, search application."""

import json
from pathlib import Path

import pytest
import yaml

from gallery_trainer.spec import SpecError, config_hash, parse_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

MINIMAL = {"name": "digits-mlp", "data": {"source": "builtin", "name": "digits"}}


def problems_of(doc: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(doc)  # type: ignore[arg-type]
    return caught.value.problems


def test_yaml_json_and_mapping_give_the_same_spec() -> None:
    as_yaml = yaml.safe_dump(MINIMAL)
    as_json = json.dumps(MINIMAL)
    specs = [parse_spec(as_yaml), parse_spec(as_json.encode()), parse_spec(MINIMAL)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0].engine.kind == "deepspeed" and specs[0].engine.ranks == 1
    assert specs[0].preparation.standardize is True


def test_every_bad_field_is_listed_with_its_path() -> None:
    doc = {
        "name": "bad name!",
        "data": {"source": "csv"},
        "preparation": {"split": {"train": 0.5}, "leakage": "ignore", "pca": {}},
        "model": {"hidden": [0], "dropout": 1.5},
        "training": {"epochs": 0, "batch_size": -1, "optimizer": "rmsprop", "learning_rate": 0},
        "engine": {"ranks": 3, "pipeline_stages": 2, "zero_stage": 5},
        "surprise": True,
    }
    problems = problems_of(doc)
    fields = [p.split(":")[0] for p in problems]
    expected = {
        "name",
        "data.uri",
        "data.sha256",
        "preparation.split",
        "preparation.leakage",
        "preparation.pca",
        "model.hidden.0",
        "model.dropout",
        "training.epochs",
        "training.batch_size",
        "training.optimizer",
        "training.learning_rate",
        "engine.zero_stage",
        "surprise",
    }
    assert expected <= set(fields), problems
    assert "training.epochs: Input should be greater than 0" in problems
    assert any(p.startswith("preparation.split: train + validation + test must be 1") for p in problems)


def test_section_rules_are_reported_per_field() -> None:
    problems = problems_of({**MINIMAL, "engine": {"ranks": 3, "pipeline_stages": 2, "zero_stage": 2}})
    assert "engine.ranks: 3 ranks cannot be split into 2 pipeline stages" in problems
    assert "engine.zero_stage: DeepSpeed pipeline parallelism works with ZeRO stage 0 or 1 only" in problems


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model": {"architecture": "cnn"}, "data": {"source": "builtin", "name": "iris"}}, "model.architecture"),
        ({"model": {"architecture": "cnn"}, "preparation": {"pca": {"components": 4}}}, "model.architecture"),
        ({"engine": {"ranks": 4, "pipeline_stages": 4}, "model": {"hidden": [8]}}, "engine.pipeline_stages"),
        ({"engine": {"kind": "ddp", "ranks": 2, "pipeline_stages": 2}}, "engine.pipeline_stages"),
        ({"engine": {"kind": "ddp", "zero_stage": 2}}, "engine.zero_stage"),
        (
            {"preparation": {"augmentation": {"image": {"flip": 0.5}}}, "data": {"source": "builtin", "name": "wine"}},
            "preparation.augmentation.image",
        ),
        ({"data": {"source": "images"}}, "data.path"),
        ({"data": {"source": "builtin"}}, "data.name"),
    ],
)
def test_rules_across_fields(override: dict, expected: str) -> None:
    problems = problems_of({**MINIMAL, **override})
    assert any(p.startswith(expected + ":") for p in problems), problems


def test_text_that_is_not_a_spec_is_refused_with_a_reason() -> None:
    assert problems_of("name: [unclosed")[0].startswith("spec: not valid YAML or JSON")
    assert problems_of("- just\n- a list\n") == [
        "spec: must be a mapping of sections (name, data, preparation, model, training, engine)"
    ]


def test_config_hash_is_canonical() -> None:
    reordered = {"data": {"name": "digits", "source": "builtin"}, "name": "digits-mlp"}
    assert config_hash(parse_spec(MINIMAL)) == config_hash(parse_spec(reordered))
    # spelling out a default is the same job
    explicit = {**MINIMAL, "training": {"epochs": 10}}
    assert config_hash(parse_spec(MINIMAL)) == config_hash(parse_spec(explicit))
    changed = {**MINIMAL, "training": {"learning_rate": 0.01}}
    assert config_hash(parse_spec(MINIMAL)) != config_hash(parse_spec(changed))
    assert len(config_hash(parse_spec(MINIMAL))) == 64


def test_search_applies_sampled_values_by_dotted_path() -> None:
    spec = parse_spec(
        {
            **MINIMAL,
            "search": {
                "budget": 4,
                "space": {
                    "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
                },
            },
        }
    )
    assert spec.search is not None
    trial = spec.search.apply(spec, {"training.learning_rate": 0.02, "model.dropout": 0.25})
    assert trial.training.learning_rate == 0.02 and trial.model.dropout == 0.25
    assert trial.search is None
    assert spec.training.learning_rate == 1e-3  # the base spec is unchanged
    with pytest.raises(SpecError) as caught:
        spec.search.apply(spec, {"training.learning_rate": -1.0})
    assert caught.value.problems[0].startswith("training.learning_rate:")


def test_search_space_must_name_real_fields() -> None:
    problems = problems_of(
        {
            **MINIMAL,
            "search": {"budget": 2, "space": {"training.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
        }
    )
    assert "search.space.training.lr.low: must not exceed high" in problems


def test_search_on_a_regression_job_cannot_maximise_accuracy() -> None:
    doc = {
        "name": "houses",
        "data": {"source": "csv", "uri": "file:///tmp/h.csv", "sha256": "0" * 64, "task": "regression"},
        "search": {"budget": 2, "space": {"training.epochs": {"type": "int", "low": 1, "high": 3}}},
    }
    assert any(p.startswith("search.metric:") for p in problems_of(doc))


@pytest.mark.parametrize("example", ["digits.yaml", "iris.yaml"])
def test_examples_are_valid_specs(example: str) -> None:
    spec = parse_spec((EXAMPLES / example).read_text())
    assert spec.engine.ranks == 1 and spec.engine.kind == "deepspeed"
