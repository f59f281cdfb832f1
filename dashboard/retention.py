"""Bounded tables: keep the newest rows of a group, delete the rest."""

from __future__ import annotations

from django.db.models import QuerySet


def keep_newest(rows: QuerySet, keep: int, newest_first: str) -> None:
    """Delete all but the ``keep`` newest of ``rows`` (ordered by the field
    ``newest_first``, descending, then by primary key)."""
    old = list(rows.order_by(f"-{newest_first}", "-pk").values_list("pk", flat=True)[keep:])
    if old:
        rows.model.objects.filter(pk__in=old).delete()
