"""The differences between the bare and the watched run that the gate accepts, each with why.

Keys are test ids as pytest prints them; ``*`` matches any text (backend-specific classes carry
the driver and server version in their name). Every reason names the issue that removes it:
when that issue is fixed the difference disappears, and the gate says the entry can go.
"""

from __future__ import annotations

_INFO_CHECKOUT = (
    "issue #13 item 2: the observer keeps its checkout stamp (pool_observer.checkout) in the "
    "connection's info dict, and the test asserts that info holds only its own keys"
)

# test id -> reason its outcome differs when every engine is watched
DIFFERENCES: dict[str, str] = {
    "test/engine/test_pool.py::PoolTest::test_info": _INFO_CHECKOUT,
    "test/ext/asyncio/test_engine.py::AsyncEngineTest*::test_connection_info": _INFO_CHECKOUT,
    "test/engine/test_execute.py::DialectEventTest::"
    "test_connect_do_connect_info_there_after_invalidate": (
        "issue #13 item 2: the observer's do_connect listener writes pool_observer."
        "connect_started into the record's info, and the test's own do_connect listener "
        "asserts that info is empty"
    ),
    "test/engine/test_reconnect.py::MockReconnectTest::test_conn_reusable": (
        "issue #13 item 4: application_name='pool-observer' is added to every PostgreSQL "
        "connection's arguments, and the test asserts the exact DBAPI connect() call"
    ),
}

_MOCK_RECORD = (
    "issue #13 item 2: the test calls the pool's creator with a Mock as the connection "
    "record, and do_connect's write into record.info (a Mock) raises TypeError: caught and "
    "counted, the test is not affected"
)

# test id -> {hook: reason} for observer_hook_errors_total seen while the test ran
HOOK_ERRORS: dict[str, dict[str, str]] = {
    "test/engine/test_pool.py::CreatorCompatibilityTest::test_creator_callable_outside_witharg": {
        "do_connect": _MOCK_RECORD
    },
    "test/engine/test_pool.py::CreatorCompatibilityTest::test_creator_patching_arg_to_noarg": {
        "do_connect": _MOCK_RECORD
    },
}
