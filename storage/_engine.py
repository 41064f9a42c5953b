"""Database URLs, engine creation, SQLite pragmas, transient-error retries, migration entry."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import quote, quote_plus

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from storage._errors import StorageError

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
RETRY_ATTEMPTS: Final = 8
RETRY_BASE_DELAY_S: Final = 0.05
RETRY_MAX_DELAY_S: Final = 2.0
WRITE_OPTIONS: Final = {"sqlite_begin": "IMMEDIATE"}
"""Execution options of write transactions: on SQLite they take the write lock when they begin
(``BEGIN IMMEDIATE``), so that concurrent writers queue in SQLite's busy handler instead of
failing when a read snapshot cannot be upgraded to a write."""

_TRANSIENT_MESSAGES: Final = (
    "database is locked",
    "database is busy",
    "database table is locked",
    "connection refused",
    "could not connect",
    "connection timed out",
    "timeout expired",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "too many clients",
    "deadlock detected",
    "could not serialize access",
    "canceling statement due to lock timeout",
    "could not obtain lock",
    "connection reset",
    "ssl connection has been closed unexpectedly",
)
_URL_HINT: Final = "use e.g. sqlite:///sweeps.db or postgresql+psycopg://user:password@host/db"
_logger = logging.getLogger(__name__)


# Query keys whose value is a secret: libpq takes ``password`` and ``sslpassword`` as URL
# query parameters too, and any other key naming a password is treated the same to be safe.
_SECRET_KEY: Final = re.compile(r"password", re.IGNORECASE)
# A rendered URL's query item with such a key; values are percent-encoded, so none holds & or #.
_QUERY_SECRET: Final = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)
# In free text: ``key=value`` as libpq conninfo strings and URL queries write it (a conninfo
# value is either single-quoted with backslash escapes or runs to the next blank) ...
_TEXT_SECRET: Final = re.compile(
    r"(\b\w*password\w*\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]+)", re.IGNORECASE
)
# ... and the password of any URL's ``user:password@``.
_TEXT_USERINFO: Final = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def mask_url(url: str | URL) -> str:
    """Render ``url`` with its password, and the value of every query parameter whose name
    contains "password" (any case), replaced by ``***``; also for unparsable URLs."""
    if isinstance(url, URL):
        rendered = url.render_as_string(hide_password=True)
    else:
        try:
            rendered = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            rendered = re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
    return _QUERY_SECRET.sub(r"\1***", rendered)


def _secrets(url: URL) -> list[str]:
    values = [url.password] if url.password else []
    for key, value in url.query.items():
        if _SECRET_KEY.search(key):
            values.extend([value] if isinstance(value, str) else value)
    # Error text may echo a value as typed in the URL (percent-encoded) or decoded.
    forms = {form for value in values if value for form in (str(value), quote(str(value)))}
    forms |= {quote_plus(str(value)) for value in values if value}
    # Longest first, so that a secret holding a shorter one is not left half-replaced.
    return sorted(forms, key=len, reverse=True)


def scrub(message: str, url: URL | None = None) -> str:
    """First line of ``message`` without the passwords of ``url`` (user part and query
    parameters), nor any ``...password=VALUE`` or ``user:password@`` it contains."""
    lines = str(message).strip().splitlines()
    line = lines[0].strip() if lines else ""
    if url is not None:
        for secret in _secrets(url):
            line = line.replace(secret, "***")
    line = _TEXT_SECRET.sub(r"\1***", line)
    return _TEXT_USERINFO.sub(r"\1***@", line)


# SQLite reports a full disk as SQLITE_FULL, and a write past a file size limit (EFBIG) as
# SQLITE_IOERR_WRITE; PostgreSQL as SQLSTATE 53100 (disk_full).
_DISK_FULL_SQLITE: Final = ("SQLITE_FULL", "SQLITE_IOERR_WRITE")
_DISK_FULL_SQLSTATE: Final = "53100"


def is_disk_full(error: BaseException) -> bool:
    """True for a DB-API error that means the database could not grow on disk."""
    if getattr(error, "sqlite_errorname", None) in _DISK_FULL_SQLITE:
        return True
    return getattr(error, "sqlstate", None) == _DISK_FULL_SQLSTATE


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: lost/refused connections and SQLite lock contention."""
    if not isinstance(exc, OperationalError):
        return False
    if exc.connection_invalidated:
        return True
    message = str(exc.orig if exc.orig is not None else exc).lower()
    return any(fragment in message for fragment in _TRANSIENT_MESSAGES)


def with_retry(
    work: Callable[[], T],
    *,
    attempts: int | None = None,
    base_delay: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work``, retrying transient OperationalErrors with exponential backoff.

    ``work`` must be safe to repeat (a whole transaction). Delays double from ``base_delay``
    (default :data:`RETRY_BASE_DELAY_S`) up to :data:`RETRY_MAX_DELAY_S`; after ``attempts``
    tries (default :data:`RETRY_ATTEMPTS`, about 5 s of waiting) the last error is re-raised,
    never swallowed.
    """
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    delay = RETRY_BASE_DELAY_S if base_delay is None else base_delay
    for attempt in range(1, attempts):
        try:
            return work()
        except OperationalError as exc:
            if not is_transient(exc):
                raise
            _logger.debug(
                "transient database error (attempt %d of %d), retrying in %.2fs: %s",
                attempt,
                attempts,
                delay,
                scrub(str(exc.orig if exc.orig is not None else exc))[:200],
            )
            sleep(delay)
            delay = min(2 * delay, RETRY_MAX_DELAY_S)
    return work()


def parse_url(raw: str) -> URL:
    """Parse a user-supplied URL; plain ``postgresql://`` means psycopg 3."""
    if not isinstance(raw, str) or not raw.strip():
        raise StorageError(f"empty database URL; {_URL_HINT}")
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"cannot parse database URL {mask_url(raw)!r}; {_URL_HINT}") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(
            f"unsupported database URL {mask_url(url)!r}: only SQLite and PostgreSQL are "
            f"supported; {_URL_HINT}"
        )
    return url


def _sqlite_connect(busy_timeout: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions by itself: _sqlite_begin emits BEGIN, so that
        # write transactions can take the lock up front (BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if busy_timeout:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    return on_connect


def _sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def build_engine(url: URL) -> Engine:
    """Create the engine for ``url``.

    On SQLite a connect listener sets the pragmas (WAL, foreign keys, a 30 s busy timeout
    unless the URL gives ``?timeout=SECONDS``) and a begin listener emits ``BEGIN``, ``BEGIN
    IMMEDIATE`` for connections with :data:`WRITE_OPTIONS`.
    """
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StorageError(
            f"cannot use database URL {mask_url(url)!r} ({scrub(str(exc), url)}); {_URL_HINT}"
        ) from exc
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_connect("timeout" not in url.query))
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def open_error(url: URL, exc: DBAPIError) -> StorageError:
    """The one-line StorageError for a database that cannot be opened."""
    reason = scrub(str(exc.orig if exc.orig is not None else exc), url)
    if url.get_backend_name() == "sqlite":
        fix = "check that the directory exists and is writable, or pass another sqlite:/// path"
    else:
        fix = "check that the server is running and reachable and that host, port, user, "
        fix += "password and database in the URL are right"
    return StorageError(f"cannot open database {mask_url(url)}: {reason}; {fix}")


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def migrate(engine: Engine, url_display: str) -> None:
    """Bring the database to the newest schema revision, without Alembic's INFO logging.

    Alembic is imported here, inside the silenced block, because importing it already logs
    plugin set-up messages at INFO level.
    """
    with _quiet_alembic():
        from storage._migrate import upgrade_to_head

        upgrade_to_head(engine, url_display)
