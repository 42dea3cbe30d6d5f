"""`gallery projects ...`: the projects you hold a role in, and their members, from the registry's
`/api/v1/projects` API. A project you cannot see answers as one that does not exist."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from .console import console, fail, say
from .service_client import RegistryServiceClient

app = typer.Typer(help="Projects: list, create, show, grant and revoke members.", no_args_is_help=True)

ROLES = ("reader", "writer", "admin", "inference")


def project_path(name: str) -> str:
    return f"/api/v1/projects/{quote(name, safe='')}"


def _missing(project: str) -> str:
    """The line for a 404: a project that does not exist and one you hold no role in answer alike."""
    return f"project {project!r} not found"


def _print_members(project: dict[str, Any]) -> None:
    members = project.get("members")
    if members is None:
        say("members: shown to the project's admins only")
        return
    if not members:
        say("members: none (installation-wide roles hold here too)")
        return
    table = Table(show_header=True, title=f"members of {project['name']}")
    table.add_column("member")
    table.add_column("role")
    for principal, role in members.items():
        table.add_row(principal, role)
    console.print(table)


def _print_project(project: dict[str, Any]) -> None:
    say(f"project {project['name']}  your role {project.get('your_role') or '-'}")
    if project.get("description"):
        say(project["description"])
    say(f"created by {project['created_by']} at {project['created_at']}")
    _print_members(project)


@app.command("list")
def list_projects() -> None:
    """The projects you hold a role in, with your role there."""
    with RegistryServiceClient() as client:
        projects = client.json("GET", "/api/v1/projects")
    if not projects:
        say("no projects visible to you")
        return
    table = Table(show_header=True)
    for column in ("project", "your role", "members", "description"):
        table.add_column(column)
    for project in projects:
        members = project.get("members")
        table.add_row(
            project["name"],
            project.get("your_role") or "-",
            "-" if members is None else str(len(members)),
            project.get("description") or "-",
        )
    console.print(table)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="lowercase letters, digits and '-', starting with a letter")],
    description: Annotated[str, typer.Option(help="What the project holds.")] = "",
) -> None:
    """Create a project (needs the installation-wide admin role)."""
    with RegistryServiceClient() as client:
        project = client.json("POST", "/api/v1/projects", json={"name": name, "description": description})
    say(f"project {project['name']} created")


@app.command("show")
def show(name: str) -> None:
    """A project: your role, and its members when you are its admin."""
    with RegistryServiceClient() as client:
        project = client.json("GET", project_path(name), _missing(name))
    _print_project(project)


@app.command("grant")
def grant(
    project: str,
    principal: Annotated[str, typer.Argument(help="oidc:<subject>, group:<name> or token-<8 hex digits>")],
    role: Annotated[str, typer.Argument(help="reader, writer, admin or inference")],
) -> None:
    """Give PRINCIPAL the ROLE in PROJECT (needs admin in the project)."""
    if role not in ROLES:
        fail(f"role {role!r} must be one of {', '.join(ROLES)}")
    path = f"{project_path(project)}/members/{quote(principal, safe='')}"
    with RegistryServiceClient() as client:
        client.json("PUT", path, _missing(project), json={"role": role})
    say(f"{principal} is {role} in {project}")


@app.command("revoke")
def revoke(project: str, principal: str) -> None:
    """Take PRINCIPAL's role in PROJECT away (needs admin in the project)."""
    path = f"{project_path(project)}/members/{quote(principal, safe='')}"
    with RegistryServiceClient() as client:
        client.json("DELETE", path, _missing(project))
    say(f"{principal} is no longer a member of {project}")
