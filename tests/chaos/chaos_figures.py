"""What a chaos scenario measured (the `figures` fixture hands one to each test)."""

from __future__ import annotations

import time
from typing import Any


class Figures(dict[str, Any]):
    """The scenario's figures, in the order they were measured; written out when the test ends."""

    def __init__(self, scenario: str) -> None:
        super().__init__()
        self.scenario = scenario
        self.started = time.monotonic()
