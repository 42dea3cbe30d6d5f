"""The gateway app: the shared HTTP client, the routing table and the OIP v2 + admin routes."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
from fastapi import FastAPI

from gallery_common.app import ServiceResources, create_app
from gallery_common.projects import DEFAULT_PROJECT
from gallery_common.routes_kv import RoutesFollower
from gallery_common.settings import load_settings

from . import api
from .fastpath import GatewayApp, document_inference, is_inference
from .follow import follow_routes
from .identity import BackendIdentity
from .outcomes import OutcomeRecorder, OutcomeStore
from .proxy import Gateway
from .routes import RouteBook
from .samples import SampleOutbox
from .settings import GatewaySettings
from .upstream import UpstreamPool
from .usage import UsageReporter

GRPC_GRACE_S = 10.0
DESCRIPTION = (
    "One Open Inference Protocol v2 REST API for every deployed model: weighted and sticky "
    "traffic splits, shadow traffic, circuit breakers with fallback chains, a response cache and "
    "request sampling for the monitor. `/admin/routes` shows the routing table, which follows the deployer's "
    "routes bucket on every replica."
)


def backend_identities(settings: GatewaySettings) -> tuple[BackendIdentity, BackendIdentity]:
    """Who the gateway is to model servers and to the deployer's wake: its own client-credentials token for
    both when its OIDC client is set, else each callee's static token (`identity.py`)."""
    if settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret:
        from gallery_common.service_identity import client_credentials  # httpx: only when it is used

        shared = BackendIdentity(credentials=client_credentials(settings))
        return shared, shared
    return (
        BackendIdentity(settings.model_server_token.get_secret_value() if settings.model_server_token else None),
        BackendIdentity(settings.deployer_token.get_secret_value() if settings.deployer_token else None),
    )


def create_app_for(settings: GatewaySettings, *, with_bus: bool = True) -> FastAPI:
    """The gateway for `settings`; `with_bus=False` gives one that publishes no samples (tests).

    The bus is not needed to serve: the gateway starts, reports ready and routes while NATS is
    unreachable (from its routes snapshot); samples wait in a bounded buffer and go out once it
    connects, and from then on the routing table follows the routes bucket.
    """

    async def startup(resources: ServiceResources, stack: AsyncExitStack) -> Gateway:
        book = await anyio.to_thread.run_sync(RouteBook(settings.resolved_routes_file).load)
        client = UpstreamPool(max_connections=settings.max_connections)
        stack.push_async_callback(client.close)
        identity, wake_identity = backend_identities(settings)
        identity.on_change(lambda header: client.set_default("authorization", header))
        identity.start()
        stack.push_async_callback(identity.close)
        samples: SampleOutbox | None = None
        follower: RoutesFollower | None = None
        outcomes: OutcomeRecorder | None = None
        if resources.bus is not None:
            samples = SampleOutbox(resources.bus, settings.sample_buffer)
            samples.start()
            stack.push_async_callback(samples.close, timeout=settings.request_timeout_s)
            follower = follow_routes(resources.bus, book)
            stack.push_async_callback(follower.close)
            store = OutcomeStore(resources.bus, settings.outcome_ttl_s, settings.outcome_max_bytes)
            outcomes = OutcomeRecorder(store, settings.outcome_queue)
            outcomes.start()
            # closed after the gRPC front and the gateway: the last answers are recorded
            stack.push_async_callback(outcomes.close, timeout=settings.request_timeout_s)
        gateway = Gateway(
            settings,
            book,
            client,
            samples,
            follower=follower,
            outcomes=outcomes,
            identity=identity,
            wake_identity=wake_identity,
        )
        stack.push_async_callback(gateway.close)
        if resources.bus is not None:

            def project_of(model: str) -> str:
                route = book.get(model)
                return route.project if route is not None else DEFAULT_PROJECT

            usage = UsageReporter(resources.bus, gateway.usage, settings.usage_report_s, project_of=project_of)
            usage.start()
            # closed after the gRPC front and before the gateway: the last requests are in the last report
            stack.push_async_callback(usage.close, timeout=settings.request_timeout_s)
        if settings.grpc_port:
            from .grpc_front import serve_grpc  # grpcio is imported only where gRPC is served

            grpc_server, servicer = await serve_grpc(
                settings, gateway, lambda: bool(getattr(app.state, "started", False))
            )
            stack.push_async_callback(servicer.channels.close)
            stack.push_async_callback(grpc_server.stop, GRPC_GRACE_S)  # calls in flight finish first
        return gateway

    app = create_app(
        settings,
        title="Model Gallery gateway",
        description=DESCRIPTION,
        routers=[api.oip, api.admin],
        use_bus=with_bus,
        bus_required=False,
        startup=startup,
        untraced=is_inference,
        # inference is answered before FastAPI's machinery (fastpath.py); its routes in the OIP router
        # declare the role it needs
        app_class=GatewayApp,
    )
    document_inference(app)
    return app


def create() -> FastAPI:
    """Entry point for `gallery up`: settings from the environment."""
    return create_app_for(load_settings(GatewaySettings))
