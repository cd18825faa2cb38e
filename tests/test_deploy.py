"""The deployment files, checked without a Docker engine, and the production settings."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from django.core.management import get_commands

from tests.conftest import unavailable
from tests.support.metrics import unexported
from tests.support.processes import ROOT, Process, base_env, free_port, manage, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCALE_FILE = "docker-compose.scale.yml"
SCALE = yaml.safe_load((ROOT / SCALE_FILE).read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = {
    line.split("=", 1)[0]
    for line in (ROOT / ".env.example").read_text().splitlines()
    if line and not line.startswith("#")
}
PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "pR0d-like-key-9f8e7d6c5b4a3210-ZYXWVUTSRQPONMLKJIHGFEDCBA-qwerty",
    "ALLOWED_HOSTS": "config.example.com",
    "SECURE_SSL_REDIRECT": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_PROXY_SSL_HEADER": "1",
}


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin), else the standalone `docker-compose`; None if neither."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def compose_config_errors(compose: list[str], env_file: Path, files: list[Path]) -> str | None:
    args = [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(
        [*compose, "--env-file", str(env_file), *args, "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return None if result.returncode == 0 else result.stderr


def test_compose_config_is_valid_for_docker_compose_itself(tmp_path):
    compose = compose_command()
    if compose is None:
        # Through unavailable(): with REQUIRE_SERVICES=1 a missing compose fails the run.
        unavailable("neither `docker compose` nor `docker-compose` is installed here")
    env_file = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.scale.yml"]):
        assert compose_config_errors(compose, env_file, [ROOT / name for name in files]) is None
    # The same check refuses a file compose cannot run.
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  a:\n    image: x\n    not_an_option: 1\n")
    assert "not_an_option" in compose_config_errors(compose, env_file, [broken])


def test_compose_services_health_checks_volumes_and_start_order():
    services = COMPOSE["services"]
    assert {"postgres", "redis", "migrate", "controller", "admin-seeder", "worker", "agent"} <= set(
        services
    )
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
        assert services[name]["volumes"]
    for name in ("controller", "worker", "agent"):
        assert services[name]["healthcheck"]["test"], name
    assert "8080:8080" in services["controller"]["ports"]
    assert "8082:8082" in services["worker"]["ports"]
    assert "ports" not in services["agent"]

    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("controller") == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert conditions("agent") == {"controller": "service_healthy", "worker": "service_healthy"}
    assert conditions("admin-seeder") == {"migrate": "service_completed_successfully"}
    assert services["admin-seeder"]["command"] == ["seed_admin"]
    assert services["migrate"]["command"][0] == "migrate"

    agent_env = services["agent"]["environment"]
    assert agent_env["CONTROLLER_URL"] == "http://controller:8080"
    assert agent_env["WORKER_URL"] == "http://worker:8082"
    assert "REGISTRATION_TOKEN" in agent_env and "INTERNAL_KEY" in agent_env
    assert services["worker"]["environment"]["INTERNAL_KEY"] == agent_env["INTERNAL_KEY"]
    assert any(v.endswith(":/app/var/agent") for v in services["agent"]["volumes"])
    for service in ("controller", "migrate"):
        env = services[service]["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgres://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0"
    # The agent and Prometheus reach the controller by its service name.
    assert "controller" in services["controller"]["environment"]["ALLOWED_HOSTS"]


def test_the_scale_example_adds_a_controller_on_the_same_redis_and_database():
    second = SCALE["services"]["controller-2"]
    first = COMPOSE["services"]["controller"]
    assert second["environment"]["REDIS_URL"] == first["environment"]["REDIS_URL"]
    assert second["environment"]["DATABASE_URL"] == first["environment"]["DATABASE_URL"]
    assert second["command"] == first["command"]
    assert second["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(second["depends_on"]) <= set(COMPOSE["services"])


def test_every_variable_the_compose_files_read_is_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text() + (
        ROOT / "docker-compose.scale.yml"
    ).read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))
    assert referenced, "the compose files read their secrets from .env"
    assert referenced <= ENV_EXAMPLE, referenced - ENV_EXAMPLE
    for secret in ("SECRET_KEY", "INTERNAL_KEY", "POSTGRES_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required, not defaulted"


def _manage_commands_referenced() -> set[str]:
    found = set()
    pages = [str(path.relative_to(ROOT)) for path in ROOT.glob("docs/*.md")]
    for name in ("Dockerfile", "Makefile", "README.md", "docker-compose.yml", *pages):
        found |= set(re.findall(r"manage\.py ([a-z_]+)", (ROOT / name).read_text()))
    # Compose and Dockerfile commands are arguments to the image's `python manage.py`.
    for compose in (COMPOSE, SCALE):
        for service in compose["services"].values():
            if "build" in service or service.get("image", "").startswith("distributed-config"):
                found.add(service["command"][0])
    found.add(json.loads(re.search(r"^CMD (.+)$", DOCKERFILE, re.M).group(1))[0])
    return found


def test_every_management_command_the_files_name_exists():
    referenced = _manage_commands_referenced()
    assert {"run_controller", "run_worker", "run_agent", "seed_admin", "migrate"} <= referenced
    assert referenced <= set(get_commands()), referenced - set(get_commands())


def test_dockerfile_one_non_root_image_with_cached_dependencies_static_files_and_healthcheck():
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.M)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    requirements = DOCKERFILE.index("COPY requirements.txt")
    install = DOCKERFILE.index("pip install -r requirements.txt")
    everything = DOCKERFILE.index("COPY . .")
    assert requirements < install < everything
    assert "collectstatic --noinput" in DOCKERFILE[everything:]
    assert re.search(r"^HEALTHCHECK ", DOCKERFILE, re.M)
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M).group(1)) == [
        "python",
        "manage.py",
    ]
    assert json.loads(re.search(r"^CMD (.+)$", DOCKERFILE, re.M).group(1)) == ["run_controller"]
    assert docker_ignores(".env") and docker_ignores(".venv") and docker_ignores("var")


def _dockerignore_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore line as Docker reads it (moby/patternmatcher): relative to the context,
    `*` and `?` stay within one path segment, `**` spans any number of them."""
    parts = []
    rest = pattern.strip("/")
    while rest:
        if rest.startswith("**/"):
            parts.append("(?:.*/)?")
            rest = rest[3:]
        elif rest.startswith("**"):
            parts.append(".*")
            rest = rest[2:]
        elif rest[0] == "*":
            parts.append("[^/]*")
            rest = rest[1:]
        elif rest[0] == "?":
            parts.append("[^/]")
            rest = rest[1:]
        else:
            parts.append(re.escape(rest[0]))
            rest = rest[1:]
    return re.compile("".join(parts) + r"\Z")


def docker_ignores(path: str) -> bool:
    """Whether `docker build` leaves `path` out of the context: the last line matching it, or
    one of its parent directories, decides (a `!` line takes it back in)."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    segments = path.split("/")
    candidates = ["/".join(segments[: n + 1]) for n in range(len(segments))]
    ignored = False
    for line in lines:
        negated = line.startswith("!")
        pattern = _dockerignore_pattern(line.removeprefix("!"))
        if any(pattern.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "config/.env",
        "deploy/.env",
        "deploy/kubernetes/overlays/dev/secrets.env",
        "deploy/kubernetes/overlays/production/secrets.env",
        "var/secret_key",
        ".venv/bin/python",
    ],
)
def test_the_image_leaves_out_every_secrets_file(path):
    # make .env and make k8s-dev-secrets write real secrets next to the sources: `COPY . .`
    # would otherwise bake them into an image anyone who pulls it can read.
    assert docker_ignores(path)


@pytest.mark.parametrize(
    "path",
    [
        "manage.py",
        "requirements.txt",
        "apps/configs/hub.py",
        "config/worker-config.yaml",
        "deploy/kubernetes/overlays/dev/secrets.env.example",
        "templates/403.html",
    ],
)
def test_the_image_keeps_the_sources(path):
    assert not docker_ignores(path)


def test_prometheus_scrapes_every_process_and_the_dashboard_uses_real_metrics():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert {"controller:8080", "worker:8082", "agent:9101"} <= targets
    assert "0.0.0.0:9101" in COMPOSE["services"]["agent"]["command"]
    dashboard = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "distributed-config.json").read_text()
    )
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert not unexported(target["expr"]), f"panel {panel['title']!r}"


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        manage("check", "--deploy", "--fail-level", "WARNING"),
        cwd=ROOT,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = _check_deploy({**PRODUCTION_ENV, "VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stderr


def test_check_deploy_names_what_is_missing_when_the_environment_does_not_set_it(tmp_path):
    result = _check_deploy({"DEBUG": "0", "VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr, check


def test_outbound_timeouts_stay_below_gunicorns(settings):
    assert settings.DATABASE_STATEMENT_TIMEOUT < settings.CONTROLLER_TIMEOUT
    options = settings.DATABASES["default"].get("OPTIONS", {})
    assert options.get("connect_timeout", options.get("timeout", 0)) < settings.CONTROLLER_TIMEOUT
    assert settings.CONTROLLER_GRACEFUL_TIMEOUT < settings.CONTROLLER_TIMEOUT


@pytest.mark.timeout(180)
def test_collected_static_files_are_served_by_whitenoise_with_debug_off(tmp_path):
    static_root = tmp_path / "static"
    env = base_env(
        STATIC_ROOT=str(static_root),
        STATICFILES_MANIFEST="1",
        VAR_DIR=str(tmp_path / "var"),
        DEBUG="0",
    )
    subprocess.run(
        manage("collectstatic", "--noinput", "-v", "0"), cwd=ROOT, env=env, check=True, timeout=120
    )
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    admin_css = manifest["admin/css/base.css"]
    swagger = next(name for name in manifest if name.endswith("swagger-ui-bundle.js"))
    port = free_port()
    controller = Process(
        manage("run_controller", "--bind", f"127.0.0.1:{port}", "--workers", "1"), env, "static"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, timeout=30)
        css = requests.get(f"{url}/static/{admin_css}", timeout=5)
        assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]
        # Hashed names are cached for good; the file itself exists only in STATIC_ROOT.
        assert "immutable" in css.headers.get("Cache-Control", "")
        assert requests.get(f"{url}/static/{manifest[swagger]}", timeout=5).status_code == 200
        docs = requests.get(f"{url}/api/docs/", timeout=5).text
        assert Path(manifest[swagger]).name in docs
    finally:
        controller.stop()
