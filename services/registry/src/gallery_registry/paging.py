"""Opaque page tokens over offsets, and portable name patterns for searches."""

from __future__ import annotations

import base64
import binascii

import orjson
import sqlalchemy as sa

from gallery_common.errors import BadRequest

_MAX_OFFSET = 10_000_000


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"offset": offset})).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The offset a token stands for; BadRequest if the token was not made by `encode_page_token`."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = doc["offset"]
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise BadRequest(f"invalid page_token {token!r}: pass the next_page_token of a previous page") from None
    if not isinstance(offset, int) or not 0 <= offset <= _MAX_OFFSET:
        raise BadRequest(f"invalid page_token {token!r}: pass the next_page_token of a previous page")
    return offset


def next_token(offset: int, limit: int, fetched: int) -> str | None:
    """The token of the next page, given that `limit + 1` rows were asked for and `fetched` came."""
    return encode_page_token(offset + limit) if fetched > limit else None


def like(column: sa.ColumnElement[str], pattern: str, dialect: str) -> sa.ColumnElement[bool]:
    """Case-sensitive SQL LIKE on every backend (SQLite's LIKE ignores case, so it gets GLOB)."""
    if dialect != "sqlite":
        return column.like(pattern)
    glob = "".join("*" if c == "%" else "?" if c == "_" else f"[{c}]" if c in "*?[" else c for c in pattern)
    return column.op("GLOB")(glob)  # type: ignore[no-any-return]


def ilike(column: sa.ColumnElement[str], pattern: str) -> sa.ColumnElement[bool]:
    return sa.func.lower(column).like(pattern.lower())


def contains(column: sa.ColumnElement[str], text: str) -> sa.ColumnElement[bool]:
    """Case-insensitive substring match, with '%' and '_' in `text` taken literally."""
    return sa.func.lower(column).contains(text.lower(), autoescape=True)
