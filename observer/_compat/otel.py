"""The one place observer reads OpenTelemetry's private names (the SQLAlchemy instrumentation's)."""

from __future__ import annotations

from typing import Any


def engine_tracer_listeners(engine_tracer: type) -> list[Any]:
    """The list in which ``opentelemetry.instrumentation.sqlalchemy.engine.EngineTracer``
    records every listener it adds, as ``(weakref to target, identifier, fn)``: the class
    attribute ``EngineTracer._remove_event_listener_params``, the only way to remove one engine's
    query spans without uninstrumenting every engine. Read: opentelemetry-instrumentation-
    sqlalchemy 0.38b0 (where it was added), 0.46b0 (the oldest observer supports) and 0.65b0;
    run: the installed release (0.66b2 when written) in tests/compat. Missing: a new
    empty list, so nothing is recorded and the query spans stay on the engine until it is
    garbage-collected (removing a watched engine no longer removes them)."""
    registry = getattr(engine_tracer, "_remove_event_listener_params", None)
    return registry if isinstance(registry, list) else []
