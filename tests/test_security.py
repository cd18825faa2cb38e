"""Hardening that needs no running process: published secrets, deployment files, file modes."""

import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

from apps.ops.stack import internal_key_from
from protocol.secrets import PUBLISHED_SECRETS, weakness
from tests.e2e.security import record_attack
from tests.support.processes import ROOT

SECRET_NAMES = ("SECRET_KEY", "INTERNAL_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD")


def _published_values() -> set[str]:
    """Every value this repository shows for a secret, in the files a deployer copies from."""
    found = set()
    sources = [
        ".env.example",
        "deploy/kubernetes/overlays/dev/secrets.env.example",
        "README.md",
        *map(str, ROOT.glob("docs/*.md")),
        "Dockerfile",
        *map(str, ROOT.glob("config/*.yaml")),
    ]
    for source in sources:
        text = (ROOT / source).read_text()
        for name in SECRET_NAMES:
            pattern = rf"(?:{name}|{name.lower()})\s*[=:]\s*([^\s'\"`$<>]+)"
            found |= {value for value in re.findall(pattern, text) if value != "Admin123!@#"}
    return found


def test_every_secret_value_published_here_is_refused():
    published = _published_values()
    assert "change-me-to-a-long-random-string-of-fifty-characters-or-more" in published
    for value in published:
        assert weakness("SECRET_KEY", value) is not None, value
    assert weakness("SECRET_KEY", "k" * 31) is not None
    assert weakness("SECRET_KEY", "a-fresh-random-value-0123456789abcdef") is None
    assert PUBLISHED_SECRETS


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.scale.yml"])
def test_compose_trusts_forwarded_for_only_from_configured_proxies(file):
    compose = yaml.safe_load((ROOT / file).read_text())
    for service in compose["services"].values():
        value = str((service.get("environment") or {}).get("FORWARDED_ALLOW_IPS", ""))
        assert "*" not in value, value
        assert "NUM_PROXIES" not in (service.get("environment") or {})
    if file == "docker-compose.yml":
        assert compose["x-app"]["environment"]["FORWARDED_ALLOW_IPS"].endswith(":-127.0.0.1}")
    else:
        # The second controller's port is published like the first's: the same trust.
        value = compose["services"]["controller-2"]["environment"]["FORWARDED_ALLOW_IPS"]
        assert value == "${FORWARDED_ALLOW_IPS:-127.0.0.1}"


def test_make_writes_env_with_fresh_secrets_rather_than_copying_placeholders():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\n.env:\n", 1)[1].split("\n\n", 1)[0]
    assert "deploy/write_env.py" in recipe
    assert "cp .env.example" not in makefile


def test_var_dir_database_and_keys_are_private_from_the_start(tmp_path):
    var = tmp_path / "var"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"}
    }
    env.update(DEBUG="1", VAR_DIR=str(var))
    # A permissive umask, as many shells have: the modes must not depend on it.
    result = subprocess.run(
        ["sh", "-c", f"umask 000 && {sys.executable} manage.py migrate --noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for name in ("secret_key", "controller.sqlite3"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
    assert internal_key_from(var) and stat.S_IMODE((var / "internal_key").stat().st_mode) == 0o600
    record_attack(
        "readable-files",
        "var/ 0700; controller.sqlite3, secret_key and internal_key 0600 from creation",
        var=oct(stat.S_IMODE(var.stat().st_mode)),
        database=oct(stat.S_IMODE((var / "controller.sqlite3").stat().st_mode)),
    )
