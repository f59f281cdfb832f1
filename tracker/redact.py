"""Render application values for the dashboard without trusting them.

A value is rendered from its type, never by calling the object's ``__repr__`` or
``__str__`` (an application's repr can load attributes, emit SQL, or leak a secret):
scalars of known types are shown, truncated; anything else becomes ``<TypeName>``.
Attributes whose names look secret are masked whatever their value.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import re
import uuid
from typing import Any, Iterable, Sequence

#: Words that make an attribute name look secret (matched against the words of the
#: name: ``api_key``, ``apiKey`` and ``API-KEY`` all split into ``api``, ``key``).
DEFAULT_SECRET_WORDS: tuple[str, ...] = (
    "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "api_key",
    "auth", "authorization", "credential", "credentials", "session", "cookie", "card",
    "cvv", "cvc", "ssn", "pin", "iban", "private_key", "access_key", "salt", "otp",
)

MASK = "••••••"
NOT_LOADED = "(not loaded)"
#: Longest rendered string value (characters), before the ellipsis.
MAX_VALUE = 120
#: Most bind parameters (and executemany parameter sets) shown for one statement.
MAX_PARAMETERS = 50
MAX_PARAMETER_SETS = 3

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|$)|[A-Z]?[a-z]+|[0-9]+|[A-Z]+")


def name_words(name: str) -> list[str]:
    """The lowercase words of an identifier: ``apiKey`` → ``["api", "key"]``."""
    return [word.lower() for word in _WORDS.findall(name)]


class Redactor:
    """Decides which attribute names are secret and renders values safely."""

    def __init__(self, secret_words: Iterable[str] = DEFAULT_SECRET_WORDS) -> None:
        singles: set[str] = set()
        pairs: set[tuple[str, ...]] = set()
        for raw in secret_words:
            words = tuple(name_words(raw))
            if len(words) == 1:
                singles.add(words[0])
            elif words:
                pairs.add(words)
        self._singles = frozenset(singles)
        self._phrases = tuple(pairs)
        self._cache: dict[str, bool] = {}

    def is_secret(self, name: str) -> bool:
        """True if the attribute name contains a secret word (or phrase) as a word."""
        secret = self._cache.get(name)
        if secret is None:
            words = name_words(name)
            secret = any(word in self._singles for word in words) or any(
                _contains(words, phrase) for phrase in self._phrases)
            if len(self._cache) < 10_000:
                self._cache[name] = secret
        return secret

    def value(self, name: str, value: Any) -> str:
        """``value`` of attribute ``name`` as the dashboard may show it."""
        if self.is_secret(name):
            return MASK
        return render(value)

    def parameters(self, parameters: Any, names: Sequence[str] | None = None) -> Any:
        """A statement's bind parameters as the dashboard may show them: by name when
        the names are known (a dict, or ``names`` for a positional tuple), masked by
        the secret words; unnamed strings are masked (nothing says they are not
        secret). An executemany list shows its first sets only."""
        if isinstance(parameters, list):
            return [self.parameters(one, names) for one in parameters[:MAX_PARAMETER_SETS]]
        if isinstance(parameters, dict):
            return {str(key): self.value(str(key), value)
                    for key, value in list(parameters.items())[:MAX_PARAMETERS]}
        if isinstance(parameters, tuple):
            if names is not None and len(names) == len(parameters):
                return {name: self.value(name, value)
                        for name, value in list(zip(names, parameters))[:MAX_PARAMETERS]}
            return [MASK if isinstance(value, (str, bytes)) else render(value)
                    for value in parameters[:MAX_PARAMETERS]]
        return None


def _contains(words: list[str], phrase: tuple[str, ...]) -> bool:
    size = len(phrase)
    return any(tuple(words[i:i + size]) == phrase for i in range(len(words) - size + 1))


def render(value: Any) -> str:
    """A short, safe text for a value, decided by its exact type."""
    kind = type(value)
    if value is None or kind is bool:
        return str(value)
    if kind is int:
        text = str(value) if -10**30 < value < 10**30 else f"<int of {value.bit_length()} bits>"
        return text
    if kind is float:
        return repr(value)
    if kind is str:
        return _quote(value)
    if kind is decimal.Decimal:
        return _truncate(str(value))
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return value.isoformat()
    if kind is datetime.timedelta:
        return str(value)
    if kind is uuid.UUID:
        return str(value)
    if kind in (bytes, bytearray, memoryview):
        return f"<{kind.__name__} of {len(value)}>"
    if kind in (list, tuple, dict, set, frozenset):
        return f"<{kind.__name__} of {len(value)}>"
    if isinstance(value, enum.Enum):
        return f"{kind.__name__}.{value.name}"
    mapped = mapped_reference(value)
    if mapped is not None:
        return mapped
    # a str/int subclass could override __str__: only the type is shown
    return f"<{kind.__name__}>"


def mapped_reference(obj: Any) -> str | None:
    """``Class#identity`` for an ORM-mapped object (from its instance state, no attribute
    access), ``Class (new)`` for one without an identity yet; None if not mapped."""
    state = getattr(obj, "_sa_instance_state", None)
    if state is None or not hasattr(state, "key"):
        return None
    name = type(obj).__name__
    key = state.key
    if key is None:
        return f"{name} (new)"
    return f"{name}#{identity_text(key[1])}"


def identity_text(identity: tuple[Any, ...] | None) -> str:
    """A primary key tuple as text: ``42`` for one column, ``(1, 'x')`` for several."""
    if not identity:
        return ""
    if len(identity) == 1:
        return render(identity[0])
    return "(" + ", ".join(render(part) for part in identity) + ")"


def _quote(text: str) -> str:
    if len(text) > MAX_VALUE:
        return repr(text[:MAX_VALUE]) + f"… ({len(text)} chars)"
    return repr(text)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"
