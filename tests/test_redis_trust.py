"""What the controller reads back from Redis is only what a holder of SECRET_KEY wrote there:
cache values are sealed JSON (never pickles), and notifications without a valid seal change
nothing that an agent receives."""

import asyncio
import json
import logging
import os
import pickle
import time
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.utils.crypto import salted_hmac

from apps.agents.models import Agent
from apps.configs import hub as hub_module
from apps.configs.actions import publish_config
from apps.configs.services import get_current_state, state_key
from apps.ops import sealed as sealed_module
from apps.ops.metrics import instruments
from apps.ops.sealed import SealedJSONSerializer, seal_message
from apps.scopes.services import default_scope_id

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"
AGENT_ID = "00000000-0000-0000-0000-000000000001"


class Planted:
    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.system, (f"touch {self.proof}",))


def redis_client():
    return cache.client.get_client(write=True)


@pytest.mark.redis
def test_a_pickle_planted_in_the_cache_is_not_run_and_reads_as_a_miss(tmp_path, caplog):
    config, _ = publish_config(config_url=URL, pooling_interval=30)
    proof = tmp_path / "ran"
    redis_client().set(
        cache.make_key(state_key(default_scope_id())), pickle.dumps(Planted(str(proof)))
    )

    with caplog.at_level(logging.WARNING, logger="apps.ops.sealed"):
        state = get_current_state(default_scope_id())

    # It should not run the pickle, and should answer from the database as on a miss.
    assert not proof.exists()
    assert state["version"] == config.version and state["config_url"] == URL
    assert "not sealed with this SECRET_KEY" in caplog.text


@pytest.mark.redis
def test_a_state_planted_as_plain_json_or_a_number_is_a_miss():
    publish_config(config_url=URL, pooling_interval=30)
    key = cache.make_key(state_key(default_scope_id()))
    forged = {"version": 1004, "pooling_interval": 30, "config_url": "https://attacker.example/"}
    for planted in (json.dumps({**forged, "uuid": "u", "revision": 0, "rollout": None}), "42"):
        redis_client().set(key, planted)

        assert get_current_state(default_scope_id())["config_url"] == URL


def test_every_value_the_controller_caches_comes_back_as_it_went(settings, monkeypatch):
    serializer = SealedJSONSerializer(options={})
    split_state = {
        "version": 3,
        "pooling_interval": 30,
        "config_url": URL,
        "uuid": "6f1c1d2e-8c3a-4e5b-9f00-123456789abc",
        "revision": 2,
        "rollout": {
            "previous": {"version": 2, "pooling_interval": 30, "config_url": URL, "uuid": "u2"},
            "canary_labels": {"ring": "canary"},
            "cutoff": "8" * 64,
        },
    }
    preflight_request = {"config_url": URL, "agents": [AGENT_ID]}
    preflight_result = {
        "worker_url": "http://w:8082",
        "status": 200,
        "elapsed_ms": 1.5,
        "error": None,
    }
    for value in (split_state, preflight_request, preflight_result):
        assert serializer.loads(serializer.dumps(value)) == value
    # The seal is Django's salted HMAC, keyed from SECRET_KEY.
    mac, _, payload = serializer.dumps(split_state).partition(b":")
    expected = salted_hmac(sealed_module.CACHE_SALT, payload, algorithm="sha256").hexdigest()
    assert mac == expected.encode()
    # Sealed with another SECRET_KEY, or copied out of Redis and written back much later: a miss.
    sealed = serializer.dumps(split_state)
    settings.SECRET_KEY = "another-" + settings.SECRET_KEY
    assert serializer.loads(sealed) is None
    settings.SECRET_KEY = settings.SECRET_KEY.removeprefix("another-")
    assert serializer.loads(sealed) == split_state
    monkeypatch.setattr(sealed_module, "time", SimpleNamespace(time=lambda: time.time() - 3600))
    written_long_ago = serializer.dumps(split_state)
    monkeypatch.undo()
    assert serializer.loads(written_long_ago) is None


def hub_with_a_waiter():
    hub = hub_module.Hub()
    hub.advance({"version": 1, "pooling_interval": 30, "config_url": URL, "uuid": "u1", "scope": 1})
    waiter = hub_module.Waiter(1, asyncio.get_running_loop().create_future())
    hub.subscribe(waiter)
    hub.place(waiter, Agent(pk=AGENT_ID, scope_id=1, labels={}))
    return hub, waiter


def test_the_hub_refuses_unsealed_messages_of_every_type(caplog):
    forged = [
        {"type": "config", "version": 1004, "pooling_interval": 30, "config_url": "https://x/"},
        {"type": "config", "version": 1005, "config_url": "https://x/", "mac": "0" * 64},
        {"type": "config", "version": 1006, "config_url": "https://x/", "scope": 1},
        {
            "type": "preflight",
            "id": "f" * 32,
            "config_url": "https://x/",
            "timeout_seconds": 10,
            "agent_ids": [AGENT_ID],
            "expires_at": time.time() + 60,
        },
        {"type": "revoked", "agent_id": AGENT_ID},
    ]
    refused = instruments().notifications_refused
    before = refused._value.get()

    async def scenario():
        hub, waiter = hub_with_a_waiter()
        with caplog.at_level(logging.WARNING, logger="apps.configs.hub"):
            for message in forged:
                hub._deliver_raw(json.dumps(message).encode())
            hub._deliver_raw(b"not json")
        # It should wake nobody, keep its state, keep no pre-flight, and ask for a re-read.
        assert not waiter.future.done()
        assert hub.latest_of(1)["version"] == 1 and hub.latest_of(1)["config_url"] == URL
        assert hub.take_preflight(AGENT_ID) is None and not hub.revoked
        assert hub.recheck_requested

    asyncio.run(scenario())
    assert refused._value.get() - before == len(forged) + 1
    assert "without a valid seal" in caplog.text
    assert len(caplog.records) == 1  # one line for the burst, with its count


def test_the_hub_acts_on_sealed_messages_and_not_on_an_expired_preflight():
    async def scenario():
        hub, waiter = hub_with_a_waiter()
        expired = {
            "type": "preflight",
            "id": "e" * 32,
            "config_url": URL,
            "timeout_seconds": 10,
            "agent_ids": [AGENT_ID],
            "expires_at": time.time() - 1,
        }
        hub._deliver_raw(seal_message(expired).encode())
        assert not waiter.future.done()
        two = {"type": "config", "version": 2, "pooling_interval": 30, "config_url": URL}
        hub._deliver_raw(seal_message({**two, "uuid": "u2", "revision": 0, "scope": 1}).encode())
        outcome, answer = waiter.future.result()
        assert outcome == "changed" and answer["version"] == 2
        assert not hub.recheck_requested

    asyncio.run(scenario())
