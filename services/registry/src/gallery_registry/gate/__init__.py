"""The validation gate: `model.trained` in, the registry's own evaluation, `model.validated` or `model.rejected` out.

`gate_consumer(app, resources)` runs it on the bus inside the registry app; `router` adds
`POST /api/v1/models/{name}/versions/{version}/validate`.
"""

from .consumer import GATE_DURABLE, gate_consumer
from .routes import router
from .validator import GateOutcome, ValidationGate

__all__ = ["GATE_DURABLE", "GateOutcome", "ValidationGate", "gate_consumer", "router"]
