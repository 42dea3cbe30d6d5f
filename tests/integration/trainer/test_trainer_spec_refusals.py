"""The real trainer app answers hostile specs with 422 and the reason, and queues nothing for them."""

from __future__ import annotations

import json
from pathlib import Path

from trainer_harness import iris_spec, serve_trainer, trainer_settings

from gallery_common.nats_server import EmbeddedNats

BOMB = "name: lol\ndata: {source: builtin, name: iris}\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_hostile_specs_get_422_naming_what_is_wrong(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB
    wide = iris_spec()
    wide["model"] = {"hidden": [1_000_000, 1_000_000]}
    escaping = iris_spec()
    escaping["engine"] = {"ranks": 2, "hostfile": "../../../etc/shadow"}
    outside = iris_spec()
    outside["data"] = {"source": "images", "path": "/etc"}
    many = iris_spec()
    many["engine"] = {"ranks": 4096}
    with serve_trainer(trainer_settings(tmp_path, nats_server.url)) as client:
        answer = client.post("/api/v1/jobs", content=bomb, headers={"content-type": "application/yaml"})
        assert answer.status_code == 422
        assert "YAML anchors are not accepted (&a at line 1)" in answer.text
        answer = client.post("/api/v1/jobs", content=json.dumps(wide), headers={"content-type": "application/json"})
        assert answer.status_code == 422
        assert "model.hidden.0: Input should be less than or equal to 65536" in answer.text
        answer = client.post("/api/v1/jobs", json=escaping)
        assert answer.status_code == 422
        assert "engine.hostfile: '../../../etc/shadow' leaves the job's work folder" in answer.text
        # The operator's policy (GALLERY_DATA_ROOTS, GALLERY_MAX_RANKS) applies to what the API admits.
        answer = client.post("/api/v1/jobs", json=outside)
        assert answer.status_code == 422
        assert "data.path: '/etc' is not an absolute path inside the data roots" in answer.text
        assert str((tmp_path / "data").resolve()) in answer.text
        answer = client.post("/api/v1/jobs", json=many)
        assert answer.status_code == 422
        assert "ranks" in answer.text
        assert client.get("/api/v1/jobs").json() == []
