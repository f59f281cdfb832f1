"""Statement fingerprints: one shape for every statement that differs only in values.

``SELECT * FROM t WHERE id = 5`` and ``… id = 7``, ``IN (?, ?)`` and ``IN (?, ?, ?)``,
``%(id_1)s`` and ``:id``, one VALUES row or fifty: each pair gets the same fingerprint,
so statements can be counted per shape. Runs in the worker thread only, once per
distinct statement text (the result is cached by the caller).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import NamedTuple

#: Longest fingerprint text kept (the protocol's strings are bounded).
MAX_SQL = 2000

_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
# placeholders of every DBAPI paramstyle, and SQLAlchemy's expanding IN marker
_PLACEHOLDER = re.compile(
    r"%\([^)]*\)s|%s|(?<![:\w]):[A-Za-z_]\w*|\$\d+|\?")
_POSTCOMPILE = re.compile(r"\(?__\[POSTCOMPILE_\w+\]\)?")
_IN_LIST = re.compile(r"\bIN\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.IGNORECASE)
_VALUES_ROWS = re.compile(r"(\bVALUES\s*\([^()]*\))(?:\s*,\s*\([^()]*\))+", re.IGNORECASE)
_TABLE = re.compile(
    r"\b(?:FROM|INTO|UPDATE|JOIN)\s+((?:[\"`\[]?[\w$]+[\"`\]]?\.)?[\"`\[]?[\w$]+[\"`\]]?)",
    re.IGNORECASE)
_OPS = ("select", "insert", "update", "delete")


class Fingerprint(NamedTuple):
    fp: str       # 12 hex digits, stable across processes and runs
    sql: str      # the folded statement
    op: str       # select, insert, update, delete or other
    table: str    # the first table named after FROM / INTO / UPDATE / JOIN, or ""


def fingerprint(statement: str) -> Fingerprint:
    """Fold literals, placeholders, IN-lists and multi-row VALUES of ``statement``.

    Each pass runs only if the text holds what it could match (a plain ``in`` test is
    ~50 times cheaper than a regex pass): an application that writes its values into
    its SQL has a new text, so a fingerprint, per statement. The rest of the work is
    done once per text with its values folded (:func:`_shape`)."""
    return _shape(_fold_values(statement))


def _fold_values(statement: str) -> str:
    """``statement`` with its whitespace, literals and placeholders folded."""
    sql = " ".join(statement.split())  # runs of whitespace as one space, as \s+ → " "
    if "'" in sql:
        sql = _STRING.sub("?", sql)
    if "__[POSTCOMPILE_" in sql:
        sql = _POSTCOMPILE.sub("(?)", sql)
    if "%" in sql or ":" in sql or "$" in sql:  # (a bare ? would stay ?)
        sql = _PLACEHOLDER.sub("?", sql)
    return _NUMBER.sub("?", sql)


@functools.lru_cache(maxsize=1024)
def _shape(sql: str) -> Fingerprint:
    """The fingerprint of a statement whose values :func:`_fold_values` folded."""
    if "(?" in sql or "( ?" in sql:  # whitespace is single spaces by now
        sql = _IN_LIST.sub("IN (…)", sql)
    if ")," in sql or ") ," in sql:
        sql = _VALUES_ROWS.sub(r"\1", sql)  # one row or fifty: the same shape
    sql = sql[:MAX_SQL]
    digest = hashlib.blake2b(sql.encode(), digest_size=6).hexdigest()
    return Fingerprint(digest, sql, operation(sql), table_of(sql))


@functools.lru_cache(maxsize=4096)
def cached(statement: str) -> Fingerprint:
    """:func:`fingerprint`, remembered for the most recent statement texts."""
    return fingerprint(statement)


def operation(sql: str) -> str:
    """select / insert / update / delete / other, from the statement's first keyword
    (a WITH … SELECT counts as select)."""
    head = sql.lstrip("( \n\t").split(None, 1)
    word = head[0].lower() if head else ""
    if word == "with":
        lowered = sql.lower()
        for op in _OPS:
            if f" {op} " in lowered:
                return op
    return word if word in _OPS else "other"


def table_of(sql: str) -> str:
    match = _TABLE.search(sql)
    if match is None:
        return ""
    return re.sub(r"[\"`\[\]]", "", match.group(1))
