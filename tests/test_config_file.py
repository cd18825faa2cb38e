"""Settings from a YAML file: precedence, errors that name the file and key, masking."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests
import yaml

from apps.agents.services import issue_registration_token
from apps.configs.actions import publish_config
from protocol import signing
from protocol.config_file import ALIASES
from tests.e2e.security import record_attack
from tests.support.processes import ROOT, TEST_SECRET_KEY, Process, free_port, wait_until

# Settings that the agent and the worker read: from the commands and the Worker and Agent blocks
# of settings.py. The controller reads every other one.
AGENT_SETTINGS = {
    "CONTROLLER_URL",
    "WORKER_URL",
    "REGISTRATION_TOKEN",
    "AGENT_STATE_DIR",
    "AGENT_DEFAULT_INTERVAL",
    "AGENT_BACKOFF_CAP",
    "AGENT_WORKER_CHECK_SECONDS",
    "AGENT_HEARTBEAT_SECONDS",
    "AGENT_CONNECT_TIMEOUT",
    "AGENT_READ_TIMEOUT",
    "AGENT_METRICS_BIND",
    "AGENT_LABELS",
}
WORKER_SETTINGS = {
    "WORKER_BIND",
    "WORKER_THREADS",
    "WORKER_ACCESS_LOG",
    "WORKER_REQUIRE_SIGNATURE",
    "WORKER_CONNECT_TIMEOUT",
    "WORKER_READ_TIMEOUT",
    "WORKER_MAX_BODY_BYTES",
    "WORKER_BLOCK_PRIVATE_UPSTREAMS",
}
# The worker and the agent read their settings without Django: no DEBUG and no SECRET_KEY.
DAEMON_SHARED_SETTINGS = {"LOG_LEVEL", "LOG_FORMAT"}
EXAMPLES = {
    "controller": ROOT / "config" / "config.yaml",
    "worker": ROOT / "config" / "worker-config.yaml",
    "agent": ROOT / "config" / "agent-config.yaml",
}
KEY = "config-file-tests-internal-key-0123456789"
# Variables that would configure a process behind its file's back.
PROCESS_VARIABLES = re.compile(
    r"^(DATABASE_URL|REDIS_URL|SECRET_KEY|INTERNAL_KEY|CONFIG_FILE|CONFIG_ROLE|CONTROLLER_URL"
    r"|REGISTRATION_TOKEN|WORKER_.*|AGENT_.*|LOG_.*|DEBUG)$"
)


def clean_env(tmp_path=None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not PROCESS_VARIABLES.match(k)}
    env["PYTHONUNBUFFERED"] = "1"
    if tmp_path is not None:
        env["VAR_DIR"] = str(tmp_path / "var")
    env.update(extra)
    return env


def manage(*args: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    clean = clean_env()
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def effective(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        name, source, *value = line.split(None, 2)
        rows[name] = (source, value[0] if value else "")
    return rows


def test_file_values_are_used_and_environment_wins_over_the_file(tmp_path):
    path = write(
        tmp_path,
        f"secret_key: {TEST_SECRET_KEY}\nbind: 127.0.0.1:9100\nlog_level: WARNING\n"
        "allowed_hosts: [a.example, b.example]\n",
    )
    result = manage("show_settings", "--config", str(path), env={"LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert result.stdout.splitlines()[0] == f"settings file: {path} (role: controller)"
    assert rows["CONTROLLER_BIND"] == ("file", "127.0.0.1:9100")
    assert rows["LOG_LEVEL"] == ("env", "DEBUG")
    assert rows["ALLOWED_HOSTS"] == ("file", "a.example, b.example")
    assert rows["JWT_ACCESS_MINUTES"] == ("default", "15")


def test_config_file_variable_works_like_the_flag(tmp_path):
    path = write(tmp_path, f"secret_key: {TEST_SECRET_KEY}\nworkers: 3\n")
    result = manage("show_settings", env={"CONFIG_FILE": str(path)})
    assert result.returncode == 0, result.stderr
    assert effective(result.stdout)["CONTROLLER_WORKERS"] == ("file", "3")


def test_bind_means_the_bind_of_the_process_that_reads_the_file(tmp_path):
    path = write(tmp_path, "bind: 127.0.0.1:9200\n")
    env = {"SECRET_KEY": TEST_SECRET_KEY}
    result = manage("show_settings", "--config", str(path), env={**env, "CONFIG_ROLE": "worker"})
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["WORKER_BIND"] == ("file", "127.0.0.1:9200")
    # The worker reads its own settings only: the controller's are not its business.
    assert "CONTROLLER_BIND" not in rows
    result = manage("show_settings", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["CONTROLLER_BIND"] == ("file", "127.0.0.1:9200")
    assert "WORKER_BIND" not in rows


def test_secrets_are_masked_including_passwords_inside_urls(tmp_path):
    path = write(
        tmp_path,
        f"secret_key: {TEST_SECRET_KEY}\nadmin_password: hunter2-secret\n"
        "redis_url: redis://user:redis-pass@127.0.0.1:6379/2\n",
    )
    result = manage("show_settings", "--config", str(path))
    assert result.returncode == 0, result.stderr
    for secret in (TEST_SECRET_KEY, "hunter2-secret", "redis-pass"):
        assert secret not in result.stdout
    rows = effective(result.stdout)
    assert rows["SECRET_KEY"] == ("file", "********")
    assert rows["REDIS_URL"] == ("file", "redis://user:********@127.0.0.1:6379/2")


def test_passwords_in_url_queries_and_secrets_in_type_errors_are_masked(tmp_path):
    path = write(
        tmp_path,
        f"secret_key: {TEST_SECRET_KEY}\n"
        "redis_url: redis://127.0.0.1:6379/2?password=query-pass&socket_timeout=3\n",
    )
    result = manage("show_settings", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "query-pass" not in result.stdout
    rows = effective(result.stdout)
    assert rows["REDIS_URL"] == (
        "file",
        "redis://127.0.0.1:6379/2?password=********&socket_timeout=3",
    )
    # A secret of the wrong type: the error names the key and the type, never the value.
    for text in (
        f"secret_key: [{TEST_SECRET_KEY}]\n",
        f"secret_key: {TEST_SECRET_KEY}\nadmin_password: [hunter2-list-secret]\n",
        f"secret_key: {TEST_SECRET_KEY}\ndatabase_url: 'nota url?password=typo-secret'\n",
    ):
        result = manage("show_settings", "--config", str(write(tmp_path, text)))
        assert result.returncode == 2, result.stderr
        for secret in (TEST_SECRET_KEY, "hunter2-list-secret", "typo-secret"):
            assert secret not in result.stderr, result.stderr
    record_attack(
        "secrets-in-output",
        "the query password and every secret value were masked; errors named the key and type",
        masked_url=rows["REDIS_URL"][1],
    )


def test_a_world_readable_file_with_secrets_is_warned_about(tmp_path):
    path = write(tmp_path, f"secret_key: {TEST_SECRET_KEY}\n", mode=0o644)
    result = manage("show_settings", "--config", str(path))
    assert result.returncode == 0
    assert f"WARNING: {path} holds secrets but is readable by group or others" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("databse_url: x\n", "unknown key 'databse_url'; did you mean 'database_url'?"),
        ("debug: maybe\n", "key 'debug': must be true or false, got 'maybe'"),
        ("jwt_access_minutes: ten\n", "key 'jwt_access_minutes': must be a whole number"),
        ("jwt_access_minutes: 0\n", "key 'jwt_access_minutes': must be at least 1, got 0"),
        ("redis_url: not-a-url\n", "key 'redis_url': must be a URL"),
        ("controller_url: controller:8080\n", "key 'controller_url': must be a URL"),
        ("worker_url: ['http://:8082']\n", "key 'worker_url': must be a URL"),
        ("workers: 2\n", "unknown key 'workers'; did you mean 'worker_urls'?"),
        ("allowed_hosts: {a: 1}\n", "key 'allowed_hosts': must be a list of strings"),
        ("log_level: [1, 2\n", "invalid YAML at line 2, column 1"),
        ("- just\n- a list\n", "the file must hold a mapping"),
    ],
)
def test_bad_files_exit_2_naming_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    env = {"SECRET_KEY": TEST_SECRET_KEY}
    if text.startswith(("controller_url", "worker_url", "workers")):
        # Keys of the agent's settings: read as the agent reads its file.
        env["CONFIG_ROLE"] = "agent"
    result = manage("show_settings", "--config", str(path), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {path}:")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_file_exits_2(tmp_path):
    result = manage("show_settings", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read the file" in result.stderr


def test_a_controller_starts_from_a_file_alone(tmp_path):
    port = free_port()
    path = write(
        tmp_path,
        f"secret_key: {TEST_SECRET_KEY}\n"
        f"database_url: sqlite:///{tmp_path}/controller.sqlite3\n"
        f"bind: 127.0.0.1:{port}\nworkers: 1\n",
    )
    migrate = manage("migrate", "--config", str(path))
    assert migrate.returncode == 0, migrate.stderr
    env = clean_env()
    process = Process(
        [sys.executable, str(ROOT / "manage.py"), "run_controller", "--config", str(path)],
        env,
        "controller-from-file",
    )
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
            timeout=30,
            message="controller started from its settings file",
        )
        assert (tmp_path / "controller.sqlite3").exists()
    finally:
        process.stop()


# The example files


def role_settings(role: str, every_setting: set[str]) -> set[str]:
    if role == "agent":
        return AGENT_SETTINGS | DAEMON_SHARED_SETTINGS | {"INTERNAL_KEY"}
    if role == "worker":
        return WORKER_SETTINGS | DAEMON_SHARED_SETTINGS | {"INTERNAL_KEY"}
    return every_setting - AGENT_SETTINGS - WORKER_SETTINGS - {"INTERNAL_KEY"}


@pytest.mark.parametrize("role", sorted(EXAMPLES))
def test_each_example_file_loads_holds_only_defaults_and_names_every_setting_of_its_process(
    role, tmp_path
):
    example = EXAMPLES[role]
    env = {"CONFIG_ROLE": role, "SECRET_KEY": TEST_SECRET_KEY, "VAR_DIR": str(tmp_path)}
    with_file = manage("show_settings", "--config", str(example), env=env)
    without = manage("show_settings", env=env)
    assert with_file.returncode == 0, with_file.stderr
    assert without.returncode == 0, without.stderr
    assert with_file.stderr == ""  # no secrets in the example, so no permission warning
    from_file, defaults = effective(with_file.stdout), effective(without.stdout)

    shipped = yaml.safe_load(example.read_text())
    assert shipped, f"{example} sets nothing"
    read_from_file = {name for name, (source, _) in from_file.items() if source == "file"}
    assert len(read_from_file) == len(shipped)
    for name in read_from_file:
        assert defaults[name][0] == "default", name
        assert from_file[name][1] == defaults[name][1], f"{example}: {name} is not the default"

    aliases = {name: key for key, name in ALIASES[role].items()}
    text = example.read_text()
    missing = [
        name
        for name in sorted(role_settings(role, set(defaults)))
        if not re.search(rf"^(# )?{aliases.get(name, name.lower())}:", text, re.MULTILINE)
    ]
    assert not missing, f"{example} does not mention {missing}"


# Worker and agent processes started from a file


def test_a_worker_starts_from_a_file_alone(tmp_path):
    port = free_port()
    path = write(
        tmp_path,
        f"internal_key: {KEY}\nbind: 127.0.0.1:{port}\n",
    )
    process = Process(
        [sys.executable, str(ROOT / "manage.py"), "run_worker", "--config", str(path)],
        clean_env(tmp_path),
        "worker-from-file",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/health", timeout=1).ok,
            timeout=20,
            message=f"worker started from its settings file: {process.output()}",
        )
        body = json.dumps(
            {
                "config_url": "http://127.0.0.1:9/",
                "pooling_interval": 60,
                "version": 1,
                "uuid": "6f1c1c4e-7a55-4d8b-9d8e-0c1b7b2a9e11",
            }
        ).encode()
        signature = signing.sign(body, KEY)
        pushed = requests.post(f"{url}/config", data=body, headers={"X-Signature": signature})
        assert pushed.status_code == 200, pushed.text  # the key came from the file
        assert requests.get(f"{url}/health", timeout=5).json()["config_version"] == 1
    finally:
        process.stop()
    assert KEY not in process.log_path.read_text(errors="replace")
    # No SECRET_KEY, no database, no cache: the worker reads its own settings, and so neither
    # asks for a key nor makes a var/ directory for one.
    assert not (tmp_path / "var").exists()


def test_the_bind_flag_wins_over_the_environment_which_wins_over_the_worker_file(tmp_path):
    in_file, in_env, in_flag = free_port(), free_port(), free_port()
    path = write(tmp_path, f"internal_key: {KEY}\nbind: 127.0.0.1:{in_file}\n")
    env = clean_env(tmp_path, WORKER_BIND=f"127.0.0.1:{in_env}")
    for flags, listening in (([], in_env), (["--bind", f"127.0.0.1:{in_flag}"], in_flag)):
        process = Process(
            [sys.executable, str(ROOT / "manage.py"), "run_worker", "--config", str(path), *flags],
            env,
            "worker-precedence",
        )
        try:
            wait_until(
                lambda port=listening: requests.get(f"http://127.0.0.1:{port}/health").ok,
                timeout=20,
                message=f"worker on {listening}: {process.output()}",
            )
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{in_file}/health", timeout=1)
        finally:
            process.stop()


def test_agent_environment_wins_over_its_file_and_short_keys_name_its_settings(tmp_path):
    path = write(
        tmp_path,
        "controller_url: http://127.0.0.1:8080\n"
        "worker_urls: [http://127.0.0.1:8082, 'http://user:worker-pass@127.0.0.1:8083']\n"
        "state_dir: /srv/agent-from-file\n",
    )
    result = manage(
        "show_settings",
        "--config",
        str(path),
        env={"CONFIG_ROLE": "agent", "SECRET_KEY": TEST_SECRET_KEY, "AGENT_STATE_DIR": "/srv/env"},
    )
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["AGENT_STATE_DIR"] == ("env", "/srv/env")
    assert rows["CONTROLLER_URL"] == ("file", "http://127.0.0.1:8080")
    assert rows["WORKER_URL"] == (
        "file",
        "http://127.0.0.1:8082, http://user:********@127.0.0.1:8083",
    )
    assert "worker-pass" not in result.stdout


def run_agent_once(tmp_path, path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_agent", "--config", str(path), *flags],
        cwd=ROOT,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_agent_runs_from_a_file_alone_against_a_live_controller_and_worker(
    live_server,
    make_worker,
    upstream,
    tmp_path,
):
    worker = make_worker(KEY)
    publish_config(config_url=upstream.url("/text"), pooling_interval=30)
    token, _ = issue_registration_token()
    state_dir = tmp_path / "state"
    path = write(
        tmp_path,
        f"controller_url: {live_server.url}\n"
        f"worker_urls: [{worker.base_url}]\n"
        f"registration_token: {token}\n"
        f"state_dir: {state_dir}\n"
        f"internal_key: {KEY}\n",
    )
    result = run_agent_once(tmp_path, path, "--once")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (state_dir / "credentials.json").exists(), output
    assert json.loads((state_dir / "config.json").read_text())["version"] == 1
    assert worker.version() == 1, output
    assert token not in output and KEY not in output


# Bad files stop the process before it does anything


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("run_agent", "worker_urls: 5\n", "key 'worker_urls': must be a list of strings, got 5"),
        ("run_agent", "controller_url: controller:8080\n", "key 'controller_url': must be a URL"),
        (
            "run_agent",
            "stat_dir: /tmp/x\n",
            "unknown key 'stat_dir'; did you mean 'state_dir'?",
        ),
        (
            "run_agent",
            "worker_url: http://127.0.0.1:8082\n",
            "key 'worker_url' sets the same setting as key 'worker_urls'",
        ),
        ("run_worker", "bind: [1]\n", "key 'bind': must be a string, got [1]"),
        ("run_worker", "threads: 0\n", "key 'threads': must be at least 1, got 0"),
    ],
)
def test_a_bad_agent_or_worker_file_exits_2_before_anything_starts(
    tmp_path, command, text, message
):
    state_dir = tmp_path / "state"
    port = free_port()
    good = f"internal_key: {KEY}\n" + (
        f"controller_url: http://127.0.0.1:{port}\nstate_dir: {state_dir}\n"
        "worker_urls: [http://127.0.0.1:9]\nregistration_token: rt_x\n"
        if command == "run_agent"
        else f"bind: 127.0.0.1:{port}\n"
    )
    # The bad line replaces a good line for the same key.
    bad_key = text.split(":", 1)[0]
    lines = [line for line in good.splitlines() if not line.startswith(f"{bad_key}:")]
    path = write(tmp_path, "\n".join(lines) + "\n" + text)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), command, "--config", str(path)],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert time.monotonic() - started < 15
    assert result.stderr.startswith(f"error: {path}: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not state_dir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=1)


def test_a_daemon_reads_its_own_keys_whatever_config_role_it_inherits(tmp_path):
    # run_stack sets CONFIG_ROLE=controller and its children inherit it: `threads` must still
    # mean the worker's threads (here refused as 0), not an unknown controller key.
    path = write(tmp_path, f"internal_key: {KEY}\nthreads: 0\n")
    result = manage("run_worker", "--config", str(path), env={"CONFIG_ROLE": "controller"})
    assert result.returncode == 2
    assert "key 'threads': must be at least 1" in result.stderr


def test_an_unknown_config_role_and_a_config_flag_without_a_file_exit_2(tmp_path):
    result = manage("show_settings", env={"CONFIG_ROLE": "agnet", "SECRET_KEY": TEST_SECRET_KEY})
    assert result.returncode == 2
    assert "CONFIG_ROLE must be one of agent, controller, worker, got 'agnet'" in result.stderr
    for flag in (["--config"], ["--config="]):
        result = manage("show_settings", *flag, env={"SECRET_KEY": TEST_SECRET_KEY})
        assert result.returncode == 2
        assert "error: --config needs a file name" in result.stderr


def test_run_stack_refuses_a_settings_file_and_starts_nothing(tmp_path):
    path = write(tmp_path, f"secret_key: {TEST_SECRET_KEY}\n")
    env = {"VAR_DIR": str(tmp_path / "var"), "DEBUG": "1"}
    result = manage("run_stack", "--config", str(path), env=env)
    assert result.returncode == 2
    assert "run_stack does not take a settings file" in result.stderr
    assert "run_worker --config config/worker-config.yaml" in result.stderr
    assert not (tmp_path / "var" / "controller.sqlite3").exists()


def test_a_password_inside_a_url_counts_as_a_secret_for_the_permission_warning(tmp_path):
    path = write(tmp_path, "database_url: postgres://dcs:db-pass@127.0.0.1:1/dcs\n", mode=0o640)
    result = manage("show_settings", "--config", str(path), env={"SECRET_KEY": TEST_SECRET_KEY})
    assert result.returncode == 0, result.stderr
    assert f"WARNING: {path} holds secrets but is readable by group or others" in result.stderr
    assert "db-pass" not in result.stdout


def test_redis_settings_are_accepted_in_a_file_before_redis_is_turned_on(tmp_path):
    path = write(tmp_path, "cache_key_prefix: other\nnotify_channel: other:changes\n")
    result = manage("show_settings", "--config", str(path), env={"SECRET_KEY": TEST_SECRET_KEY})
    assert result.returncode == 0, result.stderr
    assert effective(result.stdout)["CACHE_KEY_PREFIX"] == ("file", "other")


def test_compose_runs_the_worker_and_the_agent_from_the_mounted_example_files():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, example in (("worker", EXAMPLES["worker"]), ("agent", EXAMPLES["agent"])):
        command = services[service]["command"]
        in_container = command[command.index("--config") + 1]
        mount = f"./{example.relative_to(ROOT)}:{in_container}:ro"
        assert mount in services[service]["volumes"], service


@pytest.mark.parametrize(
    "command",
    [
        "run_controller",
        "run_worker",
        "run_agent",
        "show_settings",
        "seed_admin",
        "create_registration_token",
    ],
)
def test_every_command_lists_config_file_in_its_help(command):
    result = manage(command, "--help", env={"SECRET_KEY": TEST_SECRET_KEY})
    assert result.returncode == 0, result.stderr
    assert "--config FILE" in result.stdout


def test_var_dir_from_a_settings_file_is_used_and_shown(tmp_path):
    state = tmp_path / "state"
    path = write(tmp_path, f"var_dir: {state}\ndebug: true\n")
    result = manage("show_settings", "--config", str(path))
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["VAR_DIR"] == ("file", str(state))
    # With DEBUG on and no SECRET_KEY, the development key is made and kept there.
    assert rows["SECRET_KEY"] == ("var", "********")
    assert (state / "secret_key").exists()


def test_show_settings_names_the_var_dir_of_the_environment(tmp_path):
    result = manage("show_settings", env={"VAR_DIR": str(tmp_path / "v"), "DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["VAR_DIR"] == ("env", str(tmp_path / "v"))
    assert rows["SECRET_KEY"] == ("var", "********")
