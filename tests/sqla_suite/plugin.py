"""Pytest plugin loaded into SQLAlchemy's own test suite: records the outcome of every test and,
with ``--observer-watch``, has an Observer watch every engine and pool the suite creates."""

from __future__ import annotations

import functools
import json
import threading
import weakref
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

_WATCHER_NAME = "pool-observer-watcher"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pool-observer", "pool-observer compatibility gate")
    group.addoption(
        "--observer-report",
        metavar="PATH",
        help="write the outcome of every test (and what the observer saw) to PATH as JSON",
    )
    group.addoption(
        "--observer-watch",
        action="store_true",
        help="watch every engine and pool the suite creates, one Observer per test",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    watcher = Watcher() if config.getoption("observer_watch") else None
    if watcher is not None:
        # Before SQLAlchemy's plugin starts: its session-wide engines are made at session start
        # and the test modules bind ``create_engine`` when they are imported.
        watcher.install()
        config.pluginmanager.register(watcher, _WATCHER_NAME)
    config.pluginmanager.register(Recorder(config.getoption("observer_report"), watcher))


class Recorder:
    """One outcome per test id, from its setup, call and teardown reports."""

    def __init__(self, path: str | None, watcher: Watcher | None) -> None:
        self.path = path
        self.watcher = watcher
        self.outcomes: dict[str, str] = {}
        self.durations = {"setup": 0.0, "call": 0.0, "teardown": 0.0}  # summed over tests

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "collect-error"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.when] += report.duration
        nodeid, when = report.nodeid, report.when
        xfail = hasattr(report, "wasxfail")
        if when == "call":
            if xfail:
                self.outcomes[nodeid] = "xfailed" if report.skipped else "xpassed"
            else:
                self.outcomes[nodeid] = report.outcome
        elif report.failed:
            if when == "setup":
                self.outcomes[nodeid] = "error"
            else:  # teardown: keep what the call did, and say that the teardown failed too
                self.outcomes[nodeid] = self.outcomes.get(nodeid, "passed") + "+teardown-error"
        elif report.skipped:
            self.outcomes[nodeid] = "xfailed" if xfail else "skipped"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.path:
            return
        import sqlalchemy

        result: dict[str, Any] = {
            "sqlalchemy_version": sqlalchemy.__version__,
            "sqlalchemy_path": str(Path(sqlalchemy.__file__).parent),
            "watched": self.watcher is not None,
            "durations": {when: round(seconds, 3) for when, seconds in self.durations.items()},
            "outcomes": self.outcomes,
        }
        if self.watcher is not None:
            result.update(self.watcher.summary())
        Path(self.path).write_text(json.dumps(result, indent=1, sort_keys=True))


class Watcher:
    """Watches every engine the suite creates, and every pool it builds without an engine.

    One ``Observer(registry=CollectorRegistry())`` per test, opened before the test's fixtures
    and closed after its teardown: it watches each engine or pool made while the test runs,
    and those that outlive a test: the session's (made outside any test) and the class's (made
    while the first test of a class sets up; until the class ends). A fresh Observer each time
    also re-adds the class-level listeners the suite's teardowns clear
    (``Pool.dispatch._clear()``, ``SessionEvents._clear()``), and lets the engines go when the
    test ends (an Observer holds the engines it watches).
    """

    def __init__(self) -> None:
        # sync engines and engine-less pools that outlive a test, by how long they do
        self.session_engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self.session_pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self.class_engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self.class_pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self.current_class: Any = None
        self.first_of_class = False
        self.phase = "outside"  # "setup" | "call" | "teardown" of the current test
        self.observer: Any = None  # the current test's Observer
        self.stand_ins: dict[int, Any] = {}  # id(pool) -> Engine(pool, ...) for this test
        self.lock = threading.RLock()
        self.local = threading.local()  # constructor depths of this thread
        self.serial = 0
        self.engines_watched = 0  # watch() calls, counted over all tests
        self.pools_watched = 0
        self.tests_watched = 0
        self.checkouts = 0  # what the Observers counted: proof that they saw the suite's work
        self.sessions = 0
        self.hook_errors: dict[str, dict[str, int]] = {}  # test id -> hook -> count
        self.refused: dict[str, list[str]] = {}  # test id -> engines watch() raised for
        self.harness_errors: dict[str, list[str]] = {}  # test id -> what failed in here
        self.current = "<outside tests>"

    # -- patching SQLAlchemy --------------------------------------------------------------------

    def install(self) -> None:
        import sqlalchemy.engine.create
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        original = sqlalchemy.engine.create.create_engine
        watcher = self

        @functools.wraps(original)
        def create_engine(*args: Any, **kwargs: Any) -> Any:
            with watcher.depth("engine"):
                engine = original(*args, **kwargs)
            if isinstance(engine, Engine):  # not the mock strategy's MockConnection
                watcher.safely(watcher.adopt_engine, engine)
            return engine

        self.create_engine = create_engine
        self.original_create_engine = original
        rebind(original, create_engine)

        # dispose() makes the engine a new pool: the engine's tracker follows it there.
        dispose = Engine.dispose

        @functools.wraps(dispose)
        def engine_dispose(engine: Any, *args: Any, **kwargs: Any) -> None:
            with watcher.depth("engine"):
                dispose(engine, *args, **kwargs)

        Engine.dispose = engine_dispose  # type: ignore[method-assign]

        # A pool is known once its outermost constructor returns: wrap every __init__ in the
        # hierarchy, and those of the subclasses the tests define later.
        def wrap_tree(cls: type) -> None:
            self.wrap_pool_init(cls)
            for sub in cls.__subclasses__():
                wrap_tree(sub)

        wrap_tree(Pool)

        def init_subclass(cls: type, **kwargs: Any) -> None:
            super(Pool, cls).__init_subclass__(**kwargs)
            watcher.wrap_pool_init(cls)

        Pool.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment]

    def wrap_pool_init(self, cls: type) -> None:
        # SQLAlchemy's signature-copying decorator: create_engine() reads the pool class's
        # keyword arguments off __init__'s code (util.get_cls_kwargs), so a (*args, **kwargs)
        # wrapper would make it refuse pool_size, pool_pre_ping...
        from sqlalchemy.util import decorator

        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_observer_suite", False):
            return
        watcher = self

        @decorator
        def constructing(fn: Callable[..., None], pool: Any, *args: Any, **kwargs: Any) -> None:
            with watcher.depth("pool") as outermost:
                fn(pool, *args, **kwargs)
            if outermost and not watcher.inside("engine"):  # not create_engine's, dispose()'s
                watcher.safely(watcher.adopt_pool, pool)

        wrapped = constructing(init)
        wrapped._observer_suite = True
        cls.__init__ = wrapped  # type: ignore[misc]

    def depth(self, kind: str) -> _Depth:
        return _Depth(self.local, kind)

    def inside(self, kind: str) -> bool:
        return bool(getattr(self.local, kind, 0))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        rebind(self.original_create_engine, self.create_engine)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        rebind(self.original_create_engine, self.create_engine)

    # -- engines and pools ----------------------------------------------------------------------

    def outlives_test(self) -> tuple[weakref.WeakSet[Any], weakref.WeakSet[Any]] | None:
        """Where an engine and a pool made now are kept for later tests (None: not kept)."""
        if self.observer is None:
            return self.session_engines, self.session_pools
        if self.phase == "setup" and self.first_of_class:
            return self.class_engines, self.class_pools
        return None

    def adopt_engine(self, engine: Any) -> None:
        with self.lock:
            keep = self.outlives_test()
            if keep is not None:
                keep[0].add(engine)
            pool = engine.pool
            for pools in (self.session_pools, self.class_pools):
                pools.discard(pool)  # create_engine(pool=p) with a pool made earlier
            stand_in = self.stand_ins.pop(id(pool), None)
            if stand_in is not None and self.observer is not None:
                self.observer.unwatch(stand_in)
            if self.observer is not None:
                self.watch(engine)

    def adopt_pool(self, pool: Any) -> None:
        with self.lock:
            keep = self.outlives_test()
            if keep is not None:
                keep[1].add(pool)
            if self.observer is not None:
                self.watch_pool(pool)

    def watch(self, engine: Any) -> bool:
        self.serial += 1
        try:
            self.observer.watch(engine, name=f"engine-{self.serial}")
        except Exception as exc:
            # e.g. test_recycle_pool_no_race sets ``engine.dialect = Mock()`` after creating it,
            # and event.listen() fails on the mock: reported, and not tried again.
            self.refused.setdefault(self.current, []).append(f"{engine!r}: {exc!r}")
            self.session_engines.discard(engine)
            self.class_engines.discard(engine)
            return False
        self.engines_watched += 1
        return True

    def watch_pool(self, pool: Any) -> None:
        from sqlalchemy.engine import Engine, make_url
        from sqlalchemy.engine.default import DefaultDialect

        # The observer watches engines: a pool built alone gets a stand-in engine around it.
        stand_in = Engine(pool, DefaultDialect(), make_url("sqlite://"))
        if self.watch(stand_in):
            self.stand_ins[id(pool)] = stand_in
            self.pools_watched += 1

    def harness_error(self, message: str) -> None:
        self.harness_errors.setdefault(self.current, []).append(message)

    def safely(self, fn: Callable[[Any], None], arg: Any) -> None:
        """``fn(arg)``; a failure of this harness is reported, never raised into the test."""
        try:
            fn(arg)
        except Exception as exc:
            self.harness_error(f"{fn.__name__}({arg!r}): {exc!r}")

    # -- one Observer per test ------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.safely(self.open, item)
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        self.phase = "call"
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        self.phase = "teardown"
        yield
        self.close()

    def open(self, item: pytest.Item) -> None:
        from prometheus_client import CollectorRegistry

        from observer import Observer

        with self.lock:
            self.current = item.nodeid
            cls = item.getparent(pytest.Class)
            self.first_of_class = cls is not self.current_class
            if self.first_of_class:
                self.current_class = cls
                self.class_engines = weakref.WeakSet()
                self.class_pools = weakref.WeakSet()
            self.phase = "setup"
            self.observer = Observer(registry=CollectorRegistry())
            self.tests_watched += 1
            for engine in [*self.session_engines, *self.class_engines]:
                self.watch(engine)
            for pool in [*self.session_pools, *self.class_pools]:
                self.watch_pool(pool)

    def close(self) -> None:
        with self.lock:
            observer, self.observer = self.observer, None
            self.stand_ins.clear()
            self.phase = "outside"
            if observer is None:
                return
            registry = observer.registry
            try:
                observer.flush()  # read the pools' series before close() unbinds them
                self.checkouts += total(registry, "sqlalchemy_pool_checkouts_total")
                self.sessions += total(registry, "sqlalchemy_orm_sessions_opened_total")
                observer.close()
            except Exception as exc:
                self.harness_error(f"Observer.close(): {exc!r}")
            errors = hook_errors(registry)
            if errors:
                self.hook_errors[self.current] = errors
            self.current = "<outside tests>"

    def summary(self) -> dict[str, Any]:
        return {
            "tests_watched": self.tests_watched,
            "engines_watched": self.engines_watched,
            "pools_watched": self.pools_watched,
            "checkouts_seen": self.checkouts,
            "sessions_seen": self.sessions,
            "hook_errors": self.hook_errors,
            "refused": self.refused,
            "harness_errors": self.harness_errors,
        }


class _Depth:
    """Counts nested calls of one kind on this thread; ``as`` gives "this is the outermost"."""

    def __init__(self, local: threading.local, kind: str) -> None:
        self.local = local
        self.kind = kind

    def __enter__(self) -> bool:
        depth = getattr(self.local, self.kind, 0)
        setattr(self.local, self.kind, depth + 1)
        return depth == 0

    def __exit__(self, *exc: object) -> None:
        setattr(self.local, self.kind, getattr(self.local, self.kind) - 1)


def rebind(original: Callable[..., Any], replacement: Callable[..., Any]) -> None:
    """Point every module-level alias of ``original`` at ``replacement`` (``sqlalchemy``,
    ``sqlalchemy.engine``, the asyncio extension's ``_create_engine``, the testing helpers and
    the test modules that imported it by name)."""
    import sys

    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                namespace[name] = replacement


def hook_errors(registry: Any) -> dict[str, int]:
    """``observer_hook_errors_total`` by hook, the non-zero ones."""
    return {
        labels["hook"]: int(value)
        for labels, value in samples(registry, "observer_hook_errors_total")
        if value
    }


def total(registry: Any, name: str) -> int:
    """The sum of a counter over its label values."""
    return int(sum(value for _, value in samples(registry, name)))


def samples(registry: Any, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    ]
