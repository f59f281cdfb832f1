"""A FastAPI application on an async engine (SQLite through aiosqlite) with
AsyncSession, one session per request.

    E2E_FASTAPI_DB   the SQLite file (tables created by init_db())

    POST /items?name=…        add an item
    GET  /items               the items
    GET  /items/{id}          one item (404 if there is none)
    POST /hold?seconds=s      add an item in a transaction kept open for s seconds

It knows nothing of the agent.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

engine = create_async_engine(f"sqlite+aiosqlite:///{os.environ['E2E_FASTAPI_DB']}",
                             pool_size=3, max_overflow=2)
Sessions = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


async def session():
    async with Sessions() as s:
        yield s


app = FastAPI()


@app.post("/items", status_code=201)
async def add_item(name: str, db: AsyncSession = Depends(session)):
    item = Item(name=name)
    db.add(item)
    await db.commit()
    return {"id": item.id, "name": item.name}


@app.get("/items")
async def list_items(db: AsyncSession = Depends(session)):
    items = (await db.scalars(select(Item).order_by(Item.id))).all()
    return [{"id": i.id, "name": i.name} for i in items]


@app.get("/items/{item_id}")
async def get_item(item_id: int, db: AsyncSession = Depends(session)):
    item = await db.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "no such item")
    return {"id": item.id, "name": item.name}


@app.post("/hold", status_code=201)
async def hold(seconds: float, name: str = "held", db: AsyncSession = Depends(session)):
    item = Item(name=name)
    db.add(item)
    await db.flush()          # the transaction is open and holds a connection
    await asyncio.sleep(seconds)
    await db.commit()
    return {"id": item.id, "name": item.name}


async def _create_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


def init_db() -> None:
    asyncio.run(_create_tables())


if __name__ == "__main__":
    init_db()
