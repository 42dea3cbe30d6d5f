"""The Gallery's catalogue: every model as a card, searched, filtered, sorted and paged in SQL.

One page costs a fixed handful of queries whatever its size: the page of models (with the id of
each one's featured version), then their tags, version counts, featured versions, those versions'
aliases and optimizer tags, and the models' validation policies, each in one IN query.

A model's featured version is the one its `production` alias points at, else its latest validated
version; its metrics are what the trainer registered overlaid by the gate's own evaluation.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from gallery_common.db import as_utc
from gallery_common.errors import BadRequest

from . import paging, views
from .schemas import VersionStatus
from .store_base import StoreBase
from .tables import ModelTagRow, ValidationPolicyRow

PRODUCTION = "production"
METRIC_PATTERN = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
# where the optimizer leaves its recommendation on the version it optimized (see the optimizer's delivery)
RECOMMENDED_TAG = "optimizer.recommended"
RECOMMENDED_SIZE_TAG = "optimizer.recommended_size_bytes"
RECOMMENDED_P50_TAG = "optimizer.recommended_p50_ms"
OPTIMIZER_TAG_PREFIX = "optimizer."
# figures of the gate's report that are not quality metrics
NOT_METRICS = frozenset({"n_test"})

MODEL_TAG: sa.Table = ModelTagRow.__table__  # type: ignore[attr-defined]
POLICY: sa.Table = ValidationPolicyRow.__table__  # type: ignore[attr-defined]


class CatalogueSort(StrEnum):
    name = "name"
    updated = "updated"
    metric = "metric"


class CatalogueQuery(BaseModel):
    """A catalogue search: every given filter must match."""

    q: str | None = Field(default=None, description="substring of name, description, tag key or value; any case")
    task: str | None = None
    stage: str | None = Field(default=None, description="production, or a version status some version has")
    tags: dict[str, str | None] = Field(default_factory=dict)
    metric: str | None = None
    min_metric: float | None = None
    projects: list[str] | None = Field(default=None, description="only models of these projects (None: any)")
    sort: CatalogueSort = CatalogueSort.name
    descending: bool = False
    limit: int = Field(default=24, ge=1, le=100)
    offset: int = Field(default=0, ge=0)


class HeadlineMetric(BaseModel):
    name: str
    value: float


class RecommendedVariant(BaseModel):
    """The optimizer's recommendation for the version: its variant, size and batch-1 p50 latency."""

    name: str
    size_bytes: float | None
    p50_ms: float | None


class FeaturedVersion(BaseModel):
    version: int
    semver: str
    status: VersionStatus
    aliases: list[str] = Field(description="its aliases: holds 'production' unless no version is in production")
    metrics: dict[str, float]
    headline_metric: HeadlineMetric | None
    recommended_variant: RecommendedVariant | None


class CatalogueEntry(BaseModel):
    name: str
    summary: str | None = Field(description="first non-empty line of the description")
    owner: str | None
    tags: dict[str, str]
    task: str | None
    project: str
    updated_at: datetime
    latest_version: int | None
    version_count: int
    production: FeaturedVersion | None = Field(
        description="the production version, else the latest validated one, else null"
    )


class CataloguePage(BaseModel):
    models: list[CatalogueEntry]
    next_page_token: str | None
    total: int = Field(description="models matching the filters, on every page")


def summary_of(description: str | None) -> str | None:
    """The first non-empty line, without a Markdown heading's leading '#'s."""
    for line in (description or "").splitlines():
        text = line.strip().lstrip("#").strip()
        if text:
            return text
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def version_metrics(metrics: Mapping[str, Any] | None, report: Mapping[str, Any] | None) -> dict[str, float]:
    """The registered metrics overlaid by the scalar figures of the gate's evaluation report."""
    out = {k: n for k, v in (metrics or {}).items() if (n := _number(v)) is not None}
    for key, value in (report or {}).items():
        number = _number(value)
        if number is not None and key not in NOT_METRICS:
            out[key] = number
    return out


def headline(metrics: Mapping[str, float], champion_metric: str | None) -> HeadlineMetric | None:
    """The policy's champion metric if the version has it, else accuracy, else its first quality metric."""
    for name in (champion_metric, "accuracy"):
        if name and name in metrics:
            return HeadlineMetric(name=name, value=metrics[name])
    for name, value in metrics.items():
        if not name.startswith("latency"):
            return HeadlineMetric(name=name, value=value)
    return None


def recommended_variant(tags: Mapping[str, str]) -> RecommendedVariant | None:
    name = tags.get(RECOMMENDED_TAG)
    if not name:
        return None

    def num(key: str) -> float | None:
        try:
            return float(tags[key])
        except (KeyError, ValueError):
            return None

    return RecommendedVariant(name=name, size_bytes=num(RECOMMENDED_SIZE_TAG), p50_ms=num(RECOMMENDED_P50_TAG))


def _json_number(column: sa.ColumnElement[Any], name: str, dialect: str) -> sa.ColumnElement[Any]:
    """The number under key `name` of a JSON column, or NULL when it holds none (or something else)."""
    if dialect == "postgresql":
        return sa.case((sa.func.json_typeof(column[name]) == "number", column[name].as_float()))  # type: ignore[index]
    path = f'$."{name}"'
    return sa.case((sa.func.json_type(column, path).in_(["integer", "real"]), sa.func.json_extract(column, path)))


def _metric_of(version: sa.FromClause, name: str, dialect: str) -> sa.ColumnElement[Any]:
    """A version's metric: the gate's figure, else the registered one (as `version_metrics` reads them)."""
    return sa.func.coalesce(
        _json_number(version.c.evaluation_report, name, dialect), _json_number(version.c.metrics, name, dialect)
    )


class CatalogueOps(StoreBase):
    """The catalogue half of `RegistryStore`."""

    def catalogue(self, query: CatalogueQuery) -> CataloguePage:
        if query.metric is not None and not METRIC_PATTERN.match(query.metric):
            raise BadRequest(f"invalid metric {query.metric!r}: letters, digits, '_', '.', ':', '/', '-'")
        if query.min_metric is not None and query.metric is None:
            raise BadRequest("min_metric needs metric: say which metric must be at least that")
        if query.sort == CatalogueSort.metric and query.metric is None:
            raise BadRequest("sort=metric needs metric: say which metric to sort by")
        model, version, alias = views.MODEL, views.VERSION, views.ALIAS
        with self._read() as session:
            dialect = session.get_bind().dialect.name
            production = (
                sa.select(alias.c.version_id)
                .where(alias.c.model_id == model.c.id, alias.c.alias == PRODUCTION)
                .limit(1)
                .correlate(model)  # explicit: the metric filter nests this one level deeper
                .scalar_subquery()
            )
            validated = version.alias("validated")
            latest_validated = (
                sa.select(validated.c.id)
                .where(validated.c.model_id == model.c.id, validated.c.status == VersionStatus.validated.value)
                .order_by(validated.c.version.desc())
                .limit(1)
                .correlate(model)
                .scalar_subquery()
            )
            featured = sa.func.coalesce(production, latest_validated)
            where = self._filters(query, featured, dialect)
            total = session.connection().execute(sa.select(sa.func.count()).select_from(model).where(*where)).scalar()
            # the page's ids first, then its rows: the featured version is looked up for those rows
            # only, not for every row an offset skips
            stmt = sa.select(model.c.id).where(*where)
            if query.sort == CatalogueSort.metric:
                assert query.metric is not None
                value = self._featured_metric(featured, query.metric, dialect)
                order = [value.is_(None).asc(), value.desc() if query.descending else value.asc(), model.c.name]
            else:
                key = model.c.name if query.sort == CatalogueSort.name else model.c.updated_at
                order = [key.desc() if query.descending else key.asc()]
            stmt = stmt.order_by(*order, model.c.id).offset(query.offset).limit(query.limit + 1)
            conn = session.connection()
            ids = list(conn.execute(stmt).scalars())
            shown = ids[: query.limit]
            found = conn.execute(
                sa.select(
                    model.c.id, model.c.name, model.c.description, model.c.owner, model.c.project, model.c.updated_at
                )
                .add_columns(featured.label("featured_id"))
                .where(model.c.id.in_(shown))
            )
            by_id = {row.id: row for row in found}
            entries = _entries(conn, [by_id[i] for i in shown if i in by_id])
        return CataloguePage(
            models=entries,
            next_page_token=paging.next_token(query.offset, query.limit, len(ids)),
            total=int(total or 0),
        )

    def _featured_metric(self, featured: sa.ColumnElement[Any], metric: str, dialect: str) -> sa.ColumnElement[Any]:
        shown = views.VERSION.alias("featured")
        return sa.select(_metric_of(shown, metric, dialect)).where(shown.c.id == featured).scalar_subquery()

    def _filters(self, query: CatalogueQuery, featured: sa.ColumnElement[Any], dialect: str) -> list[Any]:
        model, version, alias = views.MODEL, views.VERSION, views.ALIAS
        where: list[Any] = []
        if query.projects is not None:
            where.append(model.c.project.in_(query.projects))
        if query.q:
            # IN, not a correlated EXISTS: one pass over the tags instead of a probe per model
            tag_hit = model.c.id.in_(
                sa.select(MODEL_TAG.c.model_id).where(
                    sa.or_(paging.contains(MODEL_TAG.c.key, query.q), paging.contains(MODEL_TAG.c.value, query.q))
                )
            )
            where.append(
                sa.or_(paging.contains(model.c.name, query.q), paging.contains(model.c.description, query.q), tag_hit)
            )
        for key, value in query.tags.items():
            tag = sa.select(MODEL_TAG.c.model_id).where(MODEL_TAG.c.model_id == model.c.id, MODEL_TAG.c.key == key)
            if value is not None:
                tag = tag.where(MODEL_TAG.c.value == value)
            where.append(tag.exists())
        if query.task:
            latest = version.alias("latest")
            latest_task = (
                sa.select(latest.c.task)
                .where(latest.c.model_id == model.c.id)
                .order_by(latest.c.version.desc())
                .limit(1)
                .scalar_subquery()
            )
            where.append(latest_task == query.task)
        if query.stage:
            if query.stage == PRODUCTION:
                where.append(
                    sa.select(alias.c.id).where(alias.c.model_id == model.c.id, alias.c.alias == PRODUCTION).exists()
                )
            else:
                try:
                    status = VersionStatus(query.stage)
                except ValueError:
                    known = ", ".join([PRODUCTION, *(s.value for s in VersionStatus)])
                    raise BadRequest(f"unknown stage {query.stage!r}: use one of {known}") from None
                staged = version.alias("staged")
                where.append(
                    sa.select(staged.c.id)
                    .where(staged.c.model_id == model.c.id, staged.c.status == status.value)
                    .exists()
                )
        if query.min_metric is not None:
            assert query.metric is not None
            where.append(self._featured_metric(featured, query.metric, dialect) >= query.min_metric)
        return where


def _entries(conn: sa.Connection, rows: Sequence[Any]) -> list[CatalogueEntry]:
    """The page's entries from its model rows, in a fixed number of IN queries."""
    if not rows:
        return []
    model_ids = [row.id for row in rows]
    version = views.VERSION
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for tag in conn.execute(sa.select(MODEL_TAG).where(MODEL_TAG.c.model_id.in_(model_ids))):
        tags[tag.model_id][tag.key] = tag.value
    counts = (
        sa.select(
            version.c.model_id,
            sa.func.count().label("n"),
            sa.func.max(version.c.version).label("latest"),
        )
        .where(version.c.model_id.in_(model_ids))
        .group_by(version.c.model_id)
        .subquery()
    )
    stats: dict[int, tuple[int, int, str | None]] = {}
    latest_rows = conn.execute(
        sa.select(counts.c.model_id, counts.c.n, counts.c.latest, version.c.task).join(
            version, sa.and_(version.c.model_id == counts.c.model_id, version.c.version == counts.c.latest)
        )
    )
    for found in latest_rows:
        stats[found.model_id] = (found.n, found.latest, found.task)
    featured_ids = [row.featured_id for row in rows if row.featured_id is not None]
    featured: dict[int, Any] = {}
    aliases: dict[int, list[str]] = defaultdict(list)
    version_tags: dict[int, dict[str, str]] = defaultdict(dict)
    if featured_ids:
        columns = [version.c[c] for c in ("id", "version", "semver", "status", "task", "metrics", "evaluation_report")]
        for found in conn.execute(sa.select(*columns).where(version.c.id.in_(featured_ids))):
            featured[found.id] = found
        for pointer in conn.execute(
            sa.select(views.ALIAS.c.version_id, views.ALIAS.c.alias)
            .where(views.ALIAS.c.version_id.in_(featured_ids))
            .order_by(views.ALIAS.c.alias)
        ):
            aliases[pointer.version_id].append(pointer.alias)
        tag_table = views.VERSION_TAG
        for tag in conn.execute(
            sa.select(tag_table).where(
                tag_table.c.version_id.in_(featured_ids), tag_table.c.key.startswith(OPTIMIZER_TAG_PREFIX)
            )
        ):
            version_tags[tag.version_id][tag.key] = tag.value
    policies = conn.execute(
        sa.select(POLICY.c.model_id, POLICY.c.champion_metric).where(POLICY.c.model_id.in_(model_ids))
    )
    champion_metric: dict[int, str] = {policy.model_id: policy.champion_metric for policy in policies}
    entries = []
    for row in rows:
        count, latest, latest_task = stats.get(row.id, (0, None, None))
        shown = featured.get(row.featured_id) if row.featured_id is not None else None
        production: FeaturedVersion | None = None
        if shown is not None:
            metrics = version_metrics(shown.metrics, shown.evaluation_report)
            production = FeaturedVersion(
                version=shown.version,
                semver=shown.semver,
                status=VersionStatus(shown.status),
                aliases=aliases[shown.id],
                metrics=metrics,
                headline_metric=headline(metrics, champion_metric.get(row.id, "accuracy")),
                recommended_variant=recommended_variant(version_tags[shown.id]),
            )
        entries.append(
            CatalogueEntry(
                name=row.name,
                summary=summary_of(row.description),
                owner=row.owner,
                tags=dict(sorted(tags[row.id].items())),
                task=(shown.task if shown is not None and shown.task else latest_task),
                project=row.project,
                updated_at=as_utc(row.updated_at),
                latest_version=latest,
                version_count=count,
                production=production,
            )
        )
    return entries
