"""Alembic environment for the journal, run only programmatically by coordinator.manage.

The database URL arrives in ``config.attributes["url"]`` (never in an ini file or a
log line: it may hold a password), the other ``[database]`` options in
``config.attributes["options"]``.  Online mode only: the journal is always migrated
against a live database.
"""

from __future__ import annotations

from alembic import context

from coordinator import journal, schema

config = context.config
target_metadata = schema.metadata


def run_migrations_online() -> None:
    engine = journal.make_engine(config.attributes["url"], config.attributes.get("options"))
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=connection.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations_online()
