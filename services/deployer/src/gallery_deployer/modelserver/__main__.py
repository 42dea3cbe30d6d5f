"""`python -m gallery_deployer.modelserver`: load, verify and warm one model, then serve it over OIP v2."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .settings import ModelServerSettings

# Flag name → settings field; a flag left out falls back to the GALLERY_* variable.
FLAGS = {
    "model": "model_name",
    "version": "model_version",
    "variant": "variant",
    "artifact": "artifact_uri",
    "sha256": "artifact_sha256",
    "port": "port",
    "grpc_port": "grpc_port",
    "max_batch_size": "max_batch_size",
    "max_queue_delay_ms": "max_queue_delay_ms",
    "max_queue": "max_queue",
    "eager_batching": "eager_batching",
    "intra_op_threads": "intra_op_threads",
    "nats": "serve_nats",
    "execution_providers": "execution_providers",
}


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    """The flags given on the command line, as settings overrides."""
    parser = argparse.ArgumentParser(prog="python -m gallery_deployer.modelserver", description=__doc__)
    parser.add_argument("--model", help="model name")
    parser.add_argument("--version", help="model version")
    parser.add_argument("--variant", help="variant served (default fp32)")
    parser.add_argument("--artifact", help="URI of the ONNX file in the artifact store")
    parser.add_argument("--sha256", help="expected sha256 of the ONNX file")
    parser.add_argument("--port", type=int)
    parser.add_argument("--grpc-port", type=int, help="also serve OIP v2 over gRPC on this port (0: off)")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-queue-delay-ms", type=float)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument(
        "--eager-batching",
        action=argparse.BooleanOptionalAction,
        help="run a request at once when nothing else is queued (default on)",
    )
    parser.add_argument("--intra-op-threads", type=int)
    parser.add_argument(
        "--execution-providers",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="execution providers to try in order, comma-separated (tensorrt,cuda,openvino,cpu)",
    )
    parser.add_argument(
        "--nats", action=argparse.BooleanOptionalAction, help="serve infer.<model> and batch jobs over NATS"
    )
    args = vars(parser.parse_args(argv))
    return {field: args[flag] for flag, field in FLAGS.items() if args[flag] is not None}


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 1 when the model cannot load, 2 on bad settings."""
    from gallery_common.serve import built_without_collection

    overrides = parse_args(argv)
    built = built_without_collection(partial(_build, overrides))
    if isinstance(built, int):
        return built
    settings, app = built

    import uvicorn

    from gallery_common.http_server import OneWriteHttpToolsProtocol

    # uvicorn re-raises the stop signal once it has drained; a requested stop is a clean exit, not a crash.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=settings.port,
        loop="uvloop",
        # httptools, each answer in one write: a client (the gateway) wakes once per answer, not twice
        http=OneWriteHttpToolsProtocol,
        server_header=False,  # one header less for every client to parse; the server's name is nobody's business
        ws="none",  # no service speaks WebSocket: uvicorn then loads no WebSocket library at start
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _build(overrides: dict[str, Any]) -> tuple[ModelServerSettings, Starlette] | int:
    """The settings and the app over the loaded, warmed model, or the exit code that says why not."""
    from gallery_common.errors import GalleryError
    from gallery_common.settings import SettingsError, load_settings
    from gallery_common.telemetry import configure_logging, get_logger

    from .settings import ModelServerSettings

    try:
        settings = load_settings(ModelServerSettings, **overrides)
    except SettingsError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    configure_logging(settings.service_name, settings.log_level)
    log = get_logger(__name__).bind(model=settings.model_name, version=settings.model_version, variant=settings.variant)

    from .app import create_app
    from .model import load_model

    started = time.perf_counter()
    try:
        model = load_model(settings)
    except GalleryError as exc:
        log.error("model_load_failed", reason=exc.message, artifact=settings.artifact_uri)
        return 1
    except Exception as exc:  # ONNX Runtime's own errors: the reason still belongs in the log
        log.error("model_load_failed", reason=f"{type(exc).__name__}: {exc}", artifact=settings.artifact_uri)
        return 1
    log.info(
        "model_ready",
        seconds=round(time.perf_counter() - started, 3),
        port=settings.port,
        execution_provider=model.execution_provider,
        provider_fallback=model.provider_fallback,
    )
    return settings, create_app(settings, model)


if __name__ == "__main__":
    raise SystemExit(main())
