"""Engines for the check command (none connects at import)."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

from tests import services

# sqlite-memory-pool (SingletonThreadPool by default) and echo-on
memory = sa.create_engine("sqlite://", echo=True)

# the near miss: one shared connection, nothing to report
shared_memory = sa.create_engine("sqlite://", poolclass=StaticPool,
                                 connect_args={"check_same_thread": False})

# no pre-ping on a network database, pool_recycle unset on MariaDB
mariadb = sa.create_engine(services.MARIADB_URL)

# pool_recycle not below a wait_timeout of 300 s (set for this engine's sessions only)
mariadb_stale = sa.create_engine(services.MARIADB_URL, pool_recycle=3600,
                                 connect_args={"init_command": "SET SESSION wait_timeout=300"})

postgres_async = create_async_engine(
    services.POSTGRES_URL.replace("+psycopg:", "+psycopg_async:"), pool_pre_ping=True)

not_an_engine = {"url": "sqlite://"}
