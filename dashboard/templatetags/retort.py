"""Formatting filters for durations, times of day, counts and drop reasons."""

from __future__ import annotations

import json
from datetime import datetime, timezone as dt_timezone

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """A duration in the most readable unit: 850 µs, 12.5 ms, 3.20 s, 4 min 05 s."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "–"  # not measured yet (no state received), or absent
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


@register.filter
def drops_title(drops: dict | None) -> str:
    """'queue_full: 3, disconnected: 12' (or 'nothing dropped')."""
    if not drops:
        return "nothing dropped"
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(drops.items()))


@register.filter
def words(identifier: str) -> str:
    """'checkout_timeout' → 'checkout timeout'."""
    return str(identifier).replace("_", " ")


@register.filter
def clock(moment: datetime | None) -> str:
    """A time of day to the millisecond, UTC: '00:01:40.250' ('–' if none)."""
    if not isinstance(moment, datetime):
        return "–"
    return moment.astimezone(dt_timezone.utc).strftime("%H:%M:%S.%f")[:-3]


@register.filter
def lines(items: list | None) -> str:
    """A list as text, one item per line (for a stack in a title attribute)."""
    return "\n".join(str(item) for item in items or ())


@register.filter
def compact_json(value) -> str:
    """Free JSON (bind parameters…) on one line: {"id": 7, "name": "x"}."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def ago(seconds: float | None) -> str:
    """How long ago, from seconds: 'just now' under a second, else '3.20 s ago'."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "–"
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"
