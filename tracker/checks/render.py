"""Render configuration values as the Python a user would paste into a fix.

Values come from the application's own configuration, so they are rendered from their
type like everything else the agent shows (see :mod:`tracker.redact`): literals of
known types, classes by name, ``<TypeName>`` for anything else, and values under a
secret-looking key (``connect_args={"password": ...}``) masked.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..redact import MASK, Redactor

_REDACTOR = Redactor()


def literal(value: Any, key: str = "") -> str:
    """``value`` as Python source (masked when ``key`` looks secret)."""
    if key and _REDACTOR.is_secret(key):
        return json.dumps(MASK, ensure_ascii=False)
    if key == "poolclass" and isinstance(value, str):
        return value  # a pool class known by name (from a finding's evidence)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, like the keys
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, Mapping):
        return dict_literal(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(literal(item) for item in value)
        if isinstance(value, list):
            return f"[{items}]"
        return f"({items},)" if len(value) == 1 else f"({items})"
    return f"<{type(value).__name__}>"


def dict_literal(options: Mapping[str, Any]) -> str:
    """``{"pool_size": 10, "pool_recycle": 280}`` with string keys quoted."""
    items = ", ".join(f'"{key}": {literal(value, str(key))}' for key, value in options.items())
    return "{" + items + "}"


def keywords(options: Mapping[str, Any]) -> str:
    """``pool_size=10, pool_recycle=280``."""
    return ", ".join(f"{key}={literal(value, key)}" for key, value in options.items())


def create_engine_code(url: str, options: Mapping[str, Any], comment: str = "") -> str:
    """``engine = create_engine("url", pool_recycle=280)`` (url already masked)."""
    args = ", ".join([f'"{url}"'] + ([keywords(options)] if options else []))
    code = f"engine = create_engine({args})"
    return f"{code}  # {comment}" if comment else code


def imports_for(options: Mapping[str, Any]) -> str:
    """``from sqlalchemy.pool import StaticPool`` for a pool class in ``options``."""
    value = options.get("poolclass")
    if isinstance(value, type) and value.__module__.startswith("sqlalchemy.pool"):
        value = value.__name__
    return f"from sqlalchemy.pool import {value}\n" if isinstance(value, str) else ""


def plain(value: Any, key: str = "") -> Any:
    """A JSON-friendly copy of a configuration value for evidence: classes by name,
    unknown objects as ``<TypeName>``, values under secret-looking keys masked."""
    if key and _REDACTOR.is_secret(key):
        return MASK
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(item, str(k)) for k, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, type):
        return value.__name__
    return f"<{type(value).__name__}>"
