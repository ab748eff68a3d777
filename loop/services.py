"""The composition root's builders: metadata database and object store from the settings."""

from sqlalchemy.orm import Session, sessionmaker

from loop.settings import Settings
from store.db import check_connection, make_engine, make_session_factory
from store.factory import build_object_store
from store.objects import ObjectStore


def open_database(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the configured database, after checking (with retries) that it answers."""
    engine = make_engine(settings.store.database_url)
    check_connection(engine, retries=settings.store.retries, backoff_s=settings.store.backoff_s)
    return make_session_factory(engine)


def open_store(settings: Settings) -> ObjectStore:
    """The configured object store (local folder by default)."""
    return build_object_store(settings.store, default_root=settings.data_dir / "objects")
