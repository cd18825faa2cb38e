"""GET /config/stream: every new target version of an agent as an event on one connection."""

import asyncio
import json
import time

import pytest
from rest_framework.test import APIClient

from apps.agents.services import issue_registration_token, register_agent, revoke_agent
from apps.configs import front, watch
from apps.configs.actions import publish_config
from apps.configs.models import ConfigVersion
from tests.test_watch import call, closing_connection

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "http://upstream.example/task"
NEW_URL = "http://upstream.example/two"
PLAN = {"canary_labels": {"ring": "canary"}, "waves": [100], "bake_seconds": 600}


def content(version: int) -> dict:
    config = ConfigVersion.objects.get(version=version)
    return {
        "version": version,
        "pooling_interval": config.pooling_interval,
        "config_url": config.config_url,
        "uuid": str(config.uuid),
    }


def agent_with(labels: dict | None = None):
    token, _ = issue_registration_token(labels=labels)
    return register_agent(token=token)


def parse(chunk: bytes) -> list[dict]:
    """The events of a chunk; a comment line is {"comment": text}; `retry` alone is skipped."""
    events = []
    for block in chunk.decode().split("\n\n"):
        event: dict = {}
        for line in block.splitlines():
            field, _, value = line.partition(": ") if ": " in line else line.partition(":")
            if field == "":
                event["comment"] = value
            elif field in ("id", "event", "retry"):
                event[field] = value
            elif field == "data":
                event["data"] = json.loads(value)
        event.pop("retry", None)
        if event:
            events.append(event)
    return events


class Stream:
    """One GET /config/stream through the ASGI app, as a server would make it."""

    def __init__(self, app, token: str | None, last_event_id: str | None = None) -> None:
        headers = [(b"host", b"localhost")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        if last_event_id is not None:
            headers.append((b"last-event-id", last_event_id.encode()))
        self.scope = {
            "type": "http",
            "method": "GET",
            "path": "/config/stream",
            "query_string": b"",
            "headers": headers,
        }
        self.status: int | None = None
        self.headers: dict = {}
        self.body = b""
        self.closed = False
        self.events: asyncio.Queue = asyncio.Queue()
        self._requested = False
        self._hang_up = asyncio.Event()
        self.task = asyncio.ensure_future(app(self.scope, self._receive, self._send))

    async def _receive(self):
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._hang_up.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
            return
        self.body += message["body"]
        if self.status == 200:
            for event in parse(message["body"]):
                self.events.put_nowait(event)
        if not message.get("more_body", False):
            self.closed = True
            self.events.put_nowait(None)

    async def next(self, timeout: float = 5) -> dict | None:
        """The next event, or None when the stream ended."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def nothing_for(self, seconds: float) -> None:
        try:
            event = await asyncio.wait_for(self.events.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")

    async def hang_up(self) -> None:
        self._hang_up.set()
        await asyncio.wait_for(self.task, 5)


def scenario(body):
    """Run `body(app)` with a started endpoint, stopped afterwards."""

    async def run():
        app = front.WatchEndpoint(fallback=None)
        await app.hub.start()
        try:
            return await body(app)
        finally:
            await app.hub.stop()

    return asyncio.run(run())


async def in_thread(function, *args, **kwargs):
    return await asyncio.to_thread(closing_connection(function), *args, **kwargs)


def config_event(version: int) -> dict:
    return {"id": str(version), "event": "config", "data": content(version)}


def test_the_current_target_comes_first_then_each_change():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token)
        first = await stream.next()
        assert stream.status == 200
        assert stream.headers[b"content-type"] == b"text/event-stream"
        assert stream.headers[b"cache-control"] == b"no-store"
        assert stream.headers[b"x-accel-buffering"] == b"no"
        assert first == await in_thread(config_event, 1)

        started = time.monotonic()
        await in_thread(publish_config, config_url=NEW_URL, pooling_interval=40)
        second = await stream.next()
        assert time.monotonic() - started < 2
        assert second == await in_thread(config_event, 2)
        # The data are the very bytes a watch answers for the same target.
        payload, _ = watch.version_answer(*(second["data"][f] for f in watch.STATE_FIELDS))
        assert f"data: {payload.decode()}\n".encode() in stream.body
        await stream.hang_up()
        assert stream.closed

    scenario(body)


def test_last_event_id_of_the_current_target_sends_nothing_until_the_next_change():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token, last_event_id="1")
        await stream.nothing_for(1)
        assert stream.status == 200
        await in_thread(publish_config, config_url=NEW_URL, pooling_interval=30)
        assert await stream.next() == await in_thread(config_event, 2)
        await stream.hang_up()

    scenario(body)


def test_a_resumed_stream_gets_the_newest_version_at_once():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)
    publish_config(config_url=URL + "/2", pooling_interval=30)
    publish_config(config_url=URL + "/3", pooling_interval=30)

    async def body(app):
        # It missed versions 2 and 3 while disconnected: only the newest is due.
        stream = Stream(app, token, last_event_id="1")
        assert await stream.next(2) == await in_thread(config_event, 3)
        await stream.nothing_for(0.5)
        await stream.hang_up()

    scenario(body)


def test_an_idle_stream_sends_a_keep_alive_comment(monkeypatch):
    monkeypatch.setattr(watch, "KEEP_ALIVE_SECONDS", 0.2)
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token, last_event_id="1")
        assert await stream.next(2) == {"comment": "keep-alive"}
        assert await stream.next(2) == {"comment": "keep-alive"}
        # Still held: a change after the keep-alives arrives as ever.
        await in_thread(publish_config, config_url=NEW_URL, pooling_interval=30)
        assert (await stream.next())["id"] == "2"
        await stream.hang_up()

    scenario(body)


def test_during_a_staged_rollout_each_stream_gets_its_own_agents_target(admin_api):
    canary, canary_token = agent_with({"ring": "canary"})
    other, other_token = agent_with({"ring": "main"})
    publish_config(config_url=URL, pooling_interval=30)

    def start_rollout():
        with_plan = {"config_url": NEW_URL, "pooling_interval": 30, "rollout": PLAN}
        response = admin_api.post("/config/admin", with_plan, "json")
        assert response.status_code == 201, response.content

    def post(path: str):
        response = admin_api.post(path, {}, "json")
        assert response.status_code == 200, response.content

    async def body(app):
        canary_stream = Stream(app, canary_token)
        other_stream = Stream(app, other_token)
        assert (await canary_stream.next())["id"] == "1"
        assert (await other_stream.next())["id"] == "1"

        await in_thread(start_rollout)
        assert await canary_stream.next() == await in_thread(config_event, 2)
        # The other agent's wave has not started: its stream stays quiet.
        await other_stream.nothing_for(1)

        await in_thread(post, "/config/admin/rollout/promote")
        assert await other_stream.next() == await in_thread(config_event, 2)
        await canary_stream.nothing_for(0.5)

        # A rollback is a new version for everyone, with the previous content.
        response = await in_thread(admin_api.post, "/config/admin/rollback", {"version": 1}, "json")
        assert response.status_code in (200, 201), response.content
        rolled_back = await canary_stream.next()
        assert rolled_back == await in_thread(config_event, 3)
        assert rolled_back["data"]["config_url"] == URL
        assert await other_stream.next() == rolled_back
        await canary_stream.hang_up()
        await other_stream.hang_up()

    scenario(body)


def test_abort_sends_the_previous_content_to_the_canary_and_nothing_new_to_the_others(
    admin_api,
):
    canary, canary_token = agent_with({"ring": "canary"})
    other, other_token = agent_with({"ring": "main"})
    publish_config(config_url=URL, pooling_interval=30)

    def call(path: str, data: dict):
        response = admin_api.post(path, data, "json")
        assert response.status_code in (200, 201), response.content

    async def body(app):
        canary_stream = Stream(app, canary_token)
        other_stream = Stream(app, other_token)
        assert (await canary_stream.next())["id"] == "1"
        assert (await other_stream.next())["id"] == "1"
        with_plan = {"config_url": NEW_URL, "pooling_interval": 30, "rollout": PLAN}
        await in_thread(call, "/config/admin", with_plan)
        assert (await canary_stream.next())["id"] == "2"
        await in_thread(call, "/config/admin/rollout/abort", {"reason": "errors up"})
        # The abort publishes version 3 with version 1's content, to every agent.
        back = await canary_stream.next()
        assert back["id"] == "3"
        assert back["data"]["config_url"] == URL
        assert await other_stream.next() == back
        await canary_stream.hang_up()
        await other_stream.hang_up()

    scenario(body)


def test_revoking_the_agent_ends_its_stream():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token)
        assert (await stream.next())["id"] == "1"
        started = time.monotonic()
        await in_thread(revoke_agent, agent)
        assert await stream.next() == {
            "event": "revoked",
            "data": {"detail": "This agent has been revoked."},
        }
        assert await stream.next() is None
        assert time.monotonic() - started < 2
        await asyncio.wait_for(stream.task, 2)
        assert not app.hub.waiters
        # Reconnecting is refused.
        again = Stream(app, token)
        await asyncio.wait_for(again.task, 5)
        assert again.status == 401

    scenario(body)


def test_stopping_the_controller_ends_every_stream():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        streams = [Stream(app, token) for _ in range(3)]
        for stream in streams:
            assert (await stream.next())["id"] == "1"
        app.hub.release_all()
        for stream in streams:
            assert await stream.next(2) is None
            await asyncio.wait_for(stream.task, 2)
        assert not app.hub.waiters

    scenario(body)


def test_a_client_that_hangs_up_leaves_nothing_held():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token)
        assert (await stream.next())["id"] == "1"
        assert len(app.hub.waiters) == 1
        await stream.hang_up()
        assert not app.hub.waiters

    scenario(body)


@pytest.mark.parametrize("token", [None, "garbage", "agt_unknown"])
def test_a_stream_without_an_agent_token_is_401(token):
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token)
        await asyncio.wait_for(stream.task, 5)
        return stream

    stream = scenario(body)
    assert stream.status == 401
    assert stream.headers[b"www-authenticate"] == b'Bearer realm="agent"'
    assert "detail" in json.loads(stream.body)


@pytest.mark.parametrize("last_event_id", ["x", "-1", "1.5", "1234567890"])
def test_a_bad_last_event_id_is_400(last_event_id):
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        stream = Stream(app, token, last_event_id=last_event_id)
        await asyncio.wait_for(stream.task, 5)
        return stream

    stream = scenario(body)
    assert stream.status == 400
    assert json.loads(stream.body) == {"detail": "Last-Event-ID must be a version number."}


def test_through_django_the_events_due_now_are_answered_and_the_stream_ends():
    agent, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get("/config/stream", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-store"
    assert parse(response.content) == [config_event(1)]
    current = client.get("/config/stream", HTTP_LAST_EVENT_ID="1")
    assert (current.status_code, parse(current.content)) == (200, [])
    assert client.get("/config/stream", HTTP_LAST_EVENT_ID="x").status_code == 400
    assert APIClient().get("/config/stream").status_code == 401


def test_past_the_per_agent_cap_a_new_stream_or_watch_ends_the_agents_oldest(settings):
    settings.CONTROLLER_MAX_WATCHES_PER_AGENT = 2
    agent, token = agent_with()
    other, other_token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        # One after the other: the order in which they are held decides which is the oldest.
        first = Stream(app, token)
        assert (await first.next())["id"] == "1"
        second = Stream(app, token)
        assert (await second.next())["id"] == "1"
        theirs = Stream(app, other_token)
        assert (await theirs.next())["id"] == "1"
        # The third on the same token ends the first (a reconnect after a dropped connection
        # is never refused), and leaves the other agent's alone.
        third = Stream(app, token)
        assert (await third.next())["id"] == "1"
        assert (await first.next())["event"] == "replaced"
        assert await first.next() is None
        # A held long poll counts the same: it replaces the second stream.
        poll = asyncio.ensure_future(call(app, token, "version=1&wait=30"))
        assert (await second.next(5))["event"] == "replaced"
        # The oldest is then the third stream, and after it the poll, answered 429.
        fourth = Stream(app, token)
        assert (await fourth.next())["id"] == "1"
        assert (await third.next())["event"] == "replaced"
        assert not poll.done()
        fifth = Stream(app, token)
        assert (await fifth.next())["id"] == "1"
        status, answer, _ = await asyncio.wait_for(poll, 5)
        assert status == 429, answer
        assert "CONTROLLER_MAX_WATCHES_PER_AGENT" in answer["detail"]
        assert app.hub.held.count == 3
        assert len(app.hub.held.by_agent[str(agent.pk)]) == 2
        await theirs.nothing_for(0.2)
        for stream in (fourth, fifth, theirs):
            await stream.hang_up()
        assert app.hub.held.count == 0 and not app.hub.held.by_agent

    scenario(body)


def test_past_the_process_cap_a_new_stream_is_503_until_one_ends(settings):
    settings.CONTROLLER_MAX_WATCHES = 2
    _, token = agent_with()
    _, other_token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        first, second = Stream(app, token), Stream(app, other_token)
        for stream in (first, second):
            assert (await stream.next())["id"] == "1"
        refused = Stream(app, token)
        await asyncio.wait_for(refused.task, 5)
        assert refused.status == 503
        assert refused.headers[b"retry-after"] == b"5"
        await first.hang_up()
        again = Stream(app, token)
        assert (await again.next())["id"] == "1"
        await again.hang_up()
        await second.hang_up()
        assert app.hub.held.count == 0

    scenario(body)


def test_a_cap_of_zero_is_no_cap(settings):
    settings.CONTROLLER_MAX_WATCHES_PER_AGENT = 0
    _, token = agent_with()
    publish_config(config_url=URL, pooling_interval=30)

    async def body(app):
        streams = [Stream(app, token) for _ in range(6)]
        for stream in streams:
            assert (await stream.next())["id"] == "1"
        for stream in streams:
            await stream.nothing_for(0.05)
            await stream.hang_up()

    scenario(body)
