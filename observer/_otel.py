"""OpenTelemetry: query spans on watched engines, pool events on spans, semconv pool metrics.

Optional (the ``otel`` extra); nothing here runs unless the app asks for it (``tracing=True``)
or configured a MeterProvider. Providers are arguments defaulting to the globals; this module
never sets a global provider or an exporter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine

from observer._compat.otel import engine_tracer_listeners
from observer.metrics._families import CONNECT_BUCKETS, HOLD_BUCKETS, WAIT_BUCKETS
from observer.settings import ConfigurationError

if TYPE_CHECKING:  # the ``otel`` extra is optional: its types are for the type checker only
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import TracerProvider

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
_UNCONFIGURED = {
    ("opentelemetry.metrics._internal", "_ProxyMeterProvider"),
    ("opentelemetry.metrics._internal", "NoOpMeterProvider"),
    ("opentelemetry.metrics", "NoOpMeterProvider"),
}


class PoolNumbers(Protocol):
    """A pool's numbers at one moment, as the instruments read them (the pool tracker's
    ``PoolState``; a Protocol, because the pool layer sits above this one)."""

    @property
    def size(self) -> int: ...

    @property
    def max_connections(self) -> int: ...

    @property
    def checked_out(self) -> int: ...

    @property
    def checked_in(self) -> int: ...

    @property
    def waiting(self) -> int: ...


def _require_otel(*, instrumentation: bool = False) -> None:
    """Fail at setup, naming the fix, when the ``otel`` extra is missing."""
    try:
        import opentelemetry.trace

        if instrumentation:
            import opentelemetry.instrumentation.sqlalchemy.engine  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing=True and meter_provider need OpenTelemetry ({exc}): "
            "pip install 'pool-observer[otel]'"
        ) from None


def meter_provider_or_none(meter_provider: MeterProvider | None) -> MeterProvider | None:
    """``meter_provider``, else the global one if the app configured it, else ``None``."""
    if meter_provider is not None:
        _require_otel()
        return meter_provider
    try:
        from opentelemetry import metrics
    except ImportError:
        return None
    provider = metrics.get_meter_provider()
    cls = type(provider)
    return None if (cls.__module__, cls.__name__) in _UNCONFIGURED else provider


class PoolInstruments:
    """One pool's feed into the OpenTelemetry instruments (called from the pool tracker)."""

    def __init__(self, owner: OtelMetrics, name: str) -> None:
        self.attributes = {POOL_NAME: name}
        self._wait = owner.wait_time
        self._use = owner.use_time
        self._create = owner.create_time
        self._timeouts = owner.timeouts

    def waited(self, seconds: float, span_event: bool) -> None:
        self._wait.record(seconds, self.attributes)
        if span_event:
            _span_event(
                "pool.checkout",
                {POOL_NAME: self.attributes[POOL_NAME], "db.client.connection.wait_time": seconds},
            )

    def timed_out(self, seconds: float, span_event: bool) -> None:
        self._wait.record(seconds, self.attributes)
        self._timeouts.add(1, self.attributes)
        if span_event:
            _span_event(
                "pool.checkout_timeout",
                {POOL_NAME: self.attributes[POOL_NAME], "db.client.connection.wait_time": seconds},
            )

    def used(self, seconds: float, span_event: bool) -> None:
        self._use.record(seconds, self.attributes)
        if span_event:
            _span_event(
                "pool.checkin",
                {POOL_NAME: self.attributes[POOL_NAME], "db.client.connection.use_time": seconds},
            )

    def created(self, seconds: float) -> None:
        self._create.record(seconds, self.attributes)


class SpanEventsOnly:
    """The tracker's feed when tracing is on but no MeterProvider is configured."""

    def __init__(self, name: str) -> None:
        self.name = name

    def waited(self, seconds: float, span_event: bool) -> None:
        if span_event:
            _span_event(
                "pool.checkout", {POOL_NAME: self.name, "db.client.connection.wait_time": seconds}
            )

    def timed_out(self, seconds: float, span_event: bool) -> None:
        if span_event:
            _span_event(
                "pool.checkout_timeout",
                {POOL_NAME: self.name, "db.client.connection.wait_time": seconds},
            )

    def used(self, seconds: float, span_event: bool) -> None:
        if span_event:
            _span_event(
                "pool.checkin", {POOL_NAME: self.name, "db.client.connection.use_time": seconds}
            )

    def created(self, seconds: float) -> None:
        pass


def _span_event(name: str, attributes: Mapping[str, str | float]) -> None:
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


class OtelMetrics:
    """Pool facts under the OpenTelemetry semantic-convention names (``db.client.connection.*``).

    Gauges are observable instruments read from the pools' own state at collection time (the
    same numbers as the Prometheus gauges); histograms and the timeout counter are fed by the
    pool tracker at the same hook points as the Prometheus metrics.
    """

    def __init__(
        self,
        meter_provider: MeterProvider,
        states: Callable[[], Sequence[tuple[str, PoolNumbers]]],
    ) -> None:
        from observer._version import __version__

        meter = meter_provider.get_meter("pool_observer", __version__)
        self._states = states
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description="The number of connections that are currently in state described by "
            "the state attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._max],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            callbacks=[self._idle_max],
            unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._pending],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
            "obtain a connection from the pool.",
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=CONNECT_BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=HOLD_BUCKETS,
        )

    def pool(self, name: str) -> PoolInstruments:
        return PoolInstruments(self, name)

    def _observe(self, value: Callable[[PoolNumbers], int | None]) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        for name, state in self._states():
            number = value(state)
            if number is not None:
                yield Observation(number, {POOL_NAME: name})

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        for name, state in self._states():
            yield Observation(state.checked_in, {POOL_NAME: name, STATE: "idle"})
            yield Observation(state.checked_out, {POOL_NAME: name, STATE: "used"})

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(lambda s: s.max_connections if s.max_connections >= 0 else None)

    def _idle_max(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(lambda s: s.size if s.size > 0 else None)

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(lambda s: s.waiting)


class QuerySpans:
    """``opentelemetry-instrumentation-sqlalchemy``'s query spans on one engine, removable.

    Its ``SQLAlchemyInstrumentor().instrument()`` is a process-wide singleton that also wraps
    ``create_engine``; the per-engine ``EngineTracer`` is what it builds for ``engines=[...]``,
    so it is used directly, and its listeners are removed one by one on :meth:`remove`. Its
    ``db.client.connections.usage`` counter (kept by +1/-1 on events: it drifts when a
    connection is garbage-collected) goes to a no-op meter; :class:`OtelMetrics` publishes the
    pool state instead.
    """

    def __init__(self, engine: Engine, tracer_provider: TracerProvider | None) -> None:
        _require_otel()
        from opentelemetry import trace
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.instrumentation.sqlalchemy.version import __version__ as version
        from opentelemetry.metrics import NoOpMeterProvider

        tracer = trace.get_tracer(
            "opentelemetry.instrumentation.sqlalchemy", version, tracer_provider
        )
        usage = (
            NoOpMeterProvider()
            .get_meter("pool_observer")
            .create_up_down_counter("db.client.connections.usage")
        )
        registry = engine_tracer_listeners(EngineTracer)
        before = list(registry)
        EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]
        self._listeners = [entry for entry in registry if entry not in before]
        self._registry = registry

    def remove(self) -> None:
        for entry in self._listeners:
            target_ref, identifier, fn = entry
            target = target_ref()
            if target is not None and event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)
            if entry in self._registry:
                self._registry.remove(entry)
        self._listeners = []
