"""The Observer: watches engines, owns the metrics, the trackers and the sweeper."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Unpack

from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import Pool

from observer import _otel as tracing
from observer._asgi_types import ASGIApp, Scope
from observer._dsn import display_url
from observer._engines import sync_engine_of
from observer._hooks import Hooks
from observer._logs import RateLimiter, emit
from observer._sweeper import Sweeper
from observer._types import ConnectionSnapshot, Snapshot
from observer.asgi._middleware import ObserverMiddleware
from observer.asgi._requests import Requests
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import RequestScope, in_request
from observer.metrics._batching import Unflushed
from observer.metrics._collectors import (
    BatchedCollector,
    HeldNow,
    HeldNowCollector,
    RouteHeldCollector,
    StateCollector,
    batched_families,
    gauge_values,
)
from observer.metrics._exposition import MetricsEndpoint
from observer.metrics._families import Metrics, multiprocess_mode
from observer.metrics._server import MetricsServer
from observer.pool._held_now import connections_now, held_now, push_held_now
from observer.pool._live import LivePools
from observer.pool._tracker import PoolState, PoolTracker, pool_states
from observer.sessions import _origin as origins
from observer.sessions._snapshot import read_snapshot
from observer.sessions._tracker import SessionTracker
from observer.settings import ConfigurationError, Options, Settings, connection_app_name

if TYPE_CHECKING:
    # Optional extras (OpenTelemetry; greenlet, which sqlalchemy.ext.asyncio needs): types only.
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine


def default_pool_name(url: URL) -> str:
    """``backend://host:port/database``: the URL without user, password or query (a location
    that cannot be read without guessing is ``<unparsed>``: never part of a password)."""
    return display_url(url)


_observers: weakref.WeakSet[Observer] = weakref.WeakSet()


def live_observers() -> list[Observer]:
    """Every Observer of this process that is not closed (for the pytest leak guard)."""
    return [obs for obs in list(_observers) if not obs._closed]


class Observer:
    """Watches SQLAlchemy engines and their sessions, and exports what it sees.

    ``Observer(registry=CollectorRegistry())`` in tests; the default is prometheus-client's
    global registry, so an app that already exports metrics shows both on one endpoint. Only one
    Observer can use a registry (its metric names would clash). ``tracer_provider`` (for
    ``tracing=True``) and ``meter_provider`` (semantic-convention pool metrics) default to
    OpenTelemetry's global providers; see ``docs/opentelemetry.md``.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **options: Unpack[Options],
    ) -> None:
        self.settings = Settings.from_options(dict(options))
        self.application_name = connection_app_name(self.settings)  # instrument(): + app title
        # OpenTelemetry: resolved before anything is registered, so a missing extra fails first
        self._tracer_provider = tracer_provider
        provider = tracing.meter_provider_or_none(meter_provider)
        if self.settings.tracing:
            tracing._require_otel(instrumentation=True)
        self.registry = REGISTRY if registry is None else registry
        self.multiprocess = multiprocess_mode()
        self.metrics_server: MetricsServer | None = None
        if self.settings.metrics_port is not None:  # first: a port in use fails before the rest
            self.metrics_server = MetricsServer(
                self.registry,
                host=self.settings.metrics_host,
                port=self.settings.metrics_port,
                token=self.settings.metrics_token,
                share_port=self.settings.metrics_port_shared,  # opt-in: see its docstring
                on_error=lambda exc: self.hooks.failed("metrics_port", exc),
            )
        try:
            self.metrics = Metrics(self.registry, multiprocess=self.multiprocess)
        except ValueError as exc:
            if self.metrics_server is not None:
                self.metrics_server.close()
            raise ConfigurationError(
                "another Observer already registered its metrics on this registry; use "
                "observer.instrument(), which reuses it, or give each Observer its own "
                f"registry=CollectorRegistry() ({exc})"
            ) from None
        self.hooks = Hooks(self.metrics.hook_errors)
        collect_failed = self.hooks.reporter("collect")  # a scrape never raises; it counts
        self._state_failed = self.hooks.reporter("pool_state")
        if not self.multiprocess:  # (multiprocess mode batches nothing: see pool/_tracker.py)
            # The families the hot path sums per thread are read through one collector that adds
            # the sums no flush has moved yet: exact in a full or a filtered scrape.
            families = batched_families(self.metrics)
            for family in families:
                self.registry.unregister(family)
            self.registry.register(BatchedCollector(families, self._unflushed, collect_failed))
        self.limiter = RateLimiter()
        self.routes = RouteMetrics(self.metrics, max_routes=self.settings.max_routes)
        self.live_pools = LivePools(self.metrics, self.hooks)
        self.live_pools.on_new_pool = self._new_pool
        self.sessions = SessionTracker(
            self.metrics,
            self.hooks,
            self.routes,
            leak_threshold=self.settings.leak_threshold_seconds,
            capture_origin=self.settings.capture_origin,
            limiter=self.limiter,
            max_origins=self.settings.max_origins,
        )
        self._trackers: dict[int, PoolTracker] = {}  # by id(sync engine), held weakly
        self._query_spans: dict[int, tracing.QuerySpans] = {}  # by id(sync engine)
        self.otel = None if provider is None else tracing.OtelMetrics(provider, self._pool_states)
        self.requests = Requests(self.settings, self.routes, self.sessions, self.hooks)
        self._lock = threading.RLock()
        self._sweeper = Sweeper(self._tick, self.settings.sweep_interval_seconds)
        self._started = False
        self._closed = False
        if not self.multiprocess:
            self.registry.register(
                StateCollector(
                    self._pool_states, self.live_pools.count, self._sessions_open, collect_failed
                )
            )
            self.registry.register(
                RouteHeldCollector(lambda: self.held_now().routes_held, collect_failed)
            )
            self.registry.register(HeldNowCollector(self.held_now, collect_failed))
        _observers.add(self)

    # -- engines ----------------------------------------------------------------------------

    def watch(self, engine: Engine | AsyncEngine, *, name: str | None = None) -> None:
        """Watch ``engine`` (an ``Engine`` or ``AsyncEngine``): its pool and its sessions.

        Watching an engine again is harmless. ``name`` is the ``pool`` label; by default the
        URL without credentials (``postgresql://db:5432/app``).
        """
        sync = sync_engine_of(engine)
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty string (got {name!r})")
        with self._lock:
            if self._closed:
                raise ConfigurationError("this Observer is closed; create a new one")
            existing = self._trackers.get(id(sync))
            if existing is not None and existing.engine_ref() is not sync:
                self._forget(id(sync))  # a collected engine's address, reused
                existing = None
            if existing is not None:
                if name is not None and name != existing.name:
                    raise ConfigurationError(
                        f"this engine is already watched as pool {existing.name!r}; "
                        f"unwatch() it first to rename it to {name!r}"
                    )
                return
            taken = {tracker.name for tracker in self._trackers.values()}
            if name is None:
                base = default_pool_name(sync.url)
                name, n = base, 1
                while name in taken:
                    n += 1
                    name = f"{base}#{n}"
            elif name in taken:
                raise ConfigurationError(
                    f"pool name {name!r} is already used by another watched engine; give each "
                    "engine its own name="
                )
            tracker = PoolTracker(
                sync,
                name,
                metrics=self.metrics,
                hooks=self.hooks,
                routes=self.routes,
                application_name=self.application_name,
                limiter=self.limiter,
                slow_checkout=self.settings.slow_checkout_seconds,
                idle_gap_log=self.settings.idle_gap_log_seconds,
                capture=origins.capture,
            )
            self._wire_otel(tracker, sync)
            tracker.attach(on_engine_gone=self._engine_collected)
            self._trackers[id(sync)] = tracker
            self.sessions.add_engine(sync)
            if not self._started:
                self.live_pools.attach()
                self._sweeper.start()
                self._started = True

    def unwatch(self, engine: Engine | AsyncEngine) -> None:
        """Stop watching ``engine``: every listener and wrapper added for it is removed."""
        sync = sync_engine_of(engine)
        with self._lock:
            tracker = self._trackers.get(id(sync))
            if tracker is None or tracker.engine_ref() is not sync:
                return
            self._forget(id(sync))

    def _forget(self, key: int) -> None:
        """Stop watching the engine whose id is ``key`` (the caller holds the lock)."""
        tracker = self._trackers.pop(key)
        tracker.detach()  # flushes first: a scrape meanwhile still reads its unflushed sums
        self.sessions.forget_engine(key)
        spans = self._query_spans.pop(key, None)
        if spans is not None:
            spans.remove()

    def _engine_collected(self, tracker: PoolTracker) -> None:
        """A watched engine was garbage-collected: its tracker goes too (deferred work)."""
        with self._lock:
            for key, watched in list(self._trackers.items()):
                if watched is tracker:
                    self._forget(key)

    def _wire_otel(self, tracker: PoolTracker, engine: Engine) -> None:
        tracing_on = self.settings.tracing
        if self.otel is not None:
            tracker.otel = self.otel.pool(tracker.name)
        elif tracing_on:
            tracker.otel = tracing.SpanEventsOnly(tracker.name)
        if tracing_on:
            tracker.span_events = True
            tracker.exemplars = not self.multiprocess  # multiprocess files keep no exemplars
            self._query_spans[id(engine)] = tracing.QuerySpans(engine, self._tracer_provider)

    def close(self) -> None:
        """Unwatch everything, remove every listener and stop the sweeper. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for key in list(self._trackers):
                self._forget(key)
            for spans in self._query_spans.values():
                spans.remove()
            self._query_spans.clear()
            self.sessions.detach()
            self.live_pools.detach()
            self._sweeper.stop()
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.flush()

    @property
    def pool_names(self) -> list[str]:
        return [tracker.name for tracker in self._trackers.values()]

    # -- periodic work ------------------------------------------------------------------------

    def flush(self) -> None:
        """Run the work deferred out of hooks (closes, garbage-collection events, errors), then
        move what the hot path summed per thread (checkouts, waits, holds, sessions, finished
        requests) into prometheus-client. The sweeper does this every tick; a scrape does not
        (it reads the sums without moving them), so deferred work shows in the metrics at most
        one ``sweep_interval_seconds`` late, in a full and a filtered scrape alike.

        Never raises: a step that fails is counted (``observer_hook_errors_total{hook="flush"}``)
        and the others still run."""
        self.hooks.drain()
        steps = [tracker.flush for tracker in list(self._trackers.values())]
        for step in (*steps, self.sessions.flush, self.routes.flush):
            try:
                step()
            except Exception as exc:
                self.hooks.failed("flush", exc)

    def _unflushed(self, view: Unflushed) -> None:
        """Add to ``view`` what the hot path summed and no flush has moved yet (a scrape; the
        caller holds the batching lock). Same sources in the same order as :meth:`flush`."""
        for tracker in list(self._trackers.values()):
            tracker.unflushed(view)
        self.sessions.unflushed(view)
        self.routes.unflushed(view)

    def _tick(self) -> None:
        # Allocates nothing when there is no work: an allocation here can set off a garbage
        # collection running SQLAlchemy's finalizer of a leaked async connection off the event
        # loop (docs/reliability.md). A scrape adds the sums not flushed yet (BatchedCollector).
        try:
            if self.hooks.pending:
                self.hooks.drain()
            if self.sessions.open:
                self.sessions.check_age()
            if self.multiprocess:
                self.flush()
                self.push_gauges()
        except Exception as exc:
            self.hooks.failed("sweeper", exc)

    def push_gauges(self) -> None:
        """Set the gauges from pool state (multiprocess mode, where collectors can't run)."""
        for tracker, state in pool_states(self._trackers, self._state_failed):
            values = gauge_values(state)
            children = tracker._m.gauges
            for metric, value in values.items():
                child = children.get(metric)
                if child is not None:
                    child.set(value)
        if self.metrics.live_pools is not None:
            self.metrics.live_pools.set(self.live_pools.count())
        if self.metrics.sessions_open is not None:
            self.metrics.sessions_open.set(self._sessions_open())
        push_held_now(self.metrics, self.held_now())

    def _new_pool(self, pool: Pool) -> None:
        """A pool opened its first connection: after startup, and not one of the watched
        engines', it smells of an engine created per request (or per task). The log names the
        app line that opened it, which is where the engine is created or first used."""
        if any(pool is tracker.pool for tracker in list(self._trackers.values())):
            return
        if not self.requests.serving and not in_request():
            return  # still starting up (or a script): engines are created now
        if self.limiter.allow("pool.created_after_startup"):
            where = origins.capture()
            emit(
                "warning",
                "pool.created_after_startup",
                pool=type(pool).__name__,
                origin=str(where) if where else None,
                live_pools=self.live_pools.count(),
                hint="a new connection pool appeared while the app is serving: create the "
                "engine once at startup and share it; an engine per request opens a new pool "
                "(and new connections) every time",
            )

    def _pool_states(self) -> list[tuple[str, PoolState]]:
        """Each watched pool's state; a pool whose state cannot be read is left out and counted
        (``hook="pool_state"``, lock-free: scrapes and OpenTelemetry callbacks call this)."""
        return [(t.name, state) for t, state in pool_states(self._trackers, self._state_failed)]

    def _sessions_open(self) -> int:
        return len(self.sessions.open)

    def held_now(self, clock: Callable[[], float] = perf_counter) -> HeldNow:
        """Who holds connections now: the oldest checkout's age by pool and by route, and the
        connections held by route (each route counted so far, 0 when it holds none)."""
        return held_now(list(self._trackers.values()), self.routes, clock())

    def _connections(self, clock: Callable[[], float] = perf_counter) -> list[ConnectionSnapshot]:
        return connections_now(list(self._trackers.values()), self.routes, clock())

    # -- requests -----------------------------------------------------------------------------

    def begin_request(self, scope: Scope) -> RequestScope:
        """The attribution scope of a new HTTP request (the middleware sets the contextvar)."""
        return self.requests.begin(scope)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """``app`` wrapped in the observer's ASGI middleware (for any ASGI app)."""
        return ObserverMiddleware(app, observer=self)

    def metrics_endpoint(self) -> MetricsEndpoint:
        """An ASGI app serving this observer's metrics."""
        return MetricsEndpoint(
            self.registry,
            token=self.settings.metrics_token,
            on_error=self.hooks.reporter("metrics"),
        )

    # -- inspection ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Pools, open sessions and checked-out connections now, as plain data (for a health or
        debug endpoint). Never raises: a part that cannot be read is left out (``pools`` lists
        the pools whose state could be read) and counted in ``observer_hook_errors_total`` with
        ``hook="snapshot"`` (``"pool_state"`` for a pool) before this call returns."""
        self.flush()
        failed = self.hooks.reporter("snapshot")
        snapshot = read_snapshot(
            self._pool_states, self.live_pools.count, self.sessions, failed, self._connections
        )
        self.hooks.drain()  # count this call's errors now
        return snapshot
