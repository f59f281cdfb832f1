import asyncio, pytest
from .test_live_consumer import live, ORIGIN, notify, session_cookie, groups  # noqa
pytestmark = pytest.mark.django_db(transaction=True)

@pytest.mark.parametrize("delay", [0, 0.2])
async def test_probe(stored, session_cookie, delay):
    c = live("/ws/live/overview/", ORIGIN, session_cookie)
    assert (await c.connect())[0]
    await asyncio.sleep(delay)
    await notify(groups.OVERVIEW)
    html = await c.receive_from(timeout=2)
    await c.disconnect()
