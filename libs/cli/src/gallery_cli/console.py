"""The consoles and settings every command shares."""

from __future__ import annotations

from typing import NoReturn, TypeVar, overload

import typer
from rich.console import Console
from rich.table import Table

from gallery_common.settings import GallerySettings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one plain message on stderr (no markup: it may hold paths or brackets) and exit."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_fields(title: str, rows: list[tuple[str, str, str]], changed: set[str]) -> None:
    """A table of settings (name, value, meaning), the names in `changed` in bold and the title saying so."""
    table = Table(title=title + (" (changed)" if changed else ""), title_justify="left")
    for column in ("field", "value", "meaning"):
        table.add_column(column)
    for name, value, meaning in rows:
        table.add_row(name, value, meaning, style="bold" if name in changed else "")
    console.print(table)


S = TypeVar("S", bound=GallerySettings)


@overload
def cli_settings() -> GallerySettings: ...
@overload
def cli_settings(cls: type[S]) -> S: ...
def cli_settings(cls: type[GallerySettings] = GallerySettings) -> GallerySettings:
    """Settings of `cls` from `GALLERY_*`; exit 2 with the one-line reason when they are invalid."""
    try:
        return load_settings(cls)
    except SettingsError as exc:
        fail(str(exc.code), 2)


def say(message: str, *, err: bool = False, style: str | None = None) -> None:
    """Print one plain line (no markup, no wrapping: it may hold paths and is often grepped)."""
    (err_console if err else console).print(message, style=style, markup=False, highlight=False, soft_wrap=True)
