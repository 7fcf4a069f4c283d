"""Alembic environment: the URL comes from Settings (infra.db.alembic_config), never a file.

`infra.db.migrate(settings)` runs this; it also works under the `alembic` command with
`-x` nothing: the URL then comes from TAPEFLOW_* variables via get_settings().
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from infra.db import sqlalchemy_url
from infra.settings import get_settings

# Any constant works; it only has to be the same for every process that migrates.
MIGRATION_LOCK = 7_462_311_001

config = context.config
url = config.attributes.get("url") or sqlalchemy_url(get_settings().postgres)


def run_offline() -> None:
    """`alembic upgrade --sql`: print the DDL instead of running it."""
    context.configure(url=url, literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, transactional_ddl=True)
        with context.begin_transaction():
            # `tapeflow up`, the demo and test sessions may migrate at the same time; the
            # lock makes the second wait and then find the schema already at head.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
