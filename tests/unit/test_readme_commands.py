"""The README's `gallery` commands and REST routes exist as it writes them.

Every `gallery ...` the README writes, in a code block or inline, names subcommands and options the
CLI's own parser takes (with the options inside `[...]` and `(... | ...)`); every `GET /api/v1/...`-style
route it names (absolute, or relative to `/api/v1` as the deployer's list writes them) is one of some
service's routes. A renamed option or route fails here instead of in a reader's terminal.
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_apps import GALLERY_APP, LIFECYCLE_APPS
from typer.testing import CliRunner

from gallery_cli.main import app as cli_app

README = Path(__file__).resolve().parents[2] / "README.md"
_COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?gallery\s+(?P<args>.*)$")
_INLINE = re.compile(r"`(?:\.venv/bin/)?gallery (?P<args>[^`]+)`")
_ROUTE = re.compile(r"\b(?P<method>GET|POST|PUT|DELETE|PATCH)\s+(?P<path>/[^\s`),;?]*)")


def _code_lines() -> Iterator[tuple[int, str, bool]]:
    """(line number, text, inside a code block) for every README line outside the fences; in a code block a
    line ending in a backslash is joined with the next, as a shell reads it."""
    in_block, pending, first = False, "", 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block and line.rstrip().endswith("\\"):
            pending, first = pending + line.rstrip()[:-1] + " ", first or number
            continue
        yield (first or number), pending + line, in_block
        pending, first = "", 0


def _commands() -> Iterator[tuple[int, str, bool]]:
    """(line number, the arguments after `gallery`, whole command?) for every command the README writes."""
    for number, line, in_block in _code_lines():
        if in_block:
            text = re.sub(r"^\$ ", "", line.strip())
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", text):
                if match := _COMMAND.match(part.strip()):
                    yield number, match["args"].split(" #")[0].rstrip("\\ "), True
        else:
            for match in _INLINE.finditer(line):
                yield number, match["args"], False


def _usage_error(args: list[str]) -> str | None:
    """What the CLI's own parser says of `gallery <args>`, or None when it takes them.

    The arguments are parsed with `--help` after them: click reads every subcommand and option before
    it acts on `--help`, so an unknown command or option is still an error, while nothing runs (an
    argument left out, as an inline mention does, is not checked)."""
    result = CliRunner().invoke(cli_app, [*args, "--help"])
    if result.exit_code == 0:
        return None
    return " ".join(result.output.split()) or repr(result.exception)


def test_the_readme_writes_commands_and_routes_to_check() -> None:
    commands = list(_commands())
    routes = [m for _, line, _ in _code_lines() for m in _ROUTE.finditer(line)]
    assert len(commands) > 50 and sum(whole for *_, whole in commands) >= 5, len(commands)
    assert len(routes) > 30, len(routes)


def test_every_gallery_command_in_the_readme_parses() -> None:
    wrong = []
    for number, args, _ in _commands():
        # `[--alpha 0.05]`, `(--label N | --reward X)`: the options inside are checked too
        words = [word for word in shlex.split(re.sub(r"[\[\]()|\\]", " ", args)) if word != "..."]
        if (error := _usage_error(words)) is not None:
            wrong.append(f"README.md:{number}: gallery {args}: {error}")
    assert not wrong, "\n".join(wrong)


def test_a_command_the_cli_lacks_is_caught() -> None:
    assert _usage_error(["deploy", "digits:1", "--canary", "10"]) is None
    assert "--no-such-flag" in (_usage_error(["deploy", "digits:1", "--no-such-flag"]) or "")
    assert "--no-such-flag" in (_usage_error(["models", "list", "--no-such-flag"]) or "")
    assert "no-such-command" in (_usage_error(["no-such-command"]) or "")


@pytest.fixture(scope="module")
def service_routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every documented route of every service, from each app's OpenAPI
    document (the apps are built, not started)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GALLERY_HOME", str(tmp_path_factory.mktemp("home")))
        apps = [importlib.import_module(name).create() for name in (*LIFECYCLE_APPS, GALLERY_APP)]
        documents = [app.openapi() for app in apps]
    routes = []
    for document in documents:
        for path, operations in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
            routes += [(method.upper(), pattern) for method in operations]
    return routes


def test_every_route_the_readme_names_is_served(service_routes: list[tuple[str, re.Pattern[str]]]) -> None:
    missing = []
    for number, line, _ in _code_lines():
        for match in _ROUTE.finditer(line):
            method, path = match["method"], re.sub(r"<[^>]+>", "x", match["path"].rstrip(".:"))
            # `[/versions/{v}]`: with and without the optional part; `[?all=true]`: without
            paths = {re.sub(r"\[([^\]]*)\]", r"\1", path), re.sub(r"\[[^\]]*\]?", "", path)}
            # the deployer's list writes its paths relative to /api/v1
            candidates = [c for p in paths for c in (p, f"/api/v1{p}")]
            if not any(m == method and p.match(c) for m, p in service_routes for c in candidates):
                missing.append(f"README.md:{number}: {method} {match['path']}")
    assert not missing, "\n".join(missing)


def test_a_route_no_service_serves_is_caught(service_routes: list[tuple[str, re.Pattern[str]]]) -> None:
    assert any(m == "GET" and p.match("/api/v1/models/digits/versions/1") for m, p in service_routes)
    assert not any(m == "GET" and p.match("/api/v1/no-such-route") for m, p in service_routes)
    assert not any(m == "DELETE" and p.match("/api/v1/audit") for m, p in service_routes)
