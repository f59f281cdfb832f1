"""Statement fingerprints: exact shapes for every folding rule (tracker/fingerprint.py)."""

from __future__ import annotations

import hashlib

import pytest

from tracker.fingerprint import fingerprint

CASES = [
    ("SELECT id, name FROM customer WHERE id = 1234",
     "SELECT id, name FROM customer WHERE id = ?", "select", "customer"),
    ("select *\n  from  t\twhere x = -5.5e3 and y = 'it''s  here' and z = 7",
     "select * from t where x = ? and y = ? and z = ?", "select", "t"),
    ("SELECT a FROM t WHERE b IN (?, ?, ?)", "SELECT a FROM t WHERE b IN (…)", "select", "t"),
    ("SELECT a FROM t WHERE b IN ( ?,\n ? )", "SELECT a FROM t WHERE b IN (…)", "select", "t"),
    ("SELECT a FROM t WHERE b in (1, 2, 3)", "SELECT a FROM t WHERE b IN (…)", "select", "t"),
    ("SELECT a FROM t WHERE b IN (__[POSTCOMPILE_b_1])",
     "SELECT a FROM t WHERE b IN (…)", "select", "t"),
    ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)",
     "INSERT INTO t (a, b) VALUES (?, ?)", "insert", "t"),
    ("INSERT INTO t (a, b) VALUES (1, 'x') , (2, 'y')",
     "INSERT INTO t (a, b) VALUES (?, ?)", "insert", "t"),
    ("insert into t values (%(a)s, %(b_1)s)", "insert into t values (?, ?)", "insert", "t"),
    ("UPDATE t SET a=%s WHERE id=%s", "UPDATE t SET a=? WHERE id=?", "update", "t"),
    ('DELETE FROM "Order" WHERE id = $1 AND k = :key_2',
     'DELETE FROM "Order" WHERE id = ? AND k = ?', "delete", "Order"),
    ("WITH x AS (SELECT 1) SELECT * FROM x JOIN y ON x.a = y.b",
     "WITH x AS (SELECT ?) SELECT * FROM x JOIN y ON x.a = y.b", "select", "x"),
    # unicode whitespace (no-break space inside a string, em space between words)
    ("SELECT t1.col2, 'a\u00a0b' FROM schema1.t1\u2003WHERE c = 3",
     "SELECT t1.col2, ? FROM schema1.t1 WHERE c = ?", "select", "schema1.t1"),
    ("  select 1  ", "select ?", "select", ""),
    ("SELECT a FROM t WHERE b = :b AND c = 'x:y' AND d = 10.5",
     "SELECT a FROM t WHERE b = ? AND c = ? AND d = ?", "select", "t"),
    ("SELECT `a` FROM `db`.`t` WHERE a = ?", "SELECT `a` FROM `db`.`t` WHERE a = ?",
     "select", "db.t"),
    ("values (1)", "values (?)", "other", ""),
    ("", "", "other", ""),
]


@pytest.mark.parametrize(("statement", "sql", "op", "table"), CASES)
def test_fingerprint_folds_values_placeholders_lists_and_rows(statement, sql, op, table):
    shape = fingerprint(statement)
    assert (shape.sql, shape.op, shape.table) == (sql, op, table)
    assert shape.fp == hashlib.blake2b(sql.encode(), digest_size=6).hexdigest()


def test_statements_with_their_values_written_in_share_one_shape():
    shapes = {fingerprint(f"SELECT name FROM customer WHERE id = {n} AND note = 'n{n}'")
              for n in range(50)}
    assert len(shapes) == 1
    assert shapes.pop().sql == "SELECT name FROM customer WHERE id = ? AND note = ?"
