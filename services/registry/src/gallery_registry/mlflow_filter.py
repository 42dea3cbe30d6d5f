"""The subset of MLflow's search filter and order_by syntax the registry understands.

Filters are clauses joined by AND: `name = 'x'`, `name LIKE 'x%'`, `name ILIKE '%x%'`,
`tags.key = 'v'`, `tags.key != 'v'` (also ``tags.`a key` ``), and for versions `run_id = '...'`,
`version_number = 3`, `source_path = '...'`. Anything else is refused with a message naming what
is supported (MLflow's INVALID_PARAMETER_VALUE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from gallery_common.errors import InvalidRequest

from .schemas import ModelOrder, ModelQuery, VersionOrder, VersionQuery

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?\d+(?![\w.]))
    | (?P<op>!=|=)
    | (?P<word>(?:[A-Za-z_][\w]*\.)?(?:`[^`]*`|[A-Za-z_][\w.]*))
    )""",
    re.VERBOSE,
)
_WORD_OPS = {"LIKE", "ILIKE"}
K = TypeVar("K")


@dataclass(frozen=True)
class Condition:
    key: str  # "name", "run_id", "tags.<key>", ...
    op: str  # "=", "!=", "LIKE", "ILIKE"
    value: str | int


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidRequest(f"cannot parse filter {text!r} at position {pos}: {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _key(word: str) -> str:
    prefix, dot, rest = word.partition(".")
    if dot and prefix.lower() in {"tag", "tags"}:
        return "tags." + rest.strip("`")
    return word.strip("`").lower()


def _value(kind: str, text: str) -> str | int:
    if kind == "num":
        return int(text)
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse_filter(text: str | None) -> list[Condition]:
    """Clauses of an MLflow filter string; InvalidRequest if it is outside the supported subset."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    conditions: list[Condition] = []
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise InvalidRequest(f"cannot parse filter {text!r}: expected KEY OP VALUE, e.g. name = 'iris'")
        (k_kind, key), (o_kind, op), (v_kind, value) = tokens[i : i + 3]
        op_name = op.upper() if o_kind == "word" else op
        if k_kind != "word" or (o_kind != "op" and op_name not in _WORD_OPS) or v_kind not in {"str", "num"}:
            raise InvalidRequest(
                f"cannot parse filter {text!r}: expected KEY OP VALUE with OP one of =, !=, LIKE, ILIKE "
                "and VALUE a quoted string or a number"
            )
        conditions.append(Condition(_key(key), op_name, _value(v_kind, value)))
        i += 3
        if i == len(tokens):
            return conditions
        if tokens[i] != ("word", tokens[i][1]) or tokens[i][1].upper() != "AND":
            raise InvalidRequest(f"cannot parse filter {text!r}: clauses must be joined by AND")
        i += 1


def _unsupported(cond: Condition, supported: str) -> InvalidRequest:
    return InvalidRequest(f"unsupported filter clause {cond.key} {cond.op} {cond.value!r}; supported: {supported}")


_MODEL_FILTERS = "name = | LIKE | ILIKE '...', tags.KEY = | != '...'"
_VERSION_FILTERS = "name = | LIKE '...', run_id = '...', version_number = N, source_path = '...', tags.KEY = | != '...'"


def model_query(filter_text: str | None, order_by: list[str], limit: int, offset: int) -> ModelQuery:
    """A store query for MLflow's SearchRegisteredModels."""
    query = ModelQuery(limit=limit, offset=offset)
    for cond in parse_filter(filter_text):
        value = str(cond.value)
        if cond.key == "name" and cond.op == "=":
            query.name_equals = value
        elif cond.key == "name" and cond.op == "LIKE":
            query.name_like = value
        elif cond.key == "name" and cond.op == "ILIKE":
            query.name_ilike = value
        elif cond.key.startswith("tags.") and cond.op == "=":
            query.tags[cond.key.removeprefix("tags.")] = value
        elif cond.key.startswith("tags.") and cond.op == "!=":
            query.tags_not[cond.key.removeprefix("tags.")] = value
        else:
            raise _unsupported(cond, _MODEL_FILTERS)
    columns = {
        "name": ModelOrder.name,
        "timestamp": ModelOrder.created,
        "creation_timestamp": ModelOrder.created,
        "last_updated_timestamp": ModelOrder.updated,
    }
    key, descending = _order(order_by, columns, ModelOrder.name)
    query.order_by, query.descending = key, descending
    return query


def version_query(filter_text: str | None, order_by: list[str], limit: int, offset: int) -> VersionQuery:
    """A store query for MLflow's SearchModelVersions."""
    query = VersionQuery(limit=limit, offset=offset)
    for cond in parse_filter(filter_text):
        value = cond.value
        if cond.key == "name" and cond.op == "=":
            query.name = str(value)
        elif cond.key == "name" and cond.op == "LIKE":
            query.name_like = str(value)
        elif cond.key == "run_id" and cond.op == "=":
            query.run_id = str(value)
        elif cond.key in {"version_number", "version"} and cond.op == "=":
            try:
                query.version = int(value)
            except ValueError:
                raise InvalidRequest(f"version_number must be an integer, got {value!r}") from None
        elif cond.key == "source_path" and cond.op == "=":
            query.source = str(value)
        elif cond.key.startswith("tags.") and cond.op == "=":
            query.tags[cond.key.removeprefix("tags.")] = str(value)
        elif cond.key.startswith("tags.") and cond.op == "!=":
            query.tags_not[cond.key.removeprefix("tags.")] = str(value)
        else:
            raise _unsupported(cond, _VERSION_FILTERS)
    columns = {
        "version_number": VersionOrder.version,
        "timestamp": VersionOrder.created,
        "creation_timestamp": VersionOrder.created,
        "last_updated_timestamp": VersionOrder.updated,
    }
    key, descending = _order(order_by, columns, VersionOrder.version, default_descending=True)
    query.order_by, query.descending = key, descending
    return query


def _order(
    clauses: list[str], columns: dict[str, K], default: K, *, default_descending: bool = False
) -> tuple[K, bool]:
    if not clauses:
        return default, default_descending
    if len(clauses) > 1:
        raise InvalidRequest(f"order_by {clauses!r}: only one order_by clause is supported")
    parts = clauses[0].split()
    column = parts[0].strip("`").lower() if parts else ""
    direction = parts[1].upper() if len(parts) > 1 else "ASC"
    if column not in columns or direction not in {"ASC", "DESC"} or len(parts) > 2:
        raise InvalidRequest(
            f"invalid order_by {clauses[0]!r}: use one of {', '.join(columns)} followed by ASC or DESC"
        )
    return columns[column], direction == "DESC"
