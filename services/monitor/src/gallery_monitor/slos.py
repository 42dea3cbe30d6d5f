"""Per-model SLOs in the database, with the settings' defaults for models nobody configured.

Blocking SQL: call from worker threads.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from gallery_common.db import utcnow
from gallery_common.errors import InvalidRequest

from .records import NULLABLE_SLOS, Slo, SloPublic, SloRecord, SloUpdate


class SloStore:
    """Reads and writes SLOs; `window_s` may not reach past what the series keep, `quality_window_s` past
    the outcomes kept."""

    def __init__(self, engine: Engine, defaults: Slo, max_window_s: float, max_quality_window_s: float) -> None:
        self.engine = engine
        self.defaults = defaults
        self.max_window_s = max_window_s
        self.max_quality_window_s = max_quality_window_s

    def get(self, model: str) -> SloPublic:
        with Session(self.engine) as session:
            row = session.get(SloRecord, model)
        fields = (
            self.defaults.model_dump() if row is None else Slo.model_validate(row, from_attributes=True).model_dump()
        )
        return SloPublic(model=model, **fields)

    def all(self) -> dict[str, Slo]:
        """Every model with stored SLOs (others use `defaults`)."""
        with Session(self.engine) as session:
            rows = list(session.exec(select(SloRecord)))
        return {row.model: Slo.model_validate(row, from_attributes=True) for row in rows}

    def update(self, model: str, update: SloUpdate) -> SloPublic:
        """Change the given fields, keep the others (defaults until first set); a quality threshold given as
        null is switched off."""
        current = self.get(model)
        changes = {
            name: value
            for name, value in update.model_dump(exclude_unset=True).items()
            if value is not None or name in NULLABLE_SLOS
        }
        merged = Slo.model_validate({**current.model_dump(exclude={"model"}), **changes})
        if merged.window_s > self.max_window_s:
            raise InvalidRequest(
                f"window_s {merged.window_s:g} is longer than the {self.max_window_s:g} s of series the monitor keeps "
                "(GALLERY_SERIES_RETENTION_S)"
            )
        if merged.quality_window_s > self.max_quality_window_s:
            raise InvalidRequest(
                f"quality_window_s {merged.quality_window_s:g} is longer than the {self.max_quality_window_s:g} s of "
                "feedback the monitor keeps (GALLERY_OUTCOME_RETENTION_S)"
            )
        with Session(self.engine) as session:
            row = session.get(SloRecord, model) or SloRecord(model=model, **merged.model_dump())
            for name, value in merged.model_dump().items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
        return SloPublic(model=model, **merged.model_dump())
