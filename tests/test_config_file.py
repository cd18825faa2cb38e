"""Settings from a YAML file: precedence, errors that name the file and key, masking."""

import os
import subprocess
import sys

import pytest
import requests

from tests.processes import ROOT, TEST_SECRET_KEY, Process, free_port, wait_until


def manage(*args: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CONFIG_FILE", "CONFIG_ROLE"}
    }
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
    assert result.stdout.splitlines()[0] == f"settings file: {path}"
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
    path = write(tmp_path, f"secret_key: {TEST_SECRET_KEY}\nbind: 127.0.0.1:9200\n")
    result = manage("show_settings", "--config", str(path), env={"CONFIG_ROLE": "worker"})
    assert result.returncode == 0, result.stderr
    rows = effective(result.stdout)
    assert rows["WORKER_BIND"] == ("file", "127.0.0.1:9200")
    assert rows["CONTROLLER_BIND"][0] == "default"


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
        ("allowed_hosts: {a: 1}\n", "key 'allowed_hosts': must be a list of strings"),
        ("log_level: [1, 2\n", "invalid YAML at line 2, column 1"),
        ("- just\n- a list\n", "the file must hold a mapping"),
    ],
)
def test_bad_files_exit_2_naming_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    result = manage("show_settings", "--config", str(path), env={"SECRET_KEY": TEST_SECRET_KEY})
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
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CONFIG_FILE", "CONFIG_ROLE"}
    }
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
