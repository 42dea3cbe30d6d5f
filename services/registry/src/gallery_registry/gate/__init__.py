"""The validation gate: `model.trained` in, the registry's own evaluation, `model.validated` or `model.rejected` out.

`gate_events(gate)` are its handlers on the bus inside the registry app; `router` adds
`POST /api/v1/models/{name}/versions/{version}/validate`.
"""

from .consumer import GATE_DURABLE, gate_events
from .routes import router
from .validator import GateOutcome, ValidationGate

__all__ = ["GATE_DURABLE", "GateOutcome", "ValidationGate", "gate_events", "router"]
