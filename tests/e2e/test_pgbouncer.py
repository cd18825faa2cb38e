"""The controller behind pgbouncer (Debian's, stock settings, transaction mode).

A stock pgbouncer refuses the start-up `options` a direct connection carries; with
DATABASE_TRANSACTION_POOLING=1 the controller sends none and `migrate` stores the statement
timeout as the role's default instead. Then the end-to-end suite's main scenarios run again
with every controller connected through pgbouncer: logins and every credential on every
endpoint, fifty concurrent changes, and Redis stopped and started under held watches.
"""

import subprocess

import psycopg
import pytest
from django.db import connection

import tests.e2e.test_auth
import tests.e2e.test_faults
import tests.e2e.test_load
from tests.e2e.proxies import Pgbouncer
from tests.support.processes import base_env, manage, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def pgbouncer():
    db = connection.settings_dict
    bouncer = Pgbouncer(
        db["NAME"],
        db.get("HOST") or "127.0.0.1",
        db.get("PORT") or 5432,
        db.get("USER") or "postgres",
    )
    yield bouncer
    bouncer.stop()


@pytest.fixture
def stack(pgbouncer, stack, monkeypatch):
    """The end-to-end suite's stack, with every controller reaching the test database through
    pgbouncer."""
    # The scenarios' figures in docs/RELIABILITY.md come from their direct runs.
    for module in (tests.e2e.test_auth, tests.e2e.test_faults, tests.e2e.test_load):
        monkeypatch.setattr(module, "record", lambda *args, **kwargs: None)
    direct = stack.controller

    def through_pgbouncer(redis_url, **env):
        env.setdefault("DATABASE_URL", pgbouncer.url)
        env.setdefault("DATABASE_TRANSACTION_POOLING", "1")
        return direct(redis_url, **env)

    monkeypatch.setattr(stack, "controller", through_pgbouncer)
    return stack


def test_a_stock_pgbouncer_refuses_start_up_options(pgbouncer):
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(pgbouncer.url, options="-c statement_timeout=1000", connect_timeout=5)
    with psycopg.connect(pgbouncer.url, connect_timeout=5) as plain:
        assert plain.execute("SELECT 1").fetchone() == (1,)


def test_migrate_stores_the_statement_timeout_every_pooled_session_gets(pgbouncer):
    env = base_env(
        DATABASE_URL=pgbouncer.url,
        DATABASE_TRANSACTION_POOLING="1",
        DATABASE_STATEMENT_TIMEOUT="2",
    )
    try:
        result = subprocess.run(
            manage("migrate", "--noinput"), env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # A log line: logs go to stderr, stdout is left to what a command prints.
        assert "statement_timeout 2000 ms stored" in result.stderr
        # migrate's own server connections started before the default existed: replace them.
        pgbouncer.console("RECONNECT")
        clients = [psycopg.connect(pgbouncer.url, connect_timeout=5) for _ in range(3)]
        try:

            def every_server_connection_has_it() -> bool:
                # Two open transactions hold two server connections at once.
                with clients[0].transaction(), clients[1].transaction():
                    shown = {c.execute("SHOW statement_timeout").fetchone()[0] for c in clients[:2]}
                    pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in clients[:2]}
                return len(pids) == 2 and shown == {"2s"}

            wait_until(every_server_connection_has_it, timeout=15, message="pooled timeouts")
            with pytest.raises(psycopg.errors.QueryCanceled):
                clients[2].execute("SELECT pg_sleep(3)")
        finally:
            for client in clients:
                client.close()
    finally:
        with psycopg.connect(pgbouncer.url, connect_timeout=5, autocommit=True) as reset:
            database = connection.settings_dict["NAME"]
            reset.execute(
                f'ALTER ROLE CURRENT_USER IN DATABASE "{database}" RESET statement_timeout'
            )


def test_without_pooling_the_controller_sends_the_timeout_with_each_connection(settings):
    # The default: no role default is written, the timeout travels as a start-up option.
    from apps.ops.database import store_statement_timeout

    settings.DATABASE_TRANSACTION_POOLING = False
    assert store_statement_timeout() is None
    assert "statement_timeout" in connection.settings_dict["OPTIONS"]["options"]
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] != "0"


# The end-to-end scenarios, run again through pgbouncer (the `stack` fixture above).
test_credentials_through_pgbouncer = tests.e2e.test_auth.test_only_the_right_credential_passes
test_concurrent_changes_through_pgbouncer = tests.e2e.test_load.test_concurrent_changes
test_redis_stopped_and_started_through_pgbouncer = (
    tests.e2e.test_faults.test_redis_stopped_and_started
)
