"""One process serving one model version and variant over the Open Inference Protocol (v2 REST).

`python -m gallery_deployer.modelserver --model NAME --version V --artifact URI --sha256 HEX` loads
the ONNX artifact from the artifact store (sha256-checked, verified self-contained), warms it up,
and only then opens its port. With the version's explainer artifact (GALLERY_EXPLAINER_URI and _SHA256)
it also explains predictions (`POST .../explain`), in worker processes started by the first request.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import ModelServerSettings

__all__ = ["ModelServerSettings"]


def __getattr__(name: str) -> Any:
    # loaded on use: `python -m gallery_deployer.modelserver` imports this package before its __main__
    # can switch off garbage collection for the start
    if name != "ModelServerSettings":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .settings import ModelServerSettings

    return ModelServerSettings
