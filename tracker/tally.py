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

A text's durations and rows are C arrays (8 bytes a value, no object kept per value),
so an application's hundreds of texts fit in a few MB. A text's arrays take at most
its ``cap`` values between two rounds: the first FIRST_TEXTS texts of an engine (an
application's busiest usually come first) start at TEXT_CAP_FIRST, the others at
TEXT_CAP; the worker raises the cap of a text that ran more than half of it in a round
(tally and queue together) to twice that count, up to TEXT_CAP_FIRST, while the sum of
an engine's caps stays within TEXT_BUDGET: at most 2 x 8 x TEXT_BUDGET bytes (4 MB)
per engine, with the worker stopped.
"""

from __future__ import annotations

from array import array
from typing import Any

#: Values a checkout or checkin list holds before hooks fall back to the queue (a
#: round's worth at 65,000 a second: the worker takes the lists every 0.25 s).
EVENTS_CAP = 16_384
#: The cap of each of an engine's first FIRST_TEXTS texts, and the most any text's
#: cap is raised to: 32,000 a second, at a round every 0.25 s.
TEXT_CAP_FIRST = 8_192
FIRST_TEXTS = 16
#: The first cap of the later texts: 2,000 a second.
TEXT_CAP = 512
#: The sum of an engine's text caps (the first 16 and 240 more at their first caps
#: take 254,000 of it).
TEXT_BUDGET = 262_144
#: Statement texts per engine with a tally of their own (the first ones the worker
#: sees run twice; the rest use the queue).
MAX_TEXTS = 256
#: Texts remembered as run once, per engine (forgotten all together beyond it).
SEEN_ONCE_BOUND = 4_096


class TextTally:
    """One statement text's durations and reported rows since the worker's last
    round (``rows`` only gets the counts a driver reported, i.e. above zero). Hooks
    append while ``len(durations) < cap``; only the worker changes ``cap``."""

    __slots__ = ("text", "durations", "rows", "cap")

    def __init__(self, text: str, cap: int = TEXT_CAP_FIRST) -> None:
        self.text = text
        self.durations = array("d")
        self.rows = array("q")
        self.cap = cap


class Tally:
    """One engine's tallies. ``texts`` is read by application threads and replaced
    whole by the worker, never changed in place while published (a reader holding
    the previous dict still appends to tallies the worker keeps draining)."""

    __slots__ = ("waits", "holds", "texts", "all_texts", "caps", "seen_once")

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
        #: the sum of the texts' caps (worker-only), within TEXT_BUDGET
        self.caps = 0
        #: texts the worker has seen run once, through the queue (worker-only)
        self.seen_once: set[str] = set()

    def recurs(self, text: str, runs: int) -> bool:
        """Whether ``text``, run ``runs`` times through the queue in the worker's
        round, has run before (or had a tally): only such a text is given a tally, so
        that texts run once (values written into the SQL) do not take the engine's
        MAX_TEXTS (worker only)."""
        if runs > 1 or text in self.all_texts:
            return True
        seen = self.seen_once
        if text in seen:
            return True
        if len(seen) >= SEEN_ONCE_BOUND:
            seen.clear()
        seen.add(text)
        return False

    def add_text(self, text: str) -> None:
        """Give ``text`` a tally of its own, if it has none and there is room
        (worker only)."""
        if text in self.texts:
            return
        tally = self.all_texts.get(text)
        if tally is None:
            cap = TEXT_CAP_FIRST if len(self.all_texts) < FIRST_TEXTS else TEXT_CAP
            if len(self.all_texts) >= MAX_TEXTS or self.caps + cap > TEXT_BUDGET:
                return
            tally = self.all_texts[text] = TextTally(text, cap)
            self.caps += cap
        self.texts = {**self.texts, text: tally}

    def grow(self, tally: TextTally, ran: int) -> None:
        """The text of ``tally`` ran ``ran`` times in the worker's last round (through
        its tally and the queue): raise its cap to twice that if it ran more than half
        of it, up to TEXT_CAP_FIRST, within the budget (worker only)."""
        cap = tally.cap
        if ran * 2 <= cap or cap >= TEXT_CAP_FIRST:
            return
        wanted = cap
        while wanted < ran * 2 and wanted < TEXT_CAP_FIRST:
            wanted *= 2
        wanted = min(wanted, cap + TEXT_BUDGET - self.caps)
        if wanted > cap:
            self.caps += wanted - cap
            tally.cap = wanted

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


def take(values: "list[Any] | array[Any]") -> list[Any]:
    """The values appended so far, removed from ``values`` (a list or an array), as a
    list (worker only; see the module's note on why this is safe while application
    threads append)."""
    n = len(values)
    if not n:
        return []
    taken = values[:n]
    del values[:n]
    return taken if type(taken) is list else taken.tolist()
