"""The agent one cycle at a time, against the real controller (live_server) and real workers,
with the clock in the test's hands."""

import functools
import json
import stat
import threading
import time

import pytest

from agent.client import WorkerClient
from agent.daemon import AgentDaemon
from apps.agents.models import Agent as AgentRecord
from apps.agents.services import issue_registration_token, revoke_agent
from apps.configs.actions import publish_config, update_config
from apps.ops import metrics
from protocol.signing import sign
from tests.support.agent import (
    FakeClock,
    RecordingStop,
    write_cached_config,
    write_credentials,
)
from tests.support.processes import dead_port
from tests.support.worker import KEY, config_body


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def new_token(transactional_db):
    return lambda: issue_registration_token()[0]


@pytest.fixture
def make_agent(tmp_path, clock, live_server):
    made: list[AgentDaemon] = []

    def make(workers, *, state="state", token=None, controller=None, **options):
        agent = AgentDaemon(
            controller_url=controller or live_server.url,
            worker_urls=[worker.base_url for worker in workers],
            internal_key=KEY,
            state_dir=str(tmp_path / state),
            registration_token=token,
            clock=clock,
            rand=lambda: 1.0,
            connect_timeout=2,
            read_timeout=5,
            **options,
        )
        made.append(agent)
        return agent

    yield make
    # Open keep-alive connections would hold the live server's database connections.
    for agent in made:
        agent.close()


@pytest.fixture
def publish(upstream):
    def publish(path="/text", interval=30):
        config, _ = publish_config(config_url=upstream.url(path), pooling_interval=interval)
        return config

    return publish


@pytest.fixture
def agent_and_worker(make_agent, make_worker, new_token, publish):
    """The usual start of a cycle test: version 1 published with a 30 s period, and a new agent
    (not run yet) for one worker."""
    worker = make_worker()
    publish()
    return make_agent([worker], token=new_token()), worker


def check_in(agent, clock) -> float:
    """Seconds until the agent's next check of the controller. (run_once answers the earliest
    of all its due times, heartbeats included.)"""
    return agent.controller_due - clock()


def cached(tmp_path, state="state") -> dict:
    return json.loads((tmp_path / state / "config.json").read_text())


def test_first_start_registers_and_a_restart_reuses_the_stored_credentials(
    make_agent,
    make_worker,
    new_token,
    tmp_path,
):
    worker = make_worker()
    token = new_token()
    make_agent([worker], token=token).run_once()

    credentials_path = tmp_path / "state" / "credentials.json"
    assert stat.S_IMODE(credentials_path.stat().st_mode) == 0o600
    credentials = json.loads(credentials_path.read_text())
    record = AgentRecord.objects.get()
    assert credentials["agent_id"] == str(record.pk)
    assert token not in credentials_path.read_text()

    # Restarted with the used token still in its environment, and then with none at all.
    for again in (token, None):
        restarted = make_agent([worker], token=again)
        restarted.run_once()
        assert restarted.controller_enabled
        assert restarted.credentials["agent_id"] == str(record.pk)
    assert AgentRecord.objects.count() == 1


def test_each_cycle_reports_the_applied_version_and_the_workers(
    make_agent,
    make_worker,
    new_token,
    publish,
):
    worker = make_worker()
    publish()
    make_agent([worker], token=new_token()).run_once()

    record = AgentRecord.objects.get()
    assert record.applied_version == 1
    assert record.workers == [{"url": worker.base_url, "ok": True, "version": 1}]
    assert record.last_seen is not None


def test_no_push_while_the_version_is_unchanged(
    agent_and_worker,
    clock,
):
    agent, worker = agent_and_worker
    agent.run_once()
    assert worker.version() == 1
    assert worker.pushes == 1

    for _ in range(3):
        clock.advance(agent.next_delay())
        agent.run_once()
    assert worker.pushes == 1


def test_a_change_is_pushed_within_one_period(
    agent_and_worker,
    publish,
    clock,
    tmp_path,
):
    agent, worker = agent_and_worker
    # A change was seen: watch again at once, so that a second change is not held up.
    assert agent.run_once() == 0
    # This controller (WSGI) answers a watch at once: the agent then waits the whole period
    # rather than spin.
    assert agent.run_once() <= 30
    assert check_in(agent, clock) == 30

    publish(path="/text?v2", interval=30)
    clock.advance(30)
    agent.run_once()
    assert worker.version() == 2
    assert cached(tmp_path)["version"] == 2
    assert cached(tmp_path)["config_url"].endswith("/text?v2")


def test_a_new_pooling_interval_is_followed_without_restart(
    agent_and_worker,
    clock,
):
    agent, worker = agent_and_worker
    assert agent.run_once() == 0
    assert agent.run_once() <= 30
    assert check_in(agent, clock) == 30

    update_config(pooling_interval=45)
    clock.advance(30)
    assert agent.run_once() == 0
    assert agent.run_once() <= 45
    assert check_in(agent, clock) == 45
    assert worker.version() == 2
    clock.advance(20)
    assert check_in(agent, clock) == 25


def test_the_first_period_is_the_default_until_a_config_exists(
    make_agent,
    make_worker,
    new_token,
    clock,
):
    agent = make_agent([make_worker()], token=new_token(), default_interval=7)
    assert agent.run_once() <= 7
    assert check_in(agent, clock) == 7


def test_a_worker_that_was_down_gets_the_config_once_it_is_back(
    agent_and_worker,
    publish,
    clock,
    tmp_path,
):
    agent, worker = agent_and_worker
    agent.run_once()

    worker.stop()
    publish(path="/text?v2")
    clock.advance(30)
    # The change was seen (the controller is asked again at once); the worker's retry waits
    # for its own backoff delay.
    assert agent.run_once() == 0
    assert agent.config["version"] == 2
    assert agent.workers[0].due == clock() + 1.0
    # Nothing accepted v2 yet, so the agent's applied record still says v1.
    assert cached(tmp_path)["version"] == 1

    worker.start()
    clock.advance(1.0)
    agent.run_once()
    assert worker.version() == 2
    assert cached(tmp_path)["version"] == 2
    assert AgentRecord.objects.get().applied_version == 2


def test_a_worker_restarted_empty_is_repopulated_within_one_cycle(
    agent_and_worker,
    clock,
):
    agent, worker = agent_and_worker
    agent.run_once()

    worker.stop()
    worker.start()
    assert worker.version() is None
    clock.advance(agent.next_delay())
    agent.run_once()
    assert worker.version() == 1


def test_controller_down_workers_keep_serving_and_retries_back_off_to_the_cap(
    make_agent,
    make_worker,
    upstream,
    clock,
    tmp_path,
):
    worker = make_worker()
    write_credentials(tmp_path / "state")
    write_cached_config(tmp_path / "state", upstream.url("/text"), version=3)
    with dead_port() as port:
        agent = make_agent([worker], controller=f"http://127.0.0.1:{port}", backoff_cap=8)
        stop = RecordingStop(clock, limit=7)
        agent.run(stop)

    assert stop.waits == [1, 2, 4, 8, 8, 8, 8]
    assert worker.version() == 3
    hit = worker.hit()
    assert hit.status_code == 200
    assert hit.text == "203.0.113.7\n"
    assert worker.pushes == 1


def test_an_agent_restarted_while_the_controller_is_down_brings_up_an_empty_worker(
    make_agent,
    make_worker,
    new_token,
    publish,
    caplog,
):
    publish()
    make_agent([make_worker()], token=new_token()).run_once()

    empty = make_worker()
    with dead_port() as port:
        restarted = make_agent([empty], controller=f"http://127.0.0.1:{port}")
        restarted.run_once()
    assert empty.version() == 1
    assert empty.hit().text == "203.0.113.7\n"
    assert "controller unreachable" in caplog.text


def test_a_corrupt_config_cache_is_ignored_and_replaced(
    make_agent,
    make_worker,
    new_token,
    publish,
    tmp_path,
    caplog,
):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "config.json").write_text('{"version": 9, "config_url": ')
    worker = make_worker()
    publish()
    agent = make_agent([worker], token=new_token())
    agent.run_once()
    assert "ignoring cached config" in caplog.text
    assert worker.version() == 1
    assert cached(tmp_path)["version"] == 1


def test_a_revoked_agent_keeps_serving_its_cache_and_says_what_to_do(
    agent_and_worker,
    publish,
    clock,
    caplog,
):
    agent, worker = agent_and_worker
    agent.run_once()
    agent_token = agent.credentials["agent_token"]

    revoke_agent(AgentRecord.objects.get())
    publish(path="/text?v2")
    clock.advance(30)
    agent.run_once()
    agent.run_once()
    assert "refused the token of agent" in caplog.text
    assert "issue a registration token" in caplog.text
    assert not agent.controller_enabled
    assert worker.version() == 1

    # The worker restarting empty is still brought up from the cache.
    worker.stop()
    worker.start()
    clock.advance(agent.next_delay())
    agent.run_once()
    assert worker.version() == 1
    assert agent_token not in caplog.text


def test_a_revoked_agent_with_a_fresh_registration_token_registers_again(
    make_agent,
    make_worker,
    new_token,
    publish,
):
    worker = make_worker()
    publish()
    make_agent([worker], token=new_token()).run_once()
    old = AgentRecord.objects.get()
    revoke_agent(old)

    publish(path="/text?v2")
    restarted = make_agent([worker], token=new_token())
    restarted.run_once()
    assert restarted.controller_enabled
    assert restarted.credentials["agent_id"] != str(old.pk)
    assert worker.version() == 2
    assert AgentRecord.objects.exclude(pk=old.pk).get().applied_version == 2


def test_two_agents_with_two_workers_converge_on_the_same_version(
    make_agent,
    make_worker,
    new_token,
    publish,
    clock,
):
    workers = [make_worker(), make_worker()]
    agents = [make_agent(workers, state=name, token=new_token()) for name in ("a", "b")]
    publish()
    for agent in agents:
        agent.run_once()
    publish(path="/text?v2")
    clock.advance(30)
    for agent in agents:
        agent.run_once()

    assert [worker.version() for worker in workers] == [2, 2]
    assert sorted(AgentRecord.objects.values_list("applied_version", flat=True)) == [2, 2]


def test_a_second_change_right_after_the_first_is_not_held_up(
    make_agent,
    make_worker,
    new_token,
    publish,
    clock,
):
    worker = make_worker()
    publish(interval=300)
    agent = make_agent([worker], token=new_token())
    assert agent.run_once() == 0
    publish(path="/text?v2", interval=300)
    # No time passes: the agent asks again at once after a change, and finds the second one.
    assert agent.run_once() == 0
    assert worker.version() == 2


def count_health_checks(agent) -> list:
    """The GET /health requests the agent sends its first worker from now on."""
    client = agent.workers[0].client
    checked, health = [], client.health

    def counted():
        checked.append(client.url)
        return health()

    client.health = counted
    return checked


def test_a_new_version_reaches_a_worker_known_behind_in_one_request(
    agent_and_worker,
    publish,
    clock,
):
    agent, worker = agent_and_worker
    agent.run_once()
    assert worker.version() == 1
    checked = count_health_checks(agent)

    publish(path="/text?v2", interval=30)
    clock.advance(30)
    agent.run_once()
    # It should push v2 without asking the worker first: it answered holding v1 last time.
    assert worker.version() == 2
    assert worker.pushes == 2
    assert checked == []


def test_a_push_refused_as_older_is_not_repeated(
    make_agent,
    make_worker,
    new_token,
    publish,
    clock,
):
    worker = make_worker()
    publish()
    first, second = (make_agent([worker], state=name, token=new_token()) for name in "ab")
    first.run_once()
    second.run_once()
    publish(path="/text?v2")
    second.check_controller(threading.Event())
    publish(path="/text?v3")
    first.run_once()
    assert worker.version() == 3

    # The second agent still thinks the worker holds v1 and pushes its v2, which is refused.
    second.sync_workers()
    assert worker.version() == 3
    assert worker.pushes == 3
    # It should have learnt that the worker holds v3, and push nothing more.
    assert second.workers[0].version == 3
    second.sync_workers()
    assert worker.pushes == 3


def test_two_agents_pushing_the_same_config_in_the_same_second_both_succeed(
    make_worker, monkeypatch
):
    worker = make_worker()
    # Both agents of the worker sign within the same second: the same bytes, the same signature.
    now = time.time()
    monkeypatch.setattr("agent.client.sign", functools.partial(sign, now=now))
    config = config_body(version=2)
    first, second = (WorkerClient(worker.base_url, KEY) for _ in range(2))
    assert first.push(config) is True
    # The worker refuses the second as a replay; the agent knows the worker has these bytes.
    assert second.push(config) is True
    assert worker.version() == 2


def test_the_agent_registers_with_its_labels_when_its_token_allows_them(
    make_agent, make_worker, new_token, publish, clock
):
    worker = make_worker()
    publish()
    token = issue_registration_token(allow_agent_labels=True)[0]
    make_agent([worker], token=token, labels={"ring": "canary"}).run_once()
    record = AgentRecord.objects.get()
    assert record.labels == {"ring": "canary"}
    ignored = metrics.instruments().heartbeat_labels_ignored._value.get()

    # Restarted with other labels, on its stored credentials: its heartbeats still carry them,
    # and they change nothing (only an operator changes an agent's labels); they are counted.
    restarted = make_agent([worker], labels={"ring": "main", "zone": "eu-1"})
    restarted.run_once()
    record.refresh_from_db()
    assert record.labels == {"ring": "canary"}
    assert AgentRecord.objects.count() == 1
    assert metrics.instruments().heartbeat_labels_ignored._value.get() > ignored


def test_an_agent_with_labels_registers_with_a_plain_token_without_them(
    make_agent, make_worker, new_token, publish, clock, caplog
):
    worker = make_worker()
    publish()
    agent = make_agent([worker], token=new_token(), labels={"ring": "canary"})
    with caplog.at_level("WARNING", logger="agent.daemon"):
        agent.run_once()
    record = AgentRecord.objects.get()
    assert record.labels == {}
    assert worker.version() == 1
    # It says so, rather than believing it is a canary.
    assert any("its registration token decides them" in r.getMessage() for r in caplog.records)


def test_after_an_outage_the_first_watch_is_short_so_that_heartbeats_resume(
    make_agent, make_worker, new_token, publish
):
    publish(interval=30)
    agent = make_agent([make_worker()], token=new_token())
    agent.run_once()
    assert agent.config["version"] == 1
    # What a controller outage leaves behind: heartbeats wait for the controller to answer.
    agent.controller_backoff.failures = 3
    assert not agent.heartbeats_on()

    started = time.monotonic()
    assert agent.check_controller(threading.Event())

    # The agent is up to date, yet it did not hold a 30 s watch before reporting again.
    assert agent.last_wait == 1
    assert time.monotonic() - started < 10
    assert agent.heartbeats_on()
