"""`gallery login` and `gallery logout`: the CLI signs a person in at the organisation's identity provider.

The authorization-code flow with PKCE and a loopback redirect, as RFC 8252 has native apps do it: the
CLI listens on 127.0.0.1 on a free port, prints the provider's login address (and opens a browser
when there is one), takes the code the provider sends back to `http://127.0.0.1:<port>/callback`,
checks the state and exchanges the code with the PKCE verifier for the tokens. The access token is
kept in `$XDG_CONFIG_HOME/model-gallery/token` (`~/.config/...`; mode 0600, its folder 0700) and
sent while it is valid when GALLERY_TOKEN is not set; `gallery logout` deletes it.

The issuer is GALLERY_OIDC_ISSUER (or --issuer), the client GALLERY_OIDC_CLIENT_ID (or --client-id):
a public client at the provider whose redirect URI is `http://127.0.0.1/callback` (any port).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import typer

from .console import fail

DISCOVERY_PATH = "/.well-known/openid-configuration"
CALLBACK_PATH = "/callback"


def token_file() -> Path:
    """Where `gallery login` keeps the access token."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "model-gallery" / "token"


def stored_token() -> str | None:
    """The token `gallery login` kept, while it is valid; None otherwise."""
    try:
        kept = json.loads(token_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or float(kept.get("expires_at", 0)) <= time.time():
        return None
    token = kept.get("access_token")
    return token if isinstance(token, str) else None


def _keep(access_token: str, expires_at: float, issuer: str) -> Path:
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"access_token": access_token, "expires_at": expires_at, "issuer": issuer}, out)
    return path


class _Callback:
    """The loopback listener: the one redirect the provider sends back, with its query."""

    def __init__(self) -> None:
        self.query: dict[str, list[str]] | None = None
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                url = urlsplit(self.path)
                if url.path != CALLBACK_PATH:
                    self.send_error(404)
                    return
                outer.query = parse_qs(url.query)
                body = b"<!doctype html><title>Model Gallery</title><p>Signed in: you can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the CLI prints what matters itself

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.redirect_uri = f"http://127.0.0.1:{self.server.server_port}{CALLBACK_PATH}"

    def wait(self, timeout_s: float) -> dict[str, list[str]] | None:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            self.arrived.wait(timeout_s)
        finally:
            self.server.shutdown()
            self.server.server_close()
        return self.query


def _discover(issuer: str) -> dict[str, Any]:
    try:
        answer = httpx.get(issuer.rstrip("/") + DISCOVERY_PATH, timeout=10)
        answer.raise_for_status()
        document = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot read the identity provider's discovery document at {issuer}: {exc}")
    if not isinstance(document, dict) or "authorization_endpoint" not in document or "token_endpoint" not in document:
        fail(f"the identity provider at {issuer} names no authorization and token endpoints")
    return document


def login(
    issuer: Annotated[str | None, typer.Option(help="the identity provider (default GALLERY_OIDC_ISSUER)")] = None,
    client_id: Annotated[str | None, typer.Option(help="the CLI's client (default GALLERY_OIDC_CLIENT_ID)")] = None,
    browser: Annotated[bool, typer.Option(help="open the login page in a browser")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the sign-in")] = 300.0,
) -> None:
    """Sign in at the identity provider (authorization code with PKCE, loopback redirect) and keep the token."""
    issuer = issuer or os.environ.get("GALLERY_OIDC_ISSUER")
    client_id = client_id or os.environ.get("GALLERY_OIDC_CLIENT_ID")
    if not issuer or not client_id:
        fail("gallery login needs the identity provider and the CLI's client: set GALLERY_OIDC_ISSUER and "
             "GALLERY_OIDC_CLIENT_ID, or pass --issuer and --client-id")  # fmt: skip
    endpoints = _discover(issuer)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    callback = _Callback()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": callback.redirect_uri,
        "scope": "openid profile",
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    url = f"{endpoints['authorization_endpoint']}?{urlencode(query)}"
    typer.echo(f"Sign in at: {url}", err=True)
    if browser:
        webbrowser.open(url)
    answer = callback.wait(timeout)
    if answer is None:
        fail(f"no sign-in within {timeout:g} s")
    if "error" in answer:
        fail(f"the identity provider refused the sign-in: {(answer.get('error_description') or answer['error'])[0]}")
    if answer.get("state") != [state]:
        fail("the sign-in's answer does not carry this login's state: not accepted")
    form = {
        "grant_type": "authorization_code",
        "code": answer["code"][0],
        "redirect_uri": callback.redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
    }
    exchanged = httpx.post(endpoints["token_endpoint"], data=form, timeout=10)
    if exchanged.status_code != 200:
        fail(f"the identity provider refused the code ({exchanged.status_code}): {exchanged.text[:200]}")
    tokens = exchanged.json()
    expires_at = time.time() + float(tokens.get("expires_in", 300))
    path = _keep(str(tokens["access_token"]), expires_at, issuer)
    until = time.strftime("%H:%M", time.localtime(expires_at))
    typer.echo(f"signed in at {issuer}; the token is kept in {path} until {until}")


def logout() -> None:
    """Forget the token `gallery login` kept."""
    path = token_file()
    path.unlink(missing_ok=True)
    typer.echo(f"signed out: {path} deleted")
