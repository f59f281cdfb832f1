"""Code locations where the stack does not lead to the application directly."""

from __future__ import annotations

import asyncio
import os

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

HERE = os.path.relpath(os.path.abspath(__file__))  # locations are shown relative to the cwd


def _line(marker: str) -> int:
    with open(HERE) as source:
        return next(n for n, text in enumerate(source, 1) if text.rstrip().endswith(marker))


async def _hold_with_core(engine, seen):
    async with engine.connect() as conn:  # marker: core
        await conn.execute(sa.text("select 1"))
        seen.set()
        await asyncio.sleep(0.2)


async def _hold_with_session(engine, seen):
    async with AsyncSession(engine) as session:
        await session.execute(sa.text("select 1"))  # marker: session
        seen.set()
        await asyncio.sleep(0.2)


def test_asyncio_checkouts_are_located_in_the_awaiting_coroutine(agent, tmp_path):
    # SQLAlchemy's asyncio extension checks out in a greenlet whose own stack is all
    # SQLAlchemy: the location is found on the coroutine side of the switch
    async def scenario(hold, name):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / name}")
        seen = asyncio.Event()
        task = asyncio.create_task(hold(engine, seen))
        await seen.wait()
        (state,) = [e for e in agent.snapshot()["engines"]
                    if e["gauges"]["checked_out"] == 1]
        await task
        await engine.dispose()
        return [h["stack"][:2] for h in state["holders"]]

    for hold, name, marker in [(_hold_with_core, "core.db", "# marker: core"),
                               (_hold_with_session, "session.db", "# marker: session")]:
        stacks = asyncio.run(scenario(hold, name))  # marker: run
        # the checkout's line, then the test's asyncio.run() line: no asyncio internals
        assert stacks == [[f"{HERE}:{_line(marker)} in {hold.__name__}",
                           f"{HERE}:{_line('# marker: run')} in test_asyncio_checkouts_"
                           f"are_located_in_the_awaiting_coroutine"]], stacks
