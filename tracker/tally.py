"""Tallies: the hot hooks' durations, appended straight to per-engine lists.

A checkout's wait, a checkin's hold time and a statement's duration are the three
things recorded for almost every operation. Handing each to the worker as a queued
tuple costs a tuple per event and, in the worker, a dispatch and a few dozen
bytecodes per tuple, and the worker's time is the application's too (one GIL). So
the hooks append the bare duration to a list of the engine's :class:`Tally` instead,
and the worker takes each list whole once per round (:func:`take`) and counts it
with a sort and a C bisect per histogram bucket (:func:`tracker.stats.count_into`).

Thread safety rests on two atomic list operations under the GIL: application threads
only ``append``; the worker only reads a length, copies that prefix and deletes it.
Appends land after the prefix, so none is lost or counted twice, however the threads
interleave. The lists never change identity, so a hook may keep one in a closure.

Bounds: a list the worker has not emptied (it is busy, or stopped) stops taking
values at its cap, and the hook falls back to the bounded queue, whose drops are
counted. A statement text gets its tally only once the worker has seen it through the
queue (its first sight is recorded there, with its code location), only while the
engine's statements are recorded unsampled, and for at most MAX_TEXTS texts per
engine; the others keep going through the queue.
"""

from __future__ import annotations

from typing import Any

#: Values a checkout or checkin list holds before hooks fall back to the queue (a
#: round's worth at 65,000 a second: the worker takes the lists every 0.25 s).
EVENTS_CAP = 16_384
#: Durations a statement text's list holds before hooks fall back to the queue.
TEXT_CAP = 8_192
#: Statement texts per engine with a tally of their own (the first ones the worker
#: sees; the rest use the queue). With the caps, an engine's tallies hold at most
#: about 5 MB (32 bytes a duration) while the worker is stopped.
MAX_TEXTS = 16


class TextTally:
    """One statement text's durations and reported rows since the worker's last
    round (``rows`` only gets the counts a driver reported, i.e. above zero)."""

    __slots__ = ("text", "durations", "rows")

    def __init__(self, text: str) -> None:
        self.text = text
        self.durations: list[float] = []
        self.rows: list[int] = []


class Tally:
    """One engine's tallies. ``texts`` is read by application threads and replaced
    whole by the worker, never changed in place while published (a reader holding
    the previous dict still appends to tallies the worker keeps draining)."""

    __slots__ = ("waits", "holds", "texts", "all_texts")

    def __init__(self) -> None:
        #: a checkout's wait for its connection, each (the checkout itself)
        self.waits: list[float] = []
        #: a checkin's hold time, each (a checkout the agent saw)
        self.holds: list[float] = []
        #: statement text -> its tally (published to the hooks)
        self.texts: dict[str, TextTally] = {}
        #: every text tally the worker made, published or not (worker-only); kept
        #: for the engine's life, so a hook still holding an unpublished one loses
        #: nothing
        self.all_texts: dict[str, TextTally] = {}

    def add_text(self, text: str) -> None:
        """Give ``text`` a tally of its own, if it has none and there is room
        (worker only)."""
        if text in self.texts:
            return
        tally = self.all_texts.get(text)
        if tally is None:
            if len(self.all_texts) >= MAX_TEXTS:
                return
            tally = self.all_texts[text] = TextTally(text)
        self.texts = {**self.texts, text: tally}

    def unpublish(self) -> None:
        """The engine's statements are switched off or sampled: hooks stop using the
        text tallies (what they hold is still taken by the worker)."""
        if self.texts:
            self.texts = {}

    def pending(self) -> bool:
        """Anything appended and not taken yet."""
        return bool(self.waits or self.holds or any(
            tally.durations or tally.rows for tally in list(self.all_texts.values())))

    def clear(self) -> None:
        """Forget what is pending (a forked child: its parent's figures)."""
        for values in (self.waits, self.holds):
            del values[:]
        for tally in list(self.all_texts.values()):
            del tally.durations[:]
            del tally.rows[:]


def take(values: list[Any]) -> list[Any]:
    """The values appended so far, removed from ``values`` (worker only; see the
    module's note on why this is safe while application threads append)."""
    n = len(values)
    if not n:
        return []
    taken = values[:n]
    del values[:n]
    return taken
