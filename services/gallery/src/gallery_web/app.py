"""The Gallery web app: the pages, the proxy to every service, and the aggregations.

It keeps no tables: what it shows comes from the services over their REST APIs, and held-out examples
from the artifact store the services share. It needs NATS only for single sign-on, whose sessions live
there (`sessions`); it starts and serves without it, sign-in answering 503 until NATS is back.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.settings import load_settings

from . import pages, routes
from .examples import ExampleReader
from .sessions import SessionStore
from .settings import GalleryWebSettings
from .sign_in import SessionBearer, SignIn, sign_in_router
from .upstream import Upstreams


def create(settings: GalleryWebSettings | None = None) -> FastAPI:
    """Build the gallery app (settings from the environment when not given)."""
    settings = settings or load_settings(GalleryWebSettings)

    sign_in = SignIn(settings) if settings.sign_in_enabled else None

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> routes.Gallery:
        assert resources.store is not None
        if sign_in is not None:
            assert resources.bus is not None
            sign_in.bind(SessionStore(resources.bus, settings.session_max_age_s, settings.session_max_bytes))
        client = await stack.enter_async_context(Upstreams.open_client(settings))
        reader = ExampleReader(resources.store, max_split_bytes=settings.max_split_bytes)
        return routes.Gallery(settings=settings, upstreams=Upstreams(settings, client), examples=reader)

    app = create_app(
        settings,
        title="Model Gallery",
        description=(
            "The one web UI of Model Gallery: the catalogue, model cards, lineage, experiments, try it and "
            "monitoring at /; /api/<service>/... reaches each service with the caller's token, "
            "/api/gallery/... joins what several say."
        ),
        # the aggregations before the proxy: `/api/gallery/...` is the gallery's own
        routers=[routes.aggregations, routes.proxy, sign_in_router(sign_in), pages.router],
        use_bus=sign_in is not None,
        bus_required=False,
        use_store=True,
        startup=startup,
    )
    if sign_in is not None:
        # outermost: the session's token is in the headers before the access checks read them
        app.add_middleware(SessionBearer, sign_in=sign_in, public_url=settings.public_url)
    return app
