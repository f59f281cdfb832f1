"""Values rendered from their type, never from the object's own repr; secret-looking
attribute names masked; the word list configurable."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

import pytest

from tracker.config import AgentConfig
from tracker.redact import DEFAULT_SECRET_WORDS, MASK, Redactor, name_words, render


class Colour(enum.Enum):
    RED = 1


class Sneaky(str):
    def __str__(self):  # pragma: no cover - must never be called
        raise AssertionError("rendered through __str__")

    __repr__ = __str__


class Loud:
    def __repr__(self):  # pragma: no cover - must never be called
        raise AssertionError("rendered through __repr__")


@pytest.mark.parametrize(("value", "text"), [
    (None, "None"), (True, "True"), (42, "42"), (2.5, "2.5"), ("hi", "'hi'"),
    (decimal.Decimal("10.50"), "10.50"),
    (datetime.datetime(2026, 11, 21, 3, 4, 5), "2026-11-21T03:04:05"),
    (datetime.date(2026, 1, 2), "2026-01-02"),
    (datetime.timedelta(seconds=90), "0:01:30"),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    (b"\x00\x01\x02", "<bytes of 3>"), ([1, 2], "<list of 2>"), ({"a": 1}, "<dict of 1>"),
    (Colour.RED, "Colour.RED"), (Loud(), "<Loud>"), (Sneaky("x"), "<Sneaky>"),
    (10**40, "<int of 133 bits>"),
])
def test_values_are_rendered_from_their_type(value, text):
    assert render(value) == text


def test_long_strings_are_truncated():
    assert render("x" * 500) == "'" + "x" * 120 + "'… (500 chars)"


@pytest.mark.parametrize(("name", "secret"), [
    ("password", True), ("password_hash", True), ("userPassword", True), ("api_key", True),
    ("apiKey", True), ("API_KEY", True), ("session_id", True), ("auth_token", True),
    ("card_number", True), ("ssn", True), ("refresh_token", True),
    ("name", False), ("author", False), ("keyboard", False), ("description", False),
    ("shipping", False), ("key", False),
])
def test_secret_names_are_matched_by_word(name, secret):
    assert Redactor().is_secret(name) is secret
    assert (Redactor().value(name, "v") == MASK) is secret


def test_name_words():
    assert name_words("userAPIKey2") == ["user", "api", "key", "2"]
    assert name_words("card_number") == ["card", "number"]


def test_secret_words_are_configurable():
    replaced = AgentConfig.load({}, {"RETORT_SECRET_WORDS": "salary, dob"})
    assert replaced.secret_words == ("salary", "dob")
    assert Redactor(replaced.secret_words).is_secret("password") is False
    extended = AgentConfig.load({}, {"RETORT_SECRET_WORDS": "+salary"})
    assert extended.secret_words == DEFAULT_SECRET_WORDS + ("salary",)
    redactor = Redactor(extended.secret_words)
    assert redactor.is_secret("base_salary") and redactor.is_secret("password")
