"""Make sure the database schema is current before a command touches it, and migrate it."""

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from loop.settings import Settings
from migrations import alembic_config, downgrade, upgrade
from store.db import check_connection, make_engine


class SchemaOutdated(RuntimeError):
    """The database is not at the latest migration (or at one this editloop does not know)."""


def ensure_schema(settings: Settings) -> None:
    """Migrate an embedded SQLite database automatically; require a served one to be current.

    A shared PostgreSQL is migrated by an explicit `editloop db upgrade` (the compose file runs it
    before any service starts), never as a side effect of another command.
    """
    url = settings.store.database_url
    scripts = ScriptDirectory.from_config(alembic_config(url))
    current = _known_revision(settings, scripts)
    head = scripts.get_current_head()
    if current == head:
        return
    if url.startswith("sqlite"):
        upgrade(url)
        return
    raise SchemaOutdated(
        f"database is at revision {current or 'none'}, the code needs {head}: run "
        "`editloop db upgrade`"
    )


def migrate(settings: Settings, revision: str, *, down: bool = False) -> None:
    """`editloop db upgrade|downgrade`: wait for the database (with retries), then migrate.

    ValueError for a revision that does not exist; `SchemaOutdated` for a database that a newer
    editloop migrated."""
    url = settings.store.database_url
    scripts = ScriptDirectory.from_config(alembic_config(url))
    _known_revision(settings, scripts)
    try:
        (downgrade if down else upgrade)(url, revision)
    except CommandError as exc:
        revisions = [s.revision for s in reversed(list(scripts.walk_revisions()))]
        raise ValueError(f"{exc}: the revisions are {', '.join(revisions)}, head, base") from None


def _known_revision(settings: Settings, scripts: ScriptDirectory) -> str | None:
    """The database's revision (None: never migrated), once it answers (with retries);
    `SchemaOutdated` when this editloop does not know that revision."""
    engine = make_engine(settings.store.database_url)
    try:
        check_connection(engine, retries=settings.store.retries, backoff_s=settings.store.backoff_s)
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise SchemaOutdated(
            f"database is at revision {current}, which this editloop does not know (a newer "
            f"editloop migrated it; this one needs {scripts.get_current_head()}): upgrade "
            "editloop, or point EDITLOOP_STORE__DATABASE_URL at another database"
        )
    return current
