"""`gallery audit ...`: who changed what, when and why; the trail exported for a SIEM; its chain checked.

`list` and `export` ask the registry's REST API (GALLERY_REGISTRY_URL, GALLERY_TOKEN). `verify` reads
the audit stream itself, as the CLI's NATS user, so the check does not depend on any service: it
exits 1 and names the first broken record when a record was edited, deleted or reordered, or when
the chain disagrees with an anchor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gallery_common.audit import DEFAULT_PROJECT, AuditAction, VerifyReport
from gallery_common.audit_log import AuditLog

from .console import cli_settings, console, fail, say
from .events_cmd import _connected, _run
from .service_client import RegistryServiceClient

app = typer.Typer(help="The audit trail: list, export for a SIEM, verify the hash chain.", no_args_is_help=True)

ProjectOption = Annotated[str, typer.Option(help="The project whose chain to read.")]


def _params(
    project: str, model: str | None, action: AuditAction | None, since: str | None, until: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"project": project}
    for key, value in (("model", model), ("action", action), ("since", since), ("until", until)):
        if value is not None:
            params[key] = str(value)
    return params


def _change(before: Any, after: Any) -> str:
    def short(value: Any) -> str:
        if isinstance(value, dict) and len(value) == 1:
            return str(next(iter(value.values())))
        return "-" if value is None else json.dumps(value, separators=(",", ":"))[:60]

    return f"{short(before)} → {short(after)}"


@app.command("list")
def list_records(
    project: ProjectOption = DEFAULT_PROJECT,
    model: Annotated[str | None, typer.Option(help="Only changes of this model.")] = None,
    action: Annotated[AuditAction | None, typer.Option(help="Only this kind of change.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601: at or after.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601: before.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="The records as JSON.")] = False,
) -> None:
    """The latest changes, newest first: when, who, what, before → after, why."""
    params = _params(project, model, action, since, until) | {"limit": limit}
    with RegistryServiceClient() as client:
        records = client.json("GET", "/api/v1/audit", params=params)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        say("no audit records match")
        return
    table = Table(show_header=True)
    for column in ("#", "time", "actor", "action", "target", "change", "reason"):
        table.add_column(column)
    for record in records:
        table.add_row(
            str(record["index"]),
            record["time"][:19].replace("T", " "),
            record["actor"],
            record["action"],
            record["target"],
            _change(record.get("before"), record.get("after")),
            record.get("reason") or "-",
        )
    console.print(table)


@app.command()
def export(
    project: ProjectOption = DEFAULT_PROJECT,
    model: Annotated[str | None, typer.Option(help="Only changes of this model.")] = None,
    action: Annotated[AuditAction | None, typer.Option(help="Only this kind of change.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601: at or after.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601: before.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """The records as stored, oldest first, one JSON object a line (JSON Lines), for a SIEM."""
    with RegistryServiceClient() as client:
        body = client.request("GET", "/api/v1/audit/export", params=_params(project, model, action, since, until))
    if output is None:
        sys.stdout.write(body.text)
        return
    output.write_text(body.text)
    say(f"{len(body.text.splitlines())} records written to {output}", err=True)


def _report_line(report: VerifyReport) -> str:
    if report.broken is None:
        span = f"records {report.first_index}-{report.last_index}" if report.records else "no records"
        return f"{report.project}: OK, {span}, {report.anchors} anchors agree; last hash {report.last_hash or '-'}"
    where = f" at stream message {report.broken.seq}" if report.broken.seq is not None else ""
    return f"{report.project}: BROKEN ({report.broken.kind}){where}: {report.broken.message}"


@app.command()
def verify(
    project: Annotated[str | None, typer.Option(help="One project; every project with records when omitted.")] = None,
) -> None:
    """Check each project's hash chain and anchors in the audit stream; exit 1 at the first broken one."""
    settings = cli_settings()

    async def check() -> list[VerifyReport]:
        async with _connected(settings) as bus:
            audit = AuditLog(bus)
            projects = [project] if project else await audit.projects()
            return [await audit.verify(name) for name in projects]

    reports = _run(check(), settings)
    if not reports:
        say("the audit trail holds no records")
        return
    for report in reports:
        say(_report_line(report), style=None if report.ok else "bold red")
    if not all(report.ok for report in reports):
        fail("the audit trail has been tampered with (see above)")
