"""Configuration checks: the advisor's rules that can be decided from settings alone.

Each check reads an object's configuration (an engine and its pool, a ``MetaData``, a
Flask app's Flask-SQLAlchemy keys) and returns :class:`tracker.rules.Finding` objects
whose message names the object (engine URL with the password masked), the configured
value and the fix. Nothing here runs SQL through SQLAlchemy, and nothing imports Flask
unless the application already did.

Public entry points:

- :func:`engine_findings` — the engine rules, for one engine (the agent calls it when it
  registers an engine; the ``check`` command for every engine it finds);
- :func:`server_settings` — what the rules need from the database server, read on a raw
  DBAPI connection so that the application's statement listeners never see it;
- :func:`metadata_findings` — the naming-convention rule for a ``MetaData`` or a
  declarative base;
- :func:`flask_findings` — the Flask-SQLAlchemy rules for one Flask app;
- :func:`check_target` — all of the above for an object named on the command line.
"""

from __future__ import annotations

from .engine import engine_findings, masked_url
from .flask_app import flask_findings
from .metadata import metadata_findings
from .server import server_settings
from .target import CheckReport, TargetError, check_target, load_target

__all__ = [
    "CheckReport",
    "TargetError",
    "check_target",
    "engine_findings",
    "flask_findings",
    "load_target",
    "masked_url",
    "metadata_findings",
    "server_settings",
]
