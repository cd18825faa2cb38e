"""The periodic jobs (apps/ops/jobs.py): run by every controller process unless
CONTROLLER_RUN_JOBS is off, and alone by `manage.py run_jobs`."""

import signal
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.db.models import F

from apps.agents.models import Agent
from apps.agents.services import issue_registration_token, record_heartbeat, register_agent
from apps.audit.models import AuditEntry
from apps.ops.jobs import Job, JobRunner
from apps.rollouts.models import Rollout
from tests.support import processes
from tests.support.processes import Process, base_env, manage, start_controller, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

PLAN = {"canary_labels": {"ring": "canary"}, "waves": [50, 100], "bake_seconds": 60}
TICK = "0.2"


def rollout_with_a_due_wave(admin_api, publish) -> None:
    """Version 2 rolling out, its canary wave applied and baked: the next step starts wave 1."""
    publish("http://upstream.example/one", 30)
    for index, ring in enumerate(["canary", "main", "main"]):
        token, _ = issue_registration_token(allow_agent_labels=True)
        register_agent(token=token, name=f"agent-{index}", labels={"ring": ring})
    answer = admin_api.post(
        "/config/admin",
        {"config_url": "http://upstream.example/two", "pooling_interval": 30, "rollout": PLAN},
        "json",
    )
    assert answer.status_code == 201, answer.content
    record_heartbeat(Agent.objects.get(name="agent-0"), applied_version=2, workers=[])
    Rollout.objects.update(wave_started_at=F("wave_started_at") - timedelta(seconds=61))
    assert Rollout.objects.get().wave == 0


def waves_started() -> list[int]:
    entries = AuditEntry.objects.filter(action=AuditEntry.ROLLOUT_WAVE_STARTED).order_by("at")
    return [entry.detail["wave"] for entry in entries]


def test_run_jobs_once_starts_a_due_wave(admin_api, publish):
    rollout_with_a_due_wave(admin_api, publish)
    call_command("run_jobs", "--once")
    # It should have started wave 1, recorded in the audit log as the rollout's own step.
    rollout = Rollout.objects.get()
    assert (rollout.state, rollout.wave) == ("rolling", 1)
    assert waves_started() == [0, 1]


def test_two_runners_at_the_same_step_start_the_wave_once(admin_api, publish):
    """The controller and run_jobs (or two controllers) both run the jobs: whichever gets the
    rollout's row acts, and the other finds nothing left to do."""
    rollout_with_a_due_wave(admin_api, publish)
    call_command("run_jobs", "--once")
    call_command("run_jobs", "--once")
    assert Rollout.objects.get().wave == 1
    assert waves_started() == [0, 1]


def test_a_failing_job_does_not_stop_the_others(caplog):
    ran = []

    def broken():
        raise RuntimeError("a bug")

    def database_down():
        raise OperationalError("connection refused")

    runner = JobRunner(
        jobs=(
            Job("broken", lambda: 60, broken),
            Job("database down", lambda: 60, database_down),
            Job("fine", lambda: 60, lambda: ran.append(1)),
        )
    )
    # It should run every due job once, and say when the next one is due.
    assert runner.run_due() > 55
    assert ran == [1]
    assert "job 'broken' failed" in caplog.text
    assert "job 'database down' could not run: connection refused" in caplog.text
    # Nothing is due again before its time.
    runner.run_due()
    assert ran == [1]


@pytest.mark.postgres
def test_with_the_jobs_off_the_controller_does_not_tick_and_run_jobs_does(admin_api, publish):
    rollout_with_a_due_wave(admin_api, publish)
    controller, _ = start_controller(
        redis_url=None, CONTROLLER_RUN_JOBS="0", ROLLOUT_TICK_SECONDS=TICK
    )
    try:
        # It should leave the due wave alone: ten ticks' time, and nothing moved.
        time.sleep(2)
        assert Rollout.objects.get().wave == 0
        jobs = Process(
            manage("run_jobs"),
            base_env(DATABASE_URL=processes.test_database_url(), ROLLOUT_TICK_SECONDS=TICK),
            "run_jobs",
        )
        try:
            wait_until(
                lambda: Rollout.objects.get().wave == 1,
                timeout=20,
                message="run_jobs started the next wave",
                process=jobs,
            )
            assert waves_started() == [0, 1]
            # It should stop within a second of SIGTERM, and cleanly.
            stopped = time.monotonic()
            assert jobs.stop(signal.SIGTERM, timeout=5) == 0, jobs.output()
            assert time.monotonic() - stopped < 1.0
            assert "run_jobs: stopped" in jobs.output()
        finally:
            jobs.stop(signal.SIGKILL)
    finally:
        controller.stop()
