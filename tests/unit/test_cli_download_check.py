"""`gallery models download` keeps a file only when its bytes are the ones the registry holds: the body is
written beside the target and moved into place after its sha256 matched; otherwise nothing is left."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import httpx
import pytest
import typer

from gallery_cli.models_cmd import _attachment_name, _receive
from gallery_common.contracts.refs import ArtifactRef

BODY = b"\x08ONNX" * 5000


def answer(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=body, headers=headers)


def held(body: bytes) -> ArtifactRef:
    return ArtifactRef(uri="s3://models/m/1/model.onnx", sha256=hashlib.sha256(body).hexdigest(), size=len(body))


def test_matching_bytes_are_moved_into_place(tmp_path: Path) -> None:
    target = tmp_path / "m-v1-onnx.onnx"
    assert _receive(answer(BODY), target, held(BODY), "m:1 onnx") == len(BODY)
    assert target.read_bytes() == BODY
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask, "made as any new file is, not private"


def test_bytes_that_differ_from_the_registrys_are_not_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "m-v1-onnx.onnx"
    target.write_bytes(b"the copy from before")
    with pytest.raises(typer.Exit) as exited:
        _receive(answer(BODY[:-1] + b"!"), target, held(BODY), "m:1 onnx")
    assert exited.value.exit_code == 1
    assert f"m:1 onnx: the {len(BODY)} bytes received do not match the registry's sha256" in capsys.readouterr().err
    assert target.read_bytes() == b"the copy from before", "a file already there is left as it was"
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "no partial file is left"


def test_the_file_name_is_the_attachments_last_path_part() -> None:
    named = answer(b"", **{"content-disposition": 'attachment; filename="m-v1-int8.onnx"'})
    assert _attachment_name(named, "fallback") == "m-v1-int8.onnx"
    escaping = answer(b"", **{"content-disposition": 'attachment; filename="../../etc/cron.d/x"'})
    assert _attachment_name(escaping, "fallback") == "x"
    assert _attachment_name(answer(b""), "m-v1-onnx") == "m-v1-onnx"
    assert _attachment_name(answer(b"", **{"content-disposition": 'attachment; filename=".."'}), "f") == "f"
