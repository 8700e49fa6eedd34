"""``observer.instrument(app, engine)``: the one-call setup."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol, Unpack

from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy.engine import Engine

from observer._engines import sync_engine_of
from observer._observer import Observer
from observer.asgi._middleware import ObserverMiddleware, RequestObserver
from observer.settings import ConfigurationError, Options, Settings, app_name_or_none

if TYPE_CHECKING:
    # OpenTelemetry is an optional extra; sqlalchemy.ext.asyncio needs greenlet (the asyncio
    # extra) to import: both are for the type checker only.
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine


class MiddlewareHost(Protocol):
    """What :func:`instrument` needs of the app: Starlette's (and FastAPI's) ``add_middleware``."""

    def add_middleware(
        self, middleware_class: type[ObserverMiddleware], /, *, observer: RequestObserver
    ) -> None: ...


_by_app: weakref.WeakKeyDictionary[MiddlewareHost, Observer] = weakref.WeakKeyDictionary()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Observer] = weakref.WeakKeyDictionary()


def instrument(
    app: MiddlewareHost,
    *engines: Engine | AsyncEngine,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **options: Unpack[Options],
) -> Observer:
    """Watch ``engines`` and their sessions, add the middleware to ``app`` and serve
    ``GET /metrics`` (option ``metrics_path``; ``None`` for none). Returns the :class:`Observer`.

    ``app`` is a Starlette or FastAPI app (for any other ASGI app, wrap it with
    ``Observer.middleware``). Calling it again for the same app or registry reuses the same
    observer, so nothing is counted twice.

    OpenTelemetry: ``tracing=True`` adds query spans on the engines and pool wait/hold events
    on the current span (``tracer_provider`` defaults to the global one); pool metrics under
    the semantic-convention names go to ``meter_provider``, else to the global MeterProvider
    when the app configured one before this call.
    """
    for engine in engines:
        sync_engine_of(engine)  # fail before anything is changed
    settings = Settings.from_options(dict(options))
    target = REGISTRY if registry is None else registry
    observer = _by_app.get(app)
    if observer is None:
        observer = _by_registry.get(target)
        if observer is None or observer._closed:
            observer = Observer(
                registry=target,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                **options,
            )
            _by_registry[target] = observer
        elif options and settings != observer.settings:
            raise ConfigurationError(
                "an observer with other options already uses this registry; pass the same "
                "options, or registry=CollectorRegistry() for a separate one"
            )
        _add_middleware(app, observer)
        _by_app[app] = observer
    if observer.settings.application_name is None and observer.application_name is None:
        title = getattr(app, "title", None)  # FastAPI's; its default names no app
        observer.application_name = app_name_or_none(title if title != "FastAPI" else None)
    for engine in engines:
        observer.watch(engine)
    return observer


def _add_middleware(app: MiddlewareHost, observer: Observer) -> None:
    add = getattr(app, "add_middleware", None)  # checked: the app may not be what it claims
    if add is None:
        raise ConfigurationError(
            f"instrument() needs a Starlette or FastAPI app (got {type(app).__name__}); for any "
            "other ASGI app use: observer = Observer(); app = observer.middleware(app)"
        )
    try:
        add(ObserverMiddleware, observer=observer)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"could not add the middleware ({exc}); call observer.instrument() where the app "
            "is created, before it starts serving"
        ) from None
