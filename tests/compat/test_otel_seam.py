"""observer/_compat/otel.py pinned on the installed opentelemetry-instrumentation-sqlalchemy: a
release that removes or changes the listener registry fails here, naming the accessor."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeterProvider
from sqlalchemy import create_engine, event

from observer._compat.otel import engine_tracer_listeners

PACKAGE = "opentelemetry-instrumentation-sqlalchemy"
RELEASE = f"{PACKAGE} {version(PACKAGE)}"


def test_engine_tracer_listeners_holds_every_listener_an_engine_tracer_adds(
    tmp_path: Path,
) -> None:
    """The registry is the class's own list: an EngineTracer built on an engine appends one
    (weakref to the engine, identifier, listener) per listener it adds, so QuerySpans can remove
    exactly those."""
    tracer_class = EngineTracer
    registry = engine_tracer_listeners(tracer_class)
    before = list(registry)
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    usage = NoOpMeterProvider().get_meter("t").create_up_down_counter("u")
    tracer_class(trace.NoOpTracer(), engine, usage)
    added = [entry for entry in engine_tracer_listeners(tracer_class) if entry not in before]
    try:
        assert registry is engine_tracer_listeners(tracer_class), (
            f"observer._compat.otel.engine_tracer_listeners on {RELEASE}: not the class's list"
        )
        shapes = sorted(
            (type(ref).__name__, ref() is engine, identifier) for ref, identifier, _ in added
        )
        assert shapes == [
            ("ReferenceType", True, identifier)
            for identifier in sorted(
                [
                    "after_cursor_execute",
                    "before_cursor_execute",
                    "checkin",
                    "checkout",
                    "close",
                    "connect",
                    "handle_error",
                ]
            )
        ], f"observer._compat.otel.engine_tracer_listeners on {RELEASE}: entries are {shapes}"
        assert all(event.contains(engine, identifier, fn) for _, identifier, fn in added)
    finally:
        for entry in added:
            _, identifier, fn = entry
            event.remove(engine, identifier, fn)
            registry.remove(entry)
        engine.dispose()


def test_engine_tracer_listeners_falls_back_to_an_empty_list() -> None:
    """A release without the registry gives a new empty list (nothing to remove), not an error."""

    class Tracer:
        pass

    first, second = engine_tracer_listeners(Tracer), engine_tracer_listeners(Tracer)
    assert (first, second, first is second) == ([], [], False)
