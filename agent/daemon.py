"""The agent: keeps its workers on the controller's current config.

The loop follows the shape of a sendalerts-style daemon: `run(stop)` repeats `run_once()`, whose
steps each do one thing (ask the controller, bring the workers in step, report), and sleeps with
`stop.wait()` so that SIGTERM is honoured at once. Every target (the controller and each worker)
has its own backoff and its own due time; the loop sleeps until the earliest one. The steps
that talk to the workers are in workers.py.
"""

import collections
import hashlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable

from agent.backoff import Backoff
from agent.client import (
    MAX_WATCH_WAIT,
    ControllerClient,
    ControllerUnavailable,
    NoConfigServed,
    TokenRefused,
    WatchNotSupported,
    WorkerClient,
)
from agent.state import StateDir
from agent.workers import WorkerState, WorkerSync, hits_since
from protocol.config import CONFIG_FIELDS, valid_config

logger = logging.getLogger("agent")

# How often a held watch request looks at the stop flag.
STOP_POLL_SECONDS = 0.1
# After a version is applied, the first hits of it are reported this soon (or sooner, with a
# shorter heartbeat period): a failing canary is stopped on the numbers of its first seconds.
FIRST_HITS_SECONDS = 5.0


class Stopped(Exception):
    """The stop flag was set while the agent waited for the controller."""


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AgentDaemon(WorkerSync):
    """One agent: a controller, its workers and a state dir. No Django, only HTTP."""

    def __init__(
        self,
        *,
        controller_url: str,
        worker_urls: list[str],
        internal_key: str,
        state_dir: str,
        registration_token: str | None = None,
        watch: bool = True,
        default_interval: float = 10.0,
        backoff_cap: float = 60.0,
        backoff_base: float = 1.0,
        worker_check_seconds: float = 5.0,
        heartbeat_seconds: float = 10.0,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not internal_key:
            raise ValueError("internal_key is required to sign pushes")
        if not worker_urls:
            raise ValueError("at least one worker URL is required")
        self.clock = clock
        self.state = StateDir(state_dir)
        self.controller = ControllerClient(
            controller_url, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.controller_backoff = Backoff(base=backoff_base, cap=backoff_cap, rand=rand)
        self.workers = [
            WorkerState(
                client=WorkerClient(
                    url,
                    internal_key,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                ),
                backoff=Backoff(base=backoff_base, cap=backoff_cap, rand=rand),
            )
            for url in dict.fromkeys(worker_urls)
        ]
        self.registration_token = registration_token or None
        self.watch = watch
        self.worker_check_seconds = worker_check_seconds
        if heartbeat_seconds <= 0:
            raise ValueError("heartbeat_seconds must be positive")
        self.heartbeat_seconds = heartbeat_seconds
        self.default_interval = default_interval
        self.hostname = socket.gethostname()
        self.name = name or self.hostname
        self.labels = dict(labels or {})

        self.credentials: dict | None = None
        self.config: dict | None = None  # the newest config the agent holds
        self.applied: dict | None = None  # the last config a worker accepted (config.json)
        self.period = float(default_interval)
        self.last_wait = 0
        self.controller_due = 0.0
        self.controller_enabled = True
        self.no_config_logged = False
        # Until the first answer after a start, the held config is only the cached one.
        self.reconciled = False
        self.started = False
        self.heartbeat_due = 0.0
        self.first_hits_pending = False
        # Ids of the pre-flights run lately: two controller processes may hand over the same one.
        self.preflights_run: collections.deque[str] = collections.deque(maxlen=64)

    # -- steps -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the state dir and bring the workers up from the cache, before any contact with
        the controller, so that a controller outage does not leave an empty worker empty."""
        self.state.ensure()
        self.credentials = self.state.load_credentials()
        if self.credentials is not None:
            self.controller.agent_token = self.credentials["agent_token"]
            if self.registration_token and self.credentials.get(
                "registration_token_sha256"
            ) == _fingerprint(self.registration_token):
                # This token registered us already; the controller would refuse it again.
                self.registration_token = None
            logger.info("using stored credentials of agent %s", self.credentials["agent_id"])
        cached = self.state.load_config()
        if cached is not None:
            self.config = self.applied = cached
            self.period = float(cached["pooling_interval"])
            logger.info(
                "loaded cached config v%s from %s", cached["version"], self.state.config_path
            )
        self.started = True
        self.sync_workers()

    def ensure_registered(self) -> bool:
        """Register once, with the registration token; True when the agent has credentials."""
        if self.credentials is not None:
            return True
        if not self.registration_token:
            self._need_operator(
                "the agent has no valid credentials and no usable registration token"
            )
            return False
        try:
            answer = self.controller.register(
                self.registration_token,
                name=self.name,
                hostname=self.hostname,
                labels=self.labels,
            )
        except TokenRefused:
            self.registration_token = None
            self._need_operator(
                "the controller refused the registration token (unknown, used or expired)"
            )
            return False
        credentials = {
            "agent_id": answer["agent_id"],
            "agent_token": answer["agent_token"],
            "controller_url": self.controller.base_url,
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "registration_token_sha256": _fingerprint(self.registration_token),
        }
        self.state.save_credentials(credentials)
        self.credentials = credentials
        self.controller.agent_token = credentials["agent_token"]
        self.registration_token = None
        logger.info(
            "registered as agent %s; credentials kept in %s",
            credentials["agent_id"],
            self.state.credentials_path,
        )
        given = answer.get("labels")
        if isinstance(given, dict) and self.labels and given != self.labels:
            # The controller's labels are the operator's; ours were offered, not imposed.
            logger.warning(
                "the controller gave this agent the labels %s, not %s: its registration token "
                "decides them (an operator changes them with PATCH /agents/%s)",
                given,
                self.labels,
                credentials["agent_id"],
            )
        interval = answer.get("pooling_interval")
        if self.config is None and isinstance(interval, int) and interval > 0:
            self.period = float(interval)
        return True

    def check_controller(self, stop: threading.Event) -> bool:
        """Ask the controller for its version and take the config when it differs from the one
        the agent holds: from the answer itself when it carries the content, else from GET
        /config/agent. True when the controller answered."""
        started = self.clock()
        try:
            if not self.ensure_registered():
                self.controller_due = started + self.period
                return False
            # After a start, a changed config from the reconciliation is pushed at once; an
            # unchanged one goes on to the watch in the same check.
            changed = not self.reconciled and self._reconcile()
            if not changed:
                state = self._ask_version(stop)
                changed = self._follow_version(state)
                if "preflight" in state:
                    self.start_preflight(state["preflight"])
                    # The answer came early for the pre-flight, not because the watch ran out.
                    changed = True
        except TokenRefused:
            self._token_refused()
            if self.registration_token:
                # Bounded: the registration token is used up whatever the controller answers.
                return self.check_controller(stop)
            self.controller_due = self.clock()
            return False
        except WatchNotSupported as exc:
            logger.warning("the controller does not take watch requests (%s); polling instead", exc)
            self.watch = False
            self.controller_due = self.clock()
            return False
        except ControllerUnavailable as exc:
            delay = self.controller_backoff.next_delay()
            self.controller_due = self.clock() + delay
            logger.warning(
                "controller unreachable (%s); serving v%s, next try in %.1f s",
                exc,
                self.applied["version"] if self.applied else "-",
                delay,
            )
            return False
        if self.controller_backoff.failures:
            logger.info("controller reachable again")
            self.controller_backoff.reset()
        self.controller_due = started + self._pause_after_check(changed)
        return True

    def _pause_after_check(self, changed: bool) -> float:
        """Seconds from the start of a check that answered until the next one."""
        if not self.watch:
            return self.period
        # A watch answers at once on a change: watch again straight away, so that a second
        # change right after the first is not held up. Otherwise the controller held the
        # request for `wait` seconds (then this is now), or it does not hold requests, and
        # waiting `wait` keeps the loop from spinning.
        return 0.0 if changed else self.last_wait

    def heartbeats_on(self) -> bool:
        # Only to a controller that answered last time: an unreachable one has its own backoff.
        return (
            self.credentials is not None
            and self.controller_enabled
            and not self.controller_backoff.failures
        )

    def heartbeat_is_due(self) -> bool:
        return self.heartbeats_on() and self.heartbeat_due <= self.clock()

    def send_heartbeat(self) -> None:
        """Tell the controller what the agent applied, what each worker runs and how many hits
        each version served since the previous heartbeat that was delivered."""
        now = self.clock()
        if self.first_hits_pending:
            self.first_hits_pending = False
            self.heartbeat_due = now + min(FIRST_HITS_SECONDS, self.heartbeat_seconds)
        else:
            self.heartbeat_due = now + self.heartbeat_seconds
        snapshots = [(worker, dict(worker.hits)) for worker in self.workers]
        try:
            self.controller.heartbeat(
                applied_version=self.applied["version"] if self.applied else None,
                workers=[
                    {"url": worker.url, "ok": worker.ok, "version": worker.version}
                    for worker in self.workers
                ],
                hits=hits_since(snapshots),
                labels=self.labels,
            )
        except TokenRefused:
            self._token_refused()
            return
        except ControllerUnavailable as exc:
            # The hits stay uncounted and go with the next heartbeat that arrives.
            logger.warning("heartbeat not delivered: %s", exc)
            return
        for worker, snapshot in snapshots:
            worker.reported = snapshot

    # -- the loop ----------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> float:
        """One cycle; returns how long to wait before the next one."""
        stop = stop or threading.Event()
        if not self.started:
            self.start()
        if not stop.is_set() and self.controller_due <= self.clock():
            if self.controller_enabled:
                self.check_controller(stop)
            else:
                self.controller_due = self.clock() + self.period
        if not stop.is_set():
            self.sync_workers()
        if not stop.is_set() and self.heartbeat_is_due():
            self.send_heartbeat()
        return self.next_delay()

    def next_delay(self) -> float:
        dues = [self.controller_due] + [w.due for w in self.workers if w.due > 0]
        if self.heartbeats_on():
            dues.append(self.heartbeat_due)
        return max(0.0, min(dues) - self.clock())

    def run(self, stop: threading.Event) -> None:
        """Cycle until `stop` is set; a push in flight finishes first."""
        logger.info(
            "agent started: controller %s, workers %s, %s",
            self.controller.base_url,
            ", ".join(w.url for w in self.workers),
            "watching" if self.watch else "polling",
        )
        while not stop.is_set():
            try:
                delay = self.run_once(stop)
            except Stopped:
                break
            if delay > 0:
                stop.wait(delay)
        self.close()
        logger.info("agent stopped")

    def close(self) -> None:
        """Close the HTTP connections the agent keeps open."""
        self.controller.session.close()
        self.controller.report_session.close()
        for worker in self.workers:
            worker.client.session.close()

    # -- internals ---------------------------------------------------------------------------

    def _ask_version(self, stop: threading.Event) -> dict:
        if not self.watch:
            return self._abandonable(stop, self.controller.version)
        wait = min(self.period, MAX_WATCH_WAIT)
        retries = [w.due for w in self.workers if w.due > 0]
        if retries:
            # Come back in time to retry a worker that is down.
            wait = min(wait, max(0.0, min(retries) - self.clock()))
        if self.controller_backoff.failures:
            # Back from an outage: a short watch, so the controller's answer comes within a
            # second and the heartbeats, which wait for it, start again. A full-length watch of
            # an agent already up to date would leave the controller without its reports (what
            # it applied, a rollout's next wave waits for that) for a whole watch period.
            wait = 1
        known = self.config["version"] if self.config else 0
        # At least a second: a zero wait is answered at once and would make the loop spin.
        self.last_wait = wait = max(1, int(wait))
        return self._abandonable(stop, lambda: self.controller.version(known=known, wait=wait))

    def _abandonable(self, stop: threading.Event, call: Callable[[], dict]) -> dict:
        # The request runs in a daemon thread so that a stop need not wait for a held watch:
        # the answer of an abandoned request is simply never read.
        outcome: dict = {}
        done = threading.Event()

        def target() -> None:
            try:
                outcome["value"] = call()
            except Exception as exc:  # noqa: BLE001 - handed over to the caller below
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name="agent-controller-request", daemon=True).start()
        next_worker_check = time.monotonic() + self.worker_check_seconds
        while not done.wait(STOP_POLL_SECONDS):
            if stop.is_set():
                raise Stopped()
            if time.monotonic() >= next_worker_check:
                # A watch may be held for a minute: meanwhile a worker that restarted empty
                # is found and filled again, with the config the agent already holds.
                self.sync_workers()
                next_worker_check = time.monotonic() + self.worker_check_seconds
            if self.heartbeat_is_due():
                # Hits are reported on time while the watch is held, from the workers' state
                # of this moment.
                self.sync_workers()
                self.send_heartbeat()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _reconcile(self) -> bool:
        """The first contact after a start: GET /config/agent with the held version as ETag, so
        a cached config is confirmed (304) or replaced in one request. True when it changed."""
        held = self.config["version"] if self.config else None
        try:
            fetched = self.controller.config(etag_version=held)
        except NoConfigServed:
            self._no_config_yet()
            fetched = None
        self.reconciled = True
        if fetched is None:
            return False
        self._take(fetched)
        return True

    def _follow_version(self, state: dict) -> bool:
        """Act on a version answer; True when the agent now holds a different config."""
        self._follow_interval(state["pooling_interval"])
        if state["version"] == 0:
            self._no_config_yet()
            return False
        if self.config is not None and state["version"] == self.config["version"]:
            logger.debug("controller still at v%s", state["version"])
            return False
        content = state.get("content")
        if content is not None and content["version"] == state["version"]:
            # The answer carries the content: no second request, however many agents were
            # woken by the same change.
            logger.info(
                "controller has v%s, agent holds v%s: applying it",
                state["version"],
                self.config["version"] if self.config else "-",
            )
            self._take(content)
        else:
            self._fetch(state["version"])
        return True

    def _no_config_yet(self) -> None:
        if not self.no_config_logged:
            logger.info("the controller has no configuration yet")
            self.no_config_logged = True

    def _follow_interval(self, interval: int | None) -> None:
        period = float(interval) if interval else float(self.default_interval)
        if period != self.period:
            logger.info("check period now %g s (was %g s)", period, self.period)
            self.period = period

    def _fetch(self, version: int) -> None:
        held = self.config["version"] if self.config else None
        logger.info("controller has v%s, agent holds v%s: fetching", version, held or "-")
        try:
            fetched = self.controller.config(etag_version=held)
        except NoConfigServed:
            logger.warning("the controller announced v%s but has no config to give", version)
            return
        if fetched is None:
            return
        self._take(fetched)

    def _take(self, config: dict) -> None:
        """Hold `config` as the newest; the workers get it in the same cycle."""
        if not valid_config(config):
            raise ControllerUnavailable("the controller's answer is not a valid config")
        self.config = {name: config[name] for name in CONFIG_FIELDS}
        self._follow_interval(self.config["pooling_interval"])

    def _token_refused(self) -> None:
        agent_id = self.credentials["agent_id"] if self.credentials else "-"
        logger.error("the controller refused the token of agent %s (revoked or unknown)", agent_id)
        self.credentials = None
        self.controller.agent_token = None
        self.reconciled = False
        if self.registration_token:
            logger.info("registering again with the registration token")

    def _need_operator(self, reason: str) -> None:
        self.controller_enabled = False
        serving = f"v{self.applied['version']}" if self.applied else "nothing (no cached config)"
        logger.error(
            "%s; the workers keep %s. To reconnect: issue a registration token "
            "(GET /agent/admin or `manage.py create_registration_token`) and restart the agent "
            "with --registration-token or REGISTRATION_TOKEN.",
            reason,
            serving,
        )
