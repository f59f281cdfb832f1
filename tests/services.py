"""Database and broker services the tests talk to for real.

Outside CI a missing service skips its tests with the reason; under CI (``CI`` set)
it fails them: CI must never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get("RETORT_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("RETORT_TEST_MARIADB_URL",
                             "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("RETORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

_PORTS = {"postgresql": ("127.0.0.1", 5432), "mariadb": ("127.0.0.1", 3306),
          "redis": ("127.0.0.1", 6379)}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip (locally) or fail (under CI) unless ``service`` answers on its port."""
    host, port = _PORTS[service]
    if _reachable(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI must run these tests", pytrace=False)
    pytest.skip(f"{message} (start it to run these tests; CI runs them)")
