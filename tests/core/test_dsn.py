"""observer._dsn: a database URL shown to people or used as a label never carries a credential,
whatever form the DSN takes; a well-formed one keeps its host, port and database exactly."""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL, make_url

from observer._dsn import credentials, display_database, display_url, redact

UNPARSED = "postgresql://<unparsed>"
# Deterministic in CI; the strategies below reach every form on each run.
PROPERTY = settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Everything but the secret is lower case, so any upper-case letter in an output is a piece
# of the secret (percent-encoding only adds digits and A-F to the secret's own text).
LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=3).map(".".join)
HOST = st.one_of(HOSTNAME, st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
PORT = st.none() | st.integers(1, 65535)
DATABASE = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
USER = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
CHUNK = st.text(alphabet=string.ascii_uppercase, min_size=6, max_size=12)
# What makes a password hard to find: URL delimiters, percent signs, query syntax, blanks.
SPECIAL = st.sampled_from(["", "@", ":", "/", "?", "#", "%", "%2", "&", "=", "+", " ", ";", ":/@"])
SECRET = st.tuples(CHUNK, SPECIAL, CHUNK, SPECIAL).map("".join)
SECRET_KEYS = ["password", "sslpassword", "api_key", "auth_token", "client_secret", "passwd"]


@dataclass(frozen=True)
class Planted:
    """A DSN with ``secret`` in one credential position, and what it must show."""

    dsn: str
    secret: str
    expected: str  # backend://hosts/database
    well_formed: bool  # every delimiter in the secret is escaped (or the form needs none)
    user: str | None = None


def host_text(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown + (f":{port}" if port else "")


@st.composite
def planted(draw: st.DrawFn) -> Planted:
    """A DSN of a random form with a random secret in one of its credential positions."""
    hosts = draw(st.lists(st.tuples(HOST, PORT), min_size=1, max_size=3))
    database, user, secret = draw(DATABASE), draw(USER), draw(SECRET)
    where = ",".join(host_text(h, p) for h, p in hosts)
    expected = f"postgresql://{where}/{database}"
    encoded = draw(st.booleans())
    delimiters = any(c in secret for c in "@/?#")
    form = draw(st.sampled_from(["password", "user-less", "query", "libpq"]))
    if form == "password":
        password = quote(secret, safe="") if encoded else secret
        dsn = f"postgresql+asyncpg://{user}:{password}@{where}/{database}"
        dsn += draw(st.sampled_from(["", "?sslmode=require", "?application_name=shop"]))
        return Planted(dsn, secret, expected, encoded or not delimiters, user)
    if form == "user-less":
        password = quote(secret, safe="") if encoded else secret
        dsn = f"postgresql://:{password}@{where}/{database}"
        return Planted(dsn, secret, expected, encoded or not delimiters)
    if form == "query":
        key = draw(st.sampled_from(SECRET_KEYS))
        value = quote_plus(secret) if encoded else secret
        who = draw(st.sampled_from(["", f"{user}@"]))
        dsn = f"postgresql://{who}{where}/{database}?sslmode=prefer&{key}={value}"
        return Planted(dsn, secret, expected, encoded or "@" not in secret, user if who else None)
    # libpq's keyword = value form: one port for every host, or none at all
    ports = [p for _, p in hosts]
    with_ports = all(ports)
    if not with_ports:
        expected = "postgresql://" + ",".join(host_text(h, None) for h, _ in hosts)
        expected += f"/{database}"
    quoted = "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"
    dsn = f"host={','.join(h for h, _ in hosts)} dbname={database} password={quoted} user={user}"
    if with_ports:
        dsn += f" port={','.join(str(p) for p in ports)}"
    return Planted(dsn, secret, expected, True, user)


def leaked(secret: str, text: str) -> list[str]:
    """The pieces of ``secret`` found in ``text``: the whole, its encodings, any upper case."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    return [f for f in forms if f in text] + [c for c in text if c.isupper()]


@PROPERTY
@given(planted())
def test_no_secret_comes_out_of_a_dsn_string(case: Planted) -> None:
    """Whatever the form, no piece of the secret is shown; a well-formed DSN shows exactly
    backend://host:port/database (also with user=True, plus the user); a malformed one shows
    that or <unparsed>, never a guess."""
    shown = display_url(case.dsn)
    with_user = display_url(case.dsn, user=True)
    assert leaked(case.secret, shown + with_user) == []
    if case.well_formed:
        assert shown == case.expected
        if case.user is not None:
            assert with_user == case.expected.replace("://", f"://{case.user}@", 1)
    else:
        assert shown in {case.expected, UNPARSED}


@PROPERTY
@given(planted())
def test_no_secret_comes_out_of_a_parsed_url(case: Planted) -> None:
    """The same through SQLAlchemy's URL (an engine's ``url``, the ``pool`` label): the whole
    secret is never shown; a well-formed single-host URL shows exactly its location."""
    try:
        url = make_url(case.dsn)
    except Exception:
        return  # several hosts with ports, libpq: SQLAlchemy does not read them
    shown = display_url(url)
    assert case.secret not in shown
    assert quote(case.secret, safe="") not in shown
    if case.well_formed and "," not in case.expected:
        assert shown == case.expected
        assert display_database(url) == case.expected.rsplit("/", 1)[1]


@PROPERTY
@given(planted())
def test_redact_blanks_every_credential_of_the_dsn(case: Planted) -> None:
    """A driver message repeating the DSN or its password loses the password (as written and
    decoded) whatever the form."""
    message = f"could not connect with {case.dsn}: password {case.secret!r} rejected"
    cleaned = redact(message, case.dsn)
    assert case.secret not in cleaned
    assert quote(case.secret, safe="") not in cleaned
    if case.well_formed:
        assert case.secret in credentials(case.dsn)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        # the examples: a password with an unescaped "@" ended up in the label
        ("postgresql://u:S3cret@PW@127.0.0.1:55432/secdb", UNPARSED),
        ("postgresql://postgres:S3c@ret@host:5432/db?sslmode=require", UNPARSED),
        ("postgresql://h:5432/db?password=S3@cret", UNPARSED),
        ("postgresql://u:S3c/ret@h/db", UNPARSED),
        ("postgresql://u:S3c?ret@h/db", UNPARSED),
        ("postgresql://u:S3c#ret@h/db", UNPARSED),
        ("postgresql://u:p@h:fivefour/db", UNPARSED),
        ("postgresql://u:p@h%2Eexample/db", UNPARSED),
        ("postgresql://u:S3c:ret@h/db", "postgresql://h/db"),
        (
            "postgresql+asyncpg://u:S3c%40ret@db.internal:6432/app",
            "postgresql://db.internal:6432/app",
        ),
        ("postgresql://u@[::1]:5432,h2:5433/app", "postgresql://[::1]:5432,h2:5433/app"),
        ("postgresql://h/app?password=S3cret&sslpassword=K3y", "postgresql://h/app"),
        ("postgresql://u:p@/app?host=/var/run/postgresql", "postgresql:///app"),
        ("host=db port=5433 dbname=app user=u password='S3 cret'", "postgresql://db:5433/app"),
        ("host=/var/run/postgresql dbname=app", "postgresql://%2Fvar%2Frun%2Fpostgresql/app"),
        ("host=db password='unterminated", "<unparsed>"),
        ("sqlite+aiosqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:////tmp/app.db", "sqlite:////tmp/app.db"),
        ("not a url S3cret", "<unparsed>"),
    ],
)
def test_examples(dsn: str, shown: str) -> None:
    """Known forms, the issue's included, render as documented."""
    assert display_url(dsn) == shown


def test_an_engine_url_with_a_host_holding_part_of_a_password_is_unparsed() -> None:
    """SQLAlchemy splits ``u:S3c@ret@host`` at the first "@": the host it keeps (``ret@host``)
    is not a host name, so the label says <unparsed> instead of showing it."""
    url = make_url("postgresql+asyncpg://u:S3c@ret@127.0.0.1:5432/db")
    assert (url.host, display_url(url)) == ("ret@127.0.0.1", UNPARSED)
    assert display_database(url) == "<unparsed>"
    created = URL.create("postgresql", username="u", password="p@ss/w?rd", host="db", port=1)
    assert display_url(created, user=True) == "postgresql://u@db:1/"
