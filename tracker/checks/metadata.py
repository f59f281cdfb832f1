"""metadata-naming-convention: a ``MetaData`` whose constraints are named by whichever
database creates them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (CheckConstraint, ForeignKeyConstraint, Index, MetaData,
                        PrimaryKeyConstraint, UniqueConstraint)

from ..rules import Finding

#: The convention keys that name constraints (SQLAlchemy's default has only "ix").
CONSTRAINT_KEYS = ("pk", "fk", "uq", "ck")
_KEY_OF_CLASS = ((PrimaryKeyConstraint, "pk"), (ForeignKeyConstraint, "fk"),
                 (UniqueConstraint, "uq"), (CheckConstraint, "ck"), (Index, "ix"))
_NOUNS = {"pk": ("primary key", "primary keys"), "fk": ("foreign key", "foreign keys"),
          "uq": ("unique constraint", "unique constraints"),
          "ck": ("check constraint", "check constraints")}


def metadata_of(target: Any) -> MetaData | None:
    """The ``MetaData`` itself, or that of a declarative base (or mapped class)."""
    if isinstance(target, MetaData):
        return target
    metadata = getattr(target, "metadata", None) if isinstance(target, type) else None
    return metadata if isinstance(metadata, MetaData) else None


def metadata_findings(target: Any, name: str = "") -> list[Finding]:
    """The naming-convention finding for a ``MetaData`` or a declarative base class
    (``[]`` or one finding). ``name`` starts the message and says how the user knows
    the MetaData (``"The MetaData of myapp.models:Base"``); by default a class is named
    by its module and qualified name."""
    metadata = metadata_of(target)
    if metadata is None:
        raise TypeError(
            f"expected a MetaData or a declarative base, got {type(target).__name__}")
    if not name:
        name = (f"The MetaData of {target.__module__}.{target.__qualname__}"
                if isinstance(target, type) else "A MetaData")
    finding = check_naming_convention(metadata, name)
    return [finding] if finding is not None else []


def convention_keys(metadata: MetaData) -> set[str]:
    """The kinds (``pk``, ``fk``, ``uq``, ``ck``, ``ix``) the convention names; keys may
    be strings or constraint classes."""
    keys = set()
    for key in metadata.naming_convention:
        if isinstance(key, str):
            keys.add(key)
        elif isinstance(key, type):
            keys.update(short for cls, short in _KEY_OF_CLASS if issubclass(key, cls))
    return keys


def unnamed_constraints(metadata: MetaData) -> dict[str, int]:
    """How many constraints of each kind have no name (neither given nor generated)."""
    counts = dict.fromkeys(CONSTRAINT_KEYS, 0)
    for table in metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, PrimaryKeyConstraint) and not constraint.columns:
                continue  # a table without a primary key still has an empty one
            # a name is a str (conv included); None, or SQLAlchemy's "no name" marker,
            # means the database will choose one
            if isinstance(constraint.name, str):
                continue
            for cls, short in _KEY_OF_CLASS:
                if isinstance(constraint, cls):
                    counts[short] += 1
                    break
    return counts


def check_naming_convention(metadata: MetaData, name: str) -> Finding | None:
    """metadata-naming-convention: fires when the convention lacks a constraint key and
    either the metadata has no tables yet or one of its constraints of a missing kind
    is unnamed (a convention is irrelevant to constraints that are all named by hand).
    """
    keys = convention_keys(metadata)
    missing = [key for key in CONSTRAINT_KEYS if key not in keys]
    if not missing:
        return None
    tables = len(metadata.tables)
    unnamed = unnamed_constraints(metadata)
    affected = {key: unnamed[key] for key in missing if unnamed[key]}
    if tables and not affected:
        return None
    if len(missing) == len(CONSTRAINT_KEYS):
        what = (f"{name} has no naming convention for constraints (only SQLAlchemy's "
                f"default one for indexes)")
    else:
        what = (f"{name} has a naming convention without the "
                f"{_and(missing)} key{'s' if len(missing) > 1 else ''}")
    if affected:
        total = sum(affected.values())
        counted = [f"{count} {_NOUNS[key][count != 1]}" for key, count in affected.items()]
        whose = (f": in its {tables} table{'s' if tables != 1 else ''}, {_and(counted)} "
                 f"{'has' if total == 1 else 'have'} no name, so each database chooses "
                 f"one, and migrations (Alembic) cannot drop or alter "
                 f"{'it' if total == 1 else 'them'} reliably")
    else:
        whose = (": it has no tables yet, and the constraints of tables created without a "
                 "convention get names chosen by the database")
    message = (f"{what}{whose}. Give it a naming_convention with the keys "
               f"{_and(list(CONSTRAINT_KEYS))} before creating tables.")
    evidence = {
        "metadata": name,
        "tables": tables,
        "naming_convention": {_key_name(key): _value_name(value)
                              for key, value in metadata.naming_convention.items()},
        "missing": missing,
        "unnamed": affected,
    }
    return Finding("metadata-naming-convention", message, evidence)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _key_name(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else str(key)


def _value_name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", type(value).__name__)
