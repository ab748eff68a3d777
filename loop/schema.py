"""Make sure the database schema is current before a command touches it."""

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from loop.settings import Settings
from migrations import alembic_config, upgrade
from store.db import check_connection, make_engine


class SchemaOutdated(RuntimeError):
    """The database is not at the latest migration."""


def ensure_schema(settings: Settings) -> None:
    """Migrate an embedded SQLite database automatically; require a served one to be current.

    A shared PostgreSQL is migrated by an explicit `editloop db upgrade` (the compose file runs it
    before any service starts), never as a side effect of another command.
    """
    url = settings.store.database_url
    if url.startswith("sqlite"):
        upgrade(url)
        return
    engine = make_engine(url)
    check_connection(engine, retries=settings.store.retries, backoff_s=settings.store.backoff_s)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    if current != head:
        raise SchemaOutdated(
            f"database is at revision {current or 'none'}, the code needs {head}: run "
            "`editloop db upgrade`"
        )
