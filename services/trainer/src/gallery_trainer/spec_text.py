"""Reading a job spec's text (YAML, or JSON, which is YAML) so that small text stays a small document.

`yaml.safe_load` builds no objects, but it expands aliases: a "billion laughs" spec of a few hundred
bytes (anchors of lists of aliases of anchors ...) becomes gigabytes when its values are used. A
spec needs neither anchors nor aliases, so both are refused, as is nesting deeper than any spec
has (PyYAML composes recursively, and a deep enough text ends in a RecursionError), and text past
a fixed size is refused before it is parsed.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import Node

MAX_DEPTH = 32  # a spec is at most five levels deep; search choices add a few


class SpecTextError(ValueError):
    """Spec text that is refused before it becomes a document; the message is one `spec: reason` line."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases or deep nesting."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        event = self.peek_event()
        where = f"line {event.start_mark.line + 1}" if event.start_mark is not None else "the text"
        if isinstance(event, AliasEvent):
            raise SpecTextError(
                f"spec: YAML aliases are not accepted (*{event.anchor} at {where}); write each value out"
            )
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise SpecTextError(
                f"spec: YAML anchors are not accepted (&{event.anchor} at {where}); write each value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecTextError(f"spec: nested more than {MAX_DEPTH} levels deep (at {where})")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def load_spec_text(text: str | bytes, max_bytes: int) -> Any:
    """The document in `text`; SpecTextError when it is too long, uses anchors or aliases, or is not YAML."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise SpecTextError(f"spec: {size} bytes is more than the limit of {max_bytes} bytes for a job spec")
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpecTextError(f"spec: not valid YAML or JSON: {exc}".replace("\n", " ")) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        if isinstance(exc, SpecTextError):
            raise
        raise SpecTextError(f"spec: a value cannot be read: {exc}".replace("\n", " ")) from None
    finally:
        loader.dispose()
