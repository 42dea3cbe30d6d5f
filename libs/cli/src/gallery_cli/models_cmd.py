"""`gallery models ...`: registered models, their versions and aliases, from the registry's REST API."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from gallery_common.contracts.refs import ArtifactRef
from gallery_common.contracts.registry import AliasPublic, ModelPublic, VersionPublic

from .console import console, err_console, fail, say
from .service_client import GalleryClient, RegistryServiceClient, model_path, project_params

_REF = re.compile(r"^(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>\d+))?$")

app = typer.Typer(help="Registered models: list, show, move aliases, model cards.", no_args_is_help=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None or value == "" else str(value)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_models(
    name: Annotated[str | None, typer.Option(help="Only names containing this (any case).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY or KEY=VALUE; repeat for several.")] = None,
    owner: Annotated[str | None, typer.Option(help="Only models of this owner.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Registered models with their latest version and aliases."""
    params: dict[str, Any] = {"limit": limit, "tag": tag or [], **project_params()}
    if name:
        params["name"] = name
    if owner:
        params["owner"] = owner
    with RegistryServiceClient() as client:
        page = client.json("GET", "/api/v1/models", params=params)
        models = [client.parse(ModelPublic, m, "a model") for m in page["models"]]
    if not models:
        say("no models registered")
        return
    table = Table(show_header=True)
    for column in ("model", "project", "latest", "aliases", "owner", "updated"):
        table.add_column(column)
    for model in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in model.aliases.items())
        updated = _when(model.updated_at)
        table.add_row(model.name, model.project, _fmt(model.latest_version), aliases or "-", _fmt(model.owner), updated)
    console.print(table)
    if page["next_page_token"]:
        say(f"more than {limit} models: narrow with --name / --tag / --owner or raise --limit", err=True)


def _show_model(client: RegistryServiceClient, name: str) -> None:
    model = client.get_model(name)
    versions = client.latest_versions(name, 20)
    say(
        f"model {model.name}  project {model.project}  owner {_fmt(model.owner)}"
        f"  latest version {_fmt(model.latest_version)}"
    )
    if model.description:
        say(model.description)
    if model.tags:
        say("tags: " + ", ".join(f"{k}={v}" for k, v in model.tags.items()))
    table = Table(show_header=True, title="versions (newest 20)")
    for column in ("version", "semver", "status", "aliases", "accuracy", "created"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            str(v.version),
            v.semver,
            v.status.value,
            ", ".join(v.aliases) or "-",
            # the gate's own measurement once there is one, the registered claim before
            _fmt((v.evaluation_report or {}).get("accuracy", v.metrics.get("accuracy"))),
            _when(v.created_at),
        )
    console.print(table)


def _metrics_table(version: VersionPublic) -> Table:
    """The gate's own evaluation beside what the trainer claimed, metric by metric."""
    evaluated = {
        key: value
        for key, value in (version.evaluation_report or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    claimed = version.metrics
    table = Table(show_header=True, title="metrics")
    table.add_column("metric")
    table.add_column("gate's evaluation", justify="right")
    table.add_column("trainer's claim", justify="right")
    for key in sorted(evaluated.keys() | claimed.keys()):
        table.add_row(key, _fmt(evaluated.get(key)), _fmt(claimed.get(key)))
    return table


def _show_version(version: VersionPublic) -> None:
    say(
        f"{version.name} version {version.version} ({version.semver})  status {version.status.value}"
        f"  aliases {', '.join(version.aliases) or '-'}"
    )
    lineage = version.lineage
    say(
        f"run {_fmt(version.run_id)}  training job {_fmt(lineage.training_job_id)}"
        f"  data {_fmt(lineage.dataset_fingerprint)}  parent {_fmt(lineage.parent_version)}"
    )
    for reason in version.rejection_reasons or []:
        say(f"rejected: {reason}")
    console.print(_metrics_table(version))
    artifacts = Table(show_header=True, title="artifacts")
    for column in ("role", "uri", "sha256", "size"):
        artifacts.add_column(column, overflow="fold")
    for role, art in version.artifacts.items():
        artifacts.add_row(role.value, art.uri, art.sha256[:12], _fmt(art.size))
    console.print(artifacts)
    if version.artifacts:
        say(f"download one: gallery models download {version.name}:{version.version} --role ROLE")


@app.command()
def show(ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME:VERSION.")]) -> None:
    """A model and its versions, or one version (by alias or number) with metrics and artifacts."""
    match = _REF.match(ref)
    if match is None:
        fail(f"cannot read {ref!r}: use NAME, NAME@ALIAS or NAME:VERSION", 2)
    name, alias, number = match["name"], match["alias"], match["version"]
    with RegistryServiceClient() as client:
        if alias:
            _show_version(client.get_version_by_alias(name, alias))
        elif number:
            _show_version(client.get_version(name, int(number)))
        else:
            _show_model(client, name)


@app.command()
def alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. production.")],
    version: Annotated[int, typer.Argument(min=1, help="Version number the alias should point at.")],
    reason: Annotated[str | None, typer.Option(help="Why, kept in the alias history.")] = None,
) -> None:
    """Point ALIAS at VERSION (protected aliases such as production need an admin GALLERY_TOKEN)."""
    with RegistryServiceClient() as client:
        listed = client.json("GET", f"{model_path(name)}/aliases")
        current = {a.alias: a.version for a in (client.parse(AliasPublic, a, "an alias") for a in listed)}
        path = f"{model_path(name)}/aliases/{quote(alias_name, safe='')}"
        moved = client.parsed(AliasPublic, "PUT", path, json={"version": version, "reason": reason})
    previous = current.get(alias_name)
    if previous == moved.version:
        say(f"{name}@{moved.alias} already points at version {previous}")
        return
    origin = f"{previous} → " if previous is not None else ""
    say(f"{name}@{moved.alias}: {origin}{moved.version}")


def _read_text(path: Path) -> str:
    if str(path) == "-":
        return typer.get_text_stream("stdin").read()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", 2)


def _card_version(client: RegistryServiceClient, name: str, alias: str | None) -> int:
    """The version `alias` points at; without one, production's, else the latest."""
    model = client.get_model(name)
    found = model.aliases.get(alias or "production")
    if found is None and alias:
        fail(f"model {name!r} has no alias {alias!r}")
    version = found if found is not None else model.latest_version
    if version is None:
        fail(f"model {name!r} has no versions yet, so no model card")
    return version


@app.command()
def card(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS (default: production, else latest).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the card to this file instead of printing it.")
    ] = None,
    description: Annotated[
        Path | None,
        typer.Option(
            "--description", "--edit-description", help="Set the description from this Markdown file ('-': stdin)."
        ),
    ] = None,
    intended_use: Annotated[
        Path | None, typer.Option("--intended-use", help="Set the intended use from this Markdown file.")
    ] = None,
    limitations: Annotated[
        Path | None, typer.Option("--limitations", help="Set the limitations and caveats from this Markdown file.")
    ] = None,
) -> None:
    """Print a version's model card (Markdown, Hugging Face layout), or edit the model's card text.

    With --edit-description / --intended-use / --limitations the model's card text gets a new
    revision (needs a writer GALLERY_TOKEN); the generated cards follow.
    """
    match = _REF.match(ref)
    if match is None:
        fail(f"cannot read {ref!r}: use NAME, NAME:VERSION or NAME@ALIAS", 2)
    name, alias, number = match["name"], match["alias"], match["version"]
    edits = {
        field: _read_text(path)
        for field, path in (("description", description), ("intended_use", intended_use), ("limitations", limitations))
        if path is not None
    }
    with RegistryServiceClient() as client:
        if edits:
            if alias or number:
                fail("the card text belongs to the model: give NAME alone when editing it", 2)
            saved = client.json("PUT", f"{model_path(name)}/card", json=edits)
            say(f"{name}: card text revision {saved['revision']} ({', '.join(sorted(edits))} updated)")
            return
        version = int(number) if number else _card_version(client, name, alias)
        text = client.request("GET", f"{model_path(name)}/versions/{version}/card").text
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    say(f"model card of {name} version {version} written to {output}")


def _attachment_name(response: httpx.Response, fallback: str) -> str:
    """The file name the answer's Content-Disposition gives (its last path part only), else `fallback`."""
    header = Message()
    header["content-disposition"] = response.headers.get("content-disposition", "")
    name = Path(header.get_filename() or "").name
    return name if name not in ("", ".", "..") else fallback


def _receive(response: httpx.Response, target: Path, expected: ArtifactRef, what: str) -> int:
    """Write the body next to `target` with a progress bar, check its sha256 against `expected`, then
    move it into place; nothing is left behind when it fails. Returns the bytes written."""
    total = int(response.headers.get("content-length") or 0) or expected.size
    digest = hashlib.sha256()
    size = 0
    # created as any new file is (mode 0666 less the umask), unlike mkstemp's 0600
    part = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with os.fdopen(fd, "wb") as out, Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task(what, total=total)
            for chunk in response.iter_bytes():
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress.update(task, completed=size)
        if digest.hexdigest() != expected.sha256:
            fail(f"{what}: the {size} bytes received do not match the registry's sha256 ({expected.sha256[:16]}…)")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return size


@app.command()
def download(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS (default: production, else latest).")],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            "-r",
            help="The artifact: onnx, a variant (int8, fp16, pruned, distilled), edge_bundle, model-card, ...",
        ),
    ] = "onnx",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The file to write, or a folder to write it in (default: here)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a file that is there already.")] = False,
) -> None:
    """Download one of a version's artifacts through the Gallery (GALLERY_GALLERY_URL), checked against the
    sha256 the registry holds (`gallery models show NAME:VERSION` lists a version's artifacts)."""
    match = _REF.match(ref)
    if match is None:
        fail(f"cannot read {ref!r}: use NAME, NAME:VERSION or NAME@ALIAS", 2)
    name, alias, given = match["name"], match["alias"], match["version"]
    with RegistryServiceClient() as registry:
        number = int(given) if given else _card_version(registry, name, alias)
        version = registry.get_version(name, number)
    expected = next((artifact for held, artifact in version.artifacts.items() if held.value == role), None)
    if expected is None:
        held = ", ".join(sorted(r.value for r in version.artifacts)) or "none"
        fail(f"{name}:{number} has no {role!r} artifact (it holds: {held})")
    what = f"{name}:{number} {role}"
    path = f"/api/gallery/models/{quote(name, safe='')}/versions/{number}/artifacts/{quote(role, safe='')}"
    with GalleryClient(timeout=300.0) as gallery, gallery.stream("GET", path) as response:
        target = output if output is not None else Path()
        if target.is_dir():
            target = target / _attachment_name(response, f"{name}-v{number}-{role}")
        if target.exists() and not force:
            fail(f"{target} is there already (--force replaces it)")
        if not target.parent.is_dir():
            fail(f"cannot write {target}: {target.parent} is not a folder", 2)
        size = _receive(response, target, expected, what)
    say(f"{what}: {size} bytes, sha256 {expected.sha256[:16]}… checked → {target}")
