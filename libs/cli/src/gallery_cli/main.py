"""The `gallery` command line: wiring only; each command group lives in its own module."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from . import (
    audit_cmd,
    deploy_cmd,
    events_cmd,
    experiment_cmd,
    explain_cmd,
    feedback_cmd,
    import_cmd,
    login_cmd,
    models_cmd,
    monitor_cmd,
    optimize_cmd,
    policy_cmd,
    projects_cmd,
    runs_cmd,
    service_client,
    site_cmd,
    slo_cmd,
    stack_cmd,
    train_cmd,
    usage_cmd,
)

app = typer.Typer(
    name="gallery",
    help=(
        "Model Gallery: run the local stack and inspect the lifecycle events.\n\n"
        "Settings come from GALLERY_* environment variables (GALLERY_HOME, GALLERY_NATS_URL, ...)."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)
app.command()(stack_cmd.up)
app.command()(stack_cmd.down)
app.command()(stack_cmd.status)
app.add_typer(events_cmd.app, name="events")
app.command()(train_cmd.train)
app.add_typer(runs_cmd.app, name="runs")
models_cmd.app.command("import")(import_cmd.import_model)
app.add_typer(models_cmd.app, name="models")
app.command()(optimize_cmd.optimize)
app.command()(deploy_cmd.deploy)
app.command()(deploy_cmd.promote)
app.command()(deploy_cmd.rollback)
app.command()(deploy_cmd.deployments)
app.command()(deploy_cmd.variants)
app.command()(policy_cmd.policy)
app.add_typer(experiment_cmd.app, name="experiment")
app.command()(monitor_cmd.monitor)
app.command()(slo_cmd.slo)
app.command()(explain_cmd.explain)
app.command()(feedback_cmd.feedback)
app.command()(usage_cmd.usage)
app.add_typer(site_cmd.app, name="site")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(projects_cmd.app, name="projects")
app.command()(login_cmd.login)
app.command()(login_cmd.logout)


def _version() -> str:
    try:
        return version("modelgallery-cli")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gallery {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    _version_flag: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            envvar="GALLERY_PROJECT",
            help="The project to act in: sent as X-Gallery-Project on every request and ?project= on lists.",
        ),
    ] = None,
) -> None:
    """Global options; the commands are registered above."""
    service_client.select_project(project)
