"""The pool timeline as an inline SVG: no JavaScript charting, works offline, and
small enough to be re-sent on every live update."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD = 720, 170, 24


def _points(values: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in values)


def pool_timeline(samples: Iterable, *, start: datetime, end: datetime,
                  size: int | None, capacity: int | None) -> SafeString:
    """Stacked areas (checked out, idle) with overflow and waiting lines; dashed
    lines at the pool size and capacity."""
    rows = list(samples)
    span = max((end - start).total_seconds(), 1.0)
    top = max([capacity or 0, size or 0, 1]
              + [r.checked_out + (r.idle or 0) for r in rows] + [r.waiting for r in rows])
    plot_w, plot_h = WIDTH - PAD * 2, HEIGHT - PAD * 2

    def x(at: datetime) -> float:
        return PAD + plot_w * (at - start).total_seconds() / span

    def y(value: float) -> float:
        return PAD + plot_h - plot_h * value / top

    base = y(0)
    # Everything interpolated below is a number or a fixed word: nothing to escape.
    parts = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="pool usage over the last {int(span)} seconds">',
             f'<line class="axis" x1="{PAD}" y1="{base:.1f}" x2="{WIDTH - PAD}" y2="{base:.1f}"/>']
    limits = [("capacity", capacity)] if capacity == size else [("size", size),
                                                                 ("capacity", capacity)]
    for label, value in limits:
        if value:
            parts.append(
                f'<line class="limit {label}" x1="{PAD}" y1="{y(value):.1f}" '
                f'x2="{WIDTH - PAD}" y2="{y(value):.1f}"/>'
                # size labelled at the left, capacity at the right: never on each other
                f'<text class="limit-label" x="{PAD + 4 if label == "size" else WIDTH - PAD - 70}"'
                f' y="{y(value) - 3:.1f}">{label} {int(value)}</text>')
    if rows:
        out = [(x(r.at), y(r.checked_out)) for r in rows]
        used = [(x(r.at), y(r.checked_out + (r.idle or 0))) for r in rows]
        first, last = out[0][0], out[-1][0]
        parts.append(f'<polygon class="area idle" points="{first:.1f},{base:.1f} '
                     f'{_points(used)} {last:.1f},{base:.1f}"/>')
        parts.append(f'<polygon class="area checked-out" points="{first:.1f},{base:.1f} '
                     f'{_points(out)} {last:.1f},{base:.1f}"/>')
        if any(r.overflow for r in rows):
            overflow = _points([(x(r.at), y(r.overflow or 0)) for r in rows])
            parts.append(f'<polyline class="line overflow" points="{overflow}"/>')
        if any(r.waiting for r in rows):
            waiting = _points([(x(r.at), y(r.waiting)) for r in rows])
            parts.append(f'<polyline class="line waiting" points="{waiting}"/>')
    else:
        parts.append(f'<text class="empty" x="{WIDTH / 2 - 40:.0f}" y="{HEIGHT / 2:.0f}">'
                     'no samples yet</text>')
    parts.append(f'<text class="tick" x="{PAD}" y="{HEIGHT - 6}">-{int(span)}s</text>'
                 f'<text class="tick" x="{WIDTH - PAD - 20}" y="{HEIGHT - 6}">now</text>'
                 f'<text class="tick" x="2" y="{y(top) + 4:.1f}">{int(top)}</text></svg>')
    return mark_safe("".join(parts))
