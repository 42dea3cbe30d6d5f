"""Hostile job specs: YAML bombs, oversized text, paths out of the data roots, foreign hosts, absurd sizes.

Each is refused with a reason naming the field: by the schema everywhere, by the `SpecPolicy` when a
trainer admits a spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gallery_common.errors import InvalidRequest
from gallery_common.settings import SettingsError, load_settings
from gallery_trainer.admission import SpecPolicy
from gallery_trainer.data import DataError, load_dataset
from gallery_trainer.job_service import read_spec_body
from gallery_trainer.settings import TrainerSettings
from gallery_trainer.spec import SpecError, parse_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
IRIS: dict[str, Any] = {"name": "iris-mlp", "data": {"source": "builtin", "name": "iris"}}

BILLION_LAUGHS = """\
name: lol
data: {source: builtin, name: iris}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def problems_of(source: Any, policy: SpecPolicy | None = None) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(source, policy=policy)
    return caught.value.problems


def with_(**sections: Any) -> dict[str, Any]:
    return {**IRIS, **sections}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def policy(root: Path) -> SpecPolicy:
    return SpecPolicy(data_roots=(root.resolve(),), node_hosts=("gpu-*",))


# --- YAML and text --------------------------------------------------------------------------------


def test_a_billion_laughs_spec_is_refused_quickly_without_expanding() -> None:
    started = time.monotonic()
    problems = problems_of(BILLION_LAUGHS)
    assert time.monotonic() - started < 1.0
    assert problems == ["spec: YAML anchors are not accepted (&a at line 3); write each value out"]


def test_the_api_answers_a_billion_laughs_with_422_and_the_reason() -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_spec_body(BILLION_LAUGHS.encode(), "application/yaml")
    assert caught.value.status_code == 422
    assert "YAML anchors are not accepted" in caught.value.message


def test_aliases_merge_keys_and_deep_nesting_are_refused_with_a_reason() -> None:
    # an alias to an anchor is refused at the anchor already; an alias alone names itself
    assert problems_of("name: x\ndata: *nowhere\n")[0].startswith("spec: YAML aliases are not accepted (*nowhere")
    merged = "base: &base {source: builtin, name: iris}\nname: x\ndata:\n  <<: *base\n"
    assert problems_of(merged)[0].startswith("spec: YAML anchors are not accepted (&base")
    deep = "name: x\nextra: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert problems_of(deep)[0].startswith("spec: nested more than 32 levels deep")


def test_oversized_text_and_absurd_numbers_are_refused_before_validation() -> None:
    huge = "name: x\n# " + "a" * (1024 * 1024) + "\n"
    assert problems_of(huge)[0].startswith("spec: 1048587 bytes is more than the limit of 1048576 bytes")
    digits = "name: x\ndata: {source: builtin, name: iris}\ntraining: {epochs: " + "9" * 5000 + "}\n"
    assert problems_of(digits)[0].startswith("spec: a value cannot be read:")


def test_the_policy_caps_a_spec_in_text_and_as_a_mapping(policy: SpecPolicy) -> None:
    small = SpecPolicy(data_roots=policy.data_roots, max_spec_bytes=2048)
    padded = with_(search=None, model={"hidden": [8] * 60})
    text = json.dumps(padded, indent=40)
    assert len(text) > 2048
    assert problems_of(text, small)[0].startswith(f"spec: {len(text)} bytes is more than the limit of 2048")
    assert problems_of(padded, SpecPolicy(data_roots=(), max_spec_bytes=100))[0].endswith("limit of 100 bytes")
    assert parse_spec(padded, policy=policy).model.hidden == [8] * 60


# --- fixed ceilings of the schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model": {"hidden": [65_537]}}, "model.hidden.0: Input should be less than or equal to 65536"),
        ({"model": {"hidden": [8] * 65}}, "model.hidden: List should have at most 64 items"),
        ({"training": {"batch_size": 2**21}}, "training.batch_size: Input should be less than or equal to 1048576"),
        ({"engine": {"ranks": 2048}}, "engine.ranks: Input should be less than or equal to 1024"),
        (
            {"data": {"source": "images", "path": "/x", "image_size": [4096, 8]}},
            "data.image_size.0: Input should be less than or equal to 1024",
        ),
        (
            {"search": {"budget": 2, "space": {"model.hidden": {"type": "categorical", "choices": [[8]] * 257}}}},
            "search.space.model.hidden.choices: List should have at most 256 items",
        ),
        ({"engine": {"hostfile": "../../etc/passwd"}}, "engine.hostfile: '../../etc/passwd' leaves the job's work"),
        ({"engine": {"hostfile": "hosts\x00"}}, "engine.hostfile: must be a path without control characters"),
    ],
)
def test_the_schema_refuses_absurd_sizes_and_escaping_hostfiles(override: dict[str, Any], expected: str) -> None:
    problems = problems_of(with_(**override))
    assert any(problem.startswith(expected) for problem in problems), problems


# --- data roots -----------------------------------------------------------------------------------


def test_a_data_path_inside_a_root_is_admitted(root: Path, policy: SpecPolicy) -> None:
    (root / "pics").mkdir()
    spec = parse_spec(with_(data={"source": "images", "path": str(root / "pics")}), policy=policy)
    assert spec.data.path == str(root / "pics")


@pytest.mark.parametrize("where", ["/etc", "{root}/../outside", "{root}/link", "relative/pics", "{root}/a\x00b"])
def test_a_data_path_outside_the_roots_is_refused(tmp_path: Path, root: Path, policy: SpecPolicy, where: str) -> None:
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")  # inside the root by name, outside once followed
    path = where.format(root=root)
    problems = problems_of(with_(data={"source": "images", "path": path}), policy)
    assert len(problems) == 1
    assert problems[0].startswith(f"data.path: {path!r} is not an absolute path inside the data roots")
    assert str(root.resolve()) in problems[0]


def test_a_hostfile_lives_in_the_jobs_work_folder_or_a_data_root(root: Path, policy: SpecPolicy) -> None:
    (root / "hosts").write_text("gpu-a slots=2\n")
    for hostfile in ("hostfile", "plans/hostfile", str(root / "hosts")):
        assert parse_spec(with_(engine={"hostfile": hostfile, "ranks": 4}), policy=policy).engine.hostfile == hostfile
    problems = problems_of(with_(engine={"hostfile": "/etc/shadow", "ranks": 4}), policy)
    assert problems == [
        f"engine.hostfile: '/etc/shadow' is neither in the job's work folder (a relative path) nor inside a data "
        f"root ({root.resolve()})"
    ]


# --- hosts and sizes ------------------------------------------------------------------------------


def test_nodes_must_be_hosts_the_operator_allows(policy: SpecPolicy) -> None:
    nodes = [{"host": "gpu-a", "slots": 2}, {"host": "db-primary", "slots": 2}]
    problems = problems_of(with_(engine={"ranks": 4, "nodes": nodes}), policy)
    assert problems == [
        "engine.nodes.1.host: 'db-primary' is not a host this trainer may start ranks on "
        "(allowed: gpu-*; the operator sets GALLERY_NODE_HOSTS)"
    ]
    allowed = [{"host": "GPU-a", "slots": 2}, {"host": "gpu-b", "slots": 2}]
    assert parse_spec(with_(engine={"ranks": 4, "nodes": allowed}), policy=policy).engine.ranks == 4
    by_default = SpecPolicy(data_roots=())
    assert problems_of(with_(engine={"ranks": 4, "nodes": allowed}), by_default)[0].startswith(
        "engine.nodes.0.host: 'GPU-a' is not a host this trainer may start ranks on (allowed: localhost, 127.0.0.1"
    )


def test_sizes_past_the_operators_limits_name_their_field(policy: SpecPolicy) -> None:
    doc = with_(
        model={"architecture": "cnn", "hidden": [8, 9000], "channels": [16, 10_000]},
        data={"source": "builtin", "name": "digits"},
        training={"batch_size": 70_000},
        engine={"ranks": 17},
        search={"budget": 501, "space": {"training.learning_rate": {"type": "float", "low": 0.01, "high": 0.1}}},
    )
    assert problems_of(doc, policy) == [
        "engine.ranks: 17 ranks on the trainer's own machine is more than its limit of 16; give engine.nodes to "
        "use several machines",
        "model.hidden.1: 9000 is wider than the limit of 8192",
        "model.channels.1: 10000 is wider than the limit of 8192",
        "training.batch_size: 70000 is more than the limit of 65536",
        "search.budget: 501 trials is more than the limit of 500",
    ]
    nodes = [{"host": f"gpu-{i}", "slots": 8} for i in range(40)]
    assert problems_of(with_(engine={"ranks": 320, "nodes": nodes}), policy) == [
        "engine.ranks: 320 is more than the 256 ranks a job may have"
    ]
    # several machines may hold more ranks than the trainer's own
    nodes = [{"host": f"gpu-{i}", "slots": 8} for i in range(4)]
    assert parse_spec(with_(engine={"ranks": 32, "nodes": nodes}), policy=policy).engine.ranks == 32


def test_a_search_may_not_reach_past_the_limits_through_its_space(root: Path, policy: SpecPolicy) -> None:
    space = {
        "training.batch_size": {"type": "int", "low": 16, "high": 1_000_000},
        "model.hidden": {"type": "categorical", "choices": [[8], [8, 20_000]]},
        "data.path": {"type": "categorical", "choices": [str(root), "/etc"]},
        "training.learning_rate": {"type": "float", "low": 0.001, "high": 0.1},
    }
    doc = with_(data={"source": "images", "path": str(root)}, search={"budget": 4, "space": space})
    problems = problems_of(doc, policy)
    assert problems == [
        "search.space.training.batch_size: the value 1000000 gives training.batch_size: 1000000 is more than the "
        "limit of 65536",
        "search.space.model.hidden: the value [8, 20000] gives model.hidden.1: 20000 is wider than the limit of 8192",
        f"search.space.data.path: the value '/etc' gives data.path: '/etc' is not an absolute path inside the data "
        f"roots this trainer may read ({root.resolve()}; symlinks and '..' are followed first); put the folder "
        "there, or upload it and give data.uri",
    ]


# --- settings -------------------------------------------------------------------------------------


def test_the_examples_pass_the_default_policy(tmp_path: Path) -> None:
    policy = TrainerSettings(home=tmp_path).spec_policy()
    for example in sorted(EXAMPLES.glob("*.yaml")):
        assert parse_spec(example.read_bytes(), policy=policy).name


def test_settings_read_roots_hosts_and_limits_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GALLERY_DATA_ROOTS")
    monkeypatch.setenv("GALLERY_HOME", str(tmp_path))
    default = load_settings(TrainerSettings).spec_policy()
    assert default.data_roots == ((tmp_path / "data").resolve(),)
    assert default.node_hosts == ("localhost", "127.0.0.1")
    assert (default.max_batch_size, default.max_local_ranks, default.max_search_budget) == (65_536, 16, 500)
    monkeypatch.setenv("GALLERY_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b,{tmp_path}/c")
    monkeypatch.setenv("GALLERY_NODE_HOSTS", "gpu-*, trainer-2")
    monkeypatch.setenv("GALLERY_MAX_BATCH_SIZE", "131072")
    policy = load_settings(TrainerSettings).spec_policy()
    assert policy.data_roots == tuple((tmp_path / name).resolve() for name in "abc")
    assert policy.node_hosts == ("gpu-*", "trainer-2")
    assert policy.max_batch_size == 131_072
    monkeypatch.setenv("GALLERY_MAX_BATCH_SIZE", str(2**21))
    with pytest.raises(SettingsError, match="GALLERY_MAX_BATCH_SIZE"):
        load_settings(TrainerSettings)


# --- reading the data -----------------------------------------------------------------------------


def _write_pictures(folder: Path) -> None:
    for cls, value in (("dark", 10), ("light", 240)):
        (folder / cls).mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(folder / cls / "1.png")


def test_the_loader_checks_the_folder_again_when_it_reads_it(
    tmp_path: Path, root: Path, policy: SpecPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GALLERY_DATA_ROOTS", str(root))
    _write_pictures(root / "pics")
    spec = parse_spec(with_(data={"source": "images", "path": str(root / "pics"), "image_size": [2, 2]}), policy=policy)
    assert load_dataset(spec.data).class_names == ["dark", "light"]
    # swapped for a symlink to a folder outside the roots after the spec was admitted
    _write_pictures(tmp_path / "secrets")
    os.rename(root / "pics", root / "old")
    (root / "pics").symlink_to(tmp_path / "secrets")
    with pytest.raises(DataError) as caught:
        load_dataset(spec.data)
    assert str(caught.value).startswith(f"data.path: {root / 'pics'} is not an absolute path inside the data roots")


def test_a_local_file_uri_outside_the_roots_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALLERY_DATA_ROOTS", str(tmp_path / "data"))
    secret = tmp_path / "secret.csv"
    secret.write_text("a,label\n1,x\n2,y\n")
    spec = parse_spec(
        with_(data={"source": "csv", "uri": secret.as_uri(), "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()})
    )
    with pytest.raises(DataError) as caught:
        load_dataset(spec.data)
    assert str(caught.value).startswith(f"data.uri: {secret} is not an absolute path inside the data roots")
