"""The Gallery's routes on the registry: the catalogue, a model's card text with its history, and
the generated model card of a version (Markdown). The catalogue shows the models of the projects the
caller holds a role in; a model of any other project answers as a missing one (`project_access`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from gallery_common.audit import AuditAction
from gallery_common.deps import CallerDep
from gallery_common.events import NAME_PATTERN
from gallery_common.settings import Role

from .api import _parse_tags
from .audit_api import AuditRecorderDep
from .catalogue import CataloguePage, CatalogueQuery, CatalogueSort
from .deps import ModelCardsDep, RegistryStoreDep
from .paging import decode_page_token
from .project_access import ProjectAccessDep
from .store_cards import CardUpdate, ModelCardText

CARD_FIELDS = tuple(CardUpdate.model_fields)  # the text a card edit changes

router = APIRouter(prefix="/api/v1", tags=["gallery"])

Name = Annotated[str, Path(pattern=NAME_PATTERN)]
MARKDOWN = "text/markdown; charset=utf-8"


@router.get("/catalogue", summary="The catalogue of models", response_model=CataloguePage)
def catalogue(
    store: RegistryStoreDep,
    access: ProjectAccessDep,
    project: Annotated[str | None, Query(max_length=63, description="only this project's models")] = None,
    q: Annotated[str | None, Query(max_length=200, description="in name, description, tag key or value")] = None,
    task: Annotated[str | None, Query(max_length=32)] = None,
    stage: Annotated[str | None, Query(description="production, or a status some version has")] = None,
    tag: Annotated[list[str], Query(description="KEY or KEY=VALUE; repeat for several")] = [],  # noqa: B006
    metric: Annotated[str | None, Query(max_length=128, description="for min_metric and sort=metric")] = None,
    min_metric: Annotated[float | None, Query(description="the featured version's metric is at least this")] = None,
    sort: CatalogueSort = CatalogueSort.name,
    order: Literal["asc", "desc"] = "asc",
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    page_token: Annotated[str | None, Query(description="next_page_token of the previous page")] = None,
) -> Response:
    """Every model as a card: summary, owner, tags, task, versions and the featured version (the
    production one, else the latest validated) with its metrics, the gate's headline metric and the
    optimizer's recommended variant. Filters combine; `total` counts every match. Only the models of
    the projects the caller holds a role in (or of `project`: 404 unless it holds one there)."""
    query = CatalogueQuery(
        projects=access.listed(project),
        q=q or None,
        task=task or None,
        stage=stage or None,
        tags=_parse_tags(tag),
        metric=metric or None,
        min_metric=min_metric,
        sort=sort,
        descending=order == "desc",
        limit=limit,
        offset=decode_page_token(page_token) if page_token else 0,
    )
    page: CataloguePage = store.catalogue(query)
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/models/{name}/card", summary="A model's card text")
def get_card(name: Name, store: RegistryStoreDep, access: ProjectAccessDep) -> ModelCardText:
    """Description, intended use and limitations (Markdown) at the newest revision (0: never edited)."""
    access.model(name, Role.reader)
    return store.get_card(name)


@router.put("/models/{name}/card", summary="Edit a model's card text")
def put_card(
    name: Name,
    data: CardUpdate,
    store: RegistryStoreDep,
    cards: ModelCardsDep,
    caller: CallerDep,
    access: ProjectAccessDep,
    audit: AuditRecorderDep,
) -> ModelCardText:
    """A new revision with the fields given (null clears one); the model's description follows.
    The generated cards of the model's versions are regenerated."""
    project = access.model(name, Role.writer)
    before = store.get_card(name)
    card = store.set_card(name, data, actor=caller.name)
    if card.revision != before.revision:
        cards.refresh_model(name)
        audit.record_edit(
            AuditAction.card_edit,
            name,
            {"revision": before.revision, **before.model_dump(include=set(CARD_FIELDS))},
            {"revision": card.revision, **card.model_dump(include=set(CARD_FIELDS))},
            project=project,
            model=name,
        )
    return card


@router.get("/models/{name}/card/history", summary="Every revision of a model's card text")
def card_history(name: Name, store: RegistryStoreDep, access: ProjectAccessDep) -> list[ModelCardText]:
    """Newest first: who changed the card, when, and the text they left."""
    access.model(name, Role.reader)
    return store.card_history(name)


@router.get(
    "/models/{name}/versions/{version}/card",
    summary="A version's generated model card",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}}, "description": "Markdown with YAML front-matter"}},
)
def version_card(
    name: Name, version: Annotated[int, Path(ge=1)], cards: ModelCardsDep, access: ProjectAccessDep
) -> Response:
    """The Hugging Face style model card of the version, rendered now from the registry's records."""
    access.model(name, Role.reader)
    text = cards.render(name, version)
    filename = f"{name}-v{version}-model-card.md"
    return Response(text, media_type=MARKDOWN, headers={"Content-Disposition": f'inline; filename="{filename}"'})
