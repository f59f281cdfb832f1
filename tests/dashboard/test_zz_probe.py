import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from dashboard.asgi import application
from dashboard.models import App, AgentToken, Process
from tracker import protocol
import time

@pytest.mark.django_db(transaction=True)
async def test_probe():
    app = await sync_to_async(App.objects.create)(name="shop")
    tok, raw = await sync_to_async(AgentToken.issue)(app, "t")
    c = WebsocketCommunicator(application, "/ws/agent/", headers=[(b"authorization", b"Bearer " + raw.encode())])
    print(await c.connect())
    hello = {"t": "hello", "app": "shop", "process": {"host": "h", "pid": 1, "started": 1e20, "argv": [], "python": "3", "sqlalchemy": "2", "agent": "0"}, "engines": []}
    await c.send_to(bytes_data=protocol.encode(hello))
    try:
        print(await c.receive_output())
    except BaseException as e:
        print("EXC", type(e), e)
    await c.disconnect()
