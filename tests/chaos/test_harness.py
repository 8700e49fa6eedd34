"""The chaos harness reads the server's log as a user would: tracebacks whose lines another
thread's log line interrupted still name their exception."""

from __future__ import annotations

from tests.chaos.harness import exception_lines

INTERLEAVED = """\
ERROR:    Exception in ASGI application
Traceback (most recent call last):
  File "app.py", line 1, in work
pool.connection_invalidated pool=postgresql://127.0.0.1:5432/db error_class=Error
INFO:     127.0.0.1:50000 - "GET /work HTTP/1.1" 500 Internal Server Error
    await conn.execute(text("SELECT 1"))
sqlalchemy.dialects.postgresql.asyncpg.AsyncAdapt_asyncpg_dbapi.Error: connection was closed

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "app.py", line 1, in work
sqlalchemy.exc.DBAPIError: (connection was closed)
Traceback (most recent call last):
  File "app.py", line 9, in other
KeyError
"""


def test_an_interleaved_log_line_is_not_taken_for_the_exception() -> None:
    assert exception_lines(INTERLEAVED) == {
        "sqlalchemy.dialects.postgresql.asyncpg.AsyncAdapt_asyncpg_dbapi.Error": 1,
        "sqlalchemy.exc.DBAPIError": 1,
        "KeyError": 1,
    }
