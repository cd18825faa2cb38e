"""The Kubernetes manifests (deploy/kubernetes/), checked without a cluster.

`kubectl kustomize` renders each overlay, every object is validated against the Kubernetes API
schemas that the kubernetes-validate package ships, and every environment variable a container
is given is checked against the settings its process reads.
"""

import base64
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from protocol.secrets import weakness
from tests.conftest import unavailable
from tests.support.processes import ROOT, base_env, manage

KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
# The oldest Kubernetes the manifests are meant for, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
IMAGE = "distributed-config"
WATCH_HOLD_SECONDS = 60 + 60 / 16  # the longest wait, plus its jitter
# The production Secret is made by the operator, not by the overlay: stand-ins of the right shape.
PRODUCTION_SECRETS = {
    "SECRET_KEY": "stand-in-key-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "INTERNAL_KEY": "stand-in-internal-key-0123456789",
    "DATABASE_URL": "postgres://dcs:password@db.example.com:5432/dcs",
    "REDIS_URL": "redis://mymaster/0",
    "ADMIN_EMAIL": "admin@example.com",
    "ADMIN_PASSWORD": "stand-in-password",
    "REGISTRATION_TOKEN": "stand-in-registration-token",
    # Redis through Sentinel, as the overlay's comment describes.
    "REDIS_SENTINELS": "sentinel-0:26379,sentinel-1:26379,sentinel-2:26379",
    "REDIS_SENTINEL_MASTER": "mymaster",
}
# What each process cannot run without, beyond what the settings themselves refuse to start
# without (the settings are loaded with each container's environment below).
REQUIRED = {
    "run_controller": {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"},
    "run_worker": {"INTERNAL_KEY"},
    "run_agent": {"INTERNAL_KEY", "CONTROLLER_URL", "WORKER_URL", "AGENT_STATE_DIR"},
    "run_jobs": {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"},
    "migrate": {"SECRET_KEY", "DATABASE_URL"},
    "seed_admin": {"SECRET_KEY", "DATABASE_URL", "ADMIN_EMAIL", "ADMIN_PASSWORD"},
}
ROLES = {"run_controller": "controller", "run_worker": "worker", "run_agent": "agent"}


# The keys the dev overlay once shipped in its kustomization.yaml, published with the history.
FORMER_DEV_SECRETS = {
    "SECRET_KEY": "dev-only-not-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
    "INTERNAL_KEY": "dev-only-internal-key-0123456789abcdef",
    "POSTGRES_PASSWORD": "dev-only-postgres",
    "ADMIN_PASSWORD": "dev-only-admin-password-0123",
}
# Kept alive for the test run: the copy of deploy/kubernetes that the overlays are rendered from.
_TREES: list[tempfile.TemporaryDirectory] = []


def write_dev_secrets(tree) -> dict[str, str]:
    """`make k8s-dev-secrets` in a copy of deploy/kubernetes: the same script, the same files."""
    target = tree / "overlays" / "dev" / "secrets.env"
    subprocess.run(
        [sys.executable, "deploy/write_env.py", f"{target}.example", str(target)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return dict(
        line.split("=", 1)
        for line in target.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


@functools.cache
def rendered_tree():
    """A copy of deploy/kubernetes with the dev overlay's secrets.env written, as on a machine
    that ran `make k8s-dev-secrets` (the repository holds no such file)."""
    _TREES.append(tempfile.TemporaryDirectory(prefix="kustomize-"))
    tree = Path(shutil.copytree(KUSTOMIZE, f"{_TREES[-1].name}/kubernetes"))
    (tree / "overlays" / "dev" / "secrets.env").unlink(missing_ok=True)
    write_dev_secrets(tree)
    return tree


def kustomize(path) -> subprocess.CompletedProcess:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    return subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def render(overlay: str) -> list[dict]:
    result = kustomize(rendered_tree() / "overlays" / overlay)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads(overlay: str) -> list[dict]:
    return [
        o for o in render(overlay) if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    ]


def our_containers(overlay: str):
    """(workload, container) for every container running this project's image."""
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["image"].rsplit("/", 1)[-1].split(":")[0] == IMAGE:
                yield workload, container


def command_of(container: dict) -> str:
    """The management command a container runs (its args, or the last one a shell runs)."""
    if container.get("args"):
        return container["args"][0]
    script = container["command"][-1]
    return script.rsplit("manage.py ", 1)[1].split()[0]


def secrets_of(overlay: str) -> dict[str, str]:
    secret = objects(overlay, "Secret").get(_secret_name(overlay))
    if secret is None:
        return PRODUCTION_SECRETS
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def _secret_name(overlay: str) -> str:
    names = [n for n in objects(overlay, "Secret") if n.startswith("distributed-config-secrets")]
    return names[0] if names else "distributed-config-secrets"


def environment(overlay: str, container: dict) -> dict[str, str]:
    """The variables the container is started with, as Kubernetes resolves them."""
    config_maps = objects(overlay, "ConfigMap")
    secrets = secrets_of(overlay)
    env = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets:
                env[item["name"]] = secrets[ref["key"]]
            else:
                assert ref.get("optional"), f"{item['name']}: no key {ref['key']} in the Secret"
    return env


# Reads each environment's settings in one interpreter as the process at hand does at start-up:
# the controller (and migrate, seed_admin) loads controller_site/settings.py afresh; the worker
# and the agent read only their own settings (worker/settings.py, agent/settings.py). The
# error, or the names of the settings it read.
SETTINGS_PROBE = """
import json, os, runpy, sys
from protocol.settings import read_role_settings
import agent.settings, worker.settings
readers = {"worker": worker.settings.read_settings, "agent": agent.settings.read_settings}
results = []
for env in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(env)
    role = env["CONFIG_ROLE"]
    try:
        if role in readers:
            read = read_role_settings(role, readers[role])[1]
        else:
            read = runpy.run_path("controller_site/settings.py")["SETTING_SOURCES"]
        results.append({"read": sorted(read)})
    except Exception as exc:
        results.append({"error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(results))
"""


def settings_read(cases: list[tuple[str, dict[str, str]]]) -> list[dict]:
    """For each (role, environment): {"read": names} or {"error": message}."""
    envs = [
        {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "CONFIG_ROLE": role, **env}
        for role, env in cases
    ]
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE],
        input=json.dumps(envs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [{"read": set(r["read"])} if "read" in r else r for r in json.loads(result.stdout)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay):
    rendered = render(overlay)
    assert len(rendered) > 10
    for version in KUBERNETES_VERSIONS:
        for obj in rendered:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {obj['kind']}/{obj['metadata']['name']} ({version}): {exc}"
                )


def test_a_broken_object_is_refused_by_the_validation():
    deployment = objects("dev", "Deployment")["distributed-config-controller"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    pod_spec(broken)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_read_and_none_required_is_missing(overlay):
    cases = []
    for workload, container in our_containers(overlay):
        command = command_of(container)
        where = f"{overlay}: {workload['metadata']['name']}/{container['name']} ({command})"
        cases.append((where, command, environment(overlay, container)))
    results = settings_read([(ROLES.get(command, "controller"), env) for _, command, env in cases])
    for (where, command, env), result in zip(cases, results, strict=True):
        assert "error" not in result, f"{where}: the settings refuse this environment: {result}"
        assert set(env) <= result["read"], f"{where}: read by nothing: {set(env) - result['read']}"
        assert REQUIRED[command] <= set(env), f"{where}: missing {REQUIRED[command] - set(env)}"
    assert {command for _, command, _ in cases} == set(REQUIRED)


def test_a_variable_nothing_reads_or_a_missing_one_would_be_noticed():
    typo, missing = settings_read(
        [("worker", {"WORKER_TREADS": "4"}), ("controller", {"DEBUG": "0"})]
    )
    assert "WORKER_THREADS" in typo["read"] and "WORKER_TREADS" not in typo["read"]
    assert "SECRET_KEY is required" in missing["error"]


def test_the_agent_state_dir_is_its_volume_and_the_worker_is_beside_it():
    worker = objects("dev", "StatefulSet")["distributed-config-worker"]
    containers = {c["name"]: c for c in pod_spec(worker)["containers"]}
    assert set(containers) == {"worker", "agent"}
    assert containers["worker"]["args"] == ["run_worker"]
    assert containers["agent"]["args"] == ["run_agent"]
    agent_env = environment("dev", containers["agent"])
    mounts = {m["mountPath"]: m["name"] for m in containers["agent"]["volumeMounts"]}
    assert mounts[agent_env["AGENT_STATE_DIR"]] == "agent-state"
    assert [t["metadata"]["name"] for t in worker["spec"]["volumeClaimTemplates"]] == [
        "agent-state"
    ]
    assert agent_env["WORKER_URL"] == "http://127.0.0.1:8082"
    assert agent_env["CONTROLLER_URL"] == "http://distributed-config-controller:8080"
    assert objects("dev", "Service")["distributed-config-controller"]["spec"]["ports"][0][
        "port"
    ] == int(agent_env["CONTROLLER_URL"].rsplit(":", 1)[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_controller_outlives_a_held_watch_and_probes_its_readiness(overlay):
    deployment = objects(overlay, "Deployment")["distributed-config-controller"]
    spec = pod_spec(deployment)
    controller = spec["containers"][0]
    pause = float(controller["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > WATCH_HOLD_SECONDS + pause
    assert controller["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert controller["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The probes' Host header must be one Django accepts, or every probe is a 400.
    allowed = environment(overlay, controller)["ALLOWED_HOSTS"].split(",")
    for probe in ("readinessProbe", "livenessProbe"):
        headers = {h["name"]: h["value"] for h in controller[probe]["httpGet"]["httpHeaders"]}
        assert headers["Host"] in allowed
    assert "distributed-config-controller" in allowed
    # New pods wait for the migrate Job.
    init = spec["initContainers"][0]
    assert "migrate --check" in init["command"][-1]
    assert objects(overlay, "Job")["distributed-config-migrate"]["spec"]["template"]["spec"][
        "containers"
    ][0]["args"] == ["migrate", "--noinput"]
    assert "seed_admin" in command_of(
        pod_spec(objects(overlay, "Job")["distributed-config-seed-admin"])["containers"][0]
    )


def test_two_controllers_a_budget_an_autoscaler_and_an_ingress_that_waits_for_the_watch():
    deployment = objects("production", "Deployment")["distributed-config-controller"]
    assert deployment["spec"]["replicas"] == 2
    hpa = objects("production", "HorizontalPodAutoscaler")["distributed-config-controller"]
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] > 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = objects("production", "PodDisruptionBudget")["distributed-config-controller"]
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ingress = objects("production", "Ingress")["distributed-config-controller"]
    annotations = ingress["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) > WATCH_HOLD_SECONDS
    assert ingress["spec"]["tls"][0]["secretName"]
    images = {c["image"] for _, c in our_containers("production")}
    assert images == {"registry.example.com/distributed-config:1.0.0"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_controllers_run_the_periodic_jobs_unless_their_own_deployment_is_scaled_up(overlay):
    jobs = objects(overlay, "Deployment")["distributed-config-jobs"]
    assert jobs["spec"]["replicas"] == 0
    assert command_of(pod_spec(jobs)["containers"][0]) == "run_jobs"
    controller = pod_spec(objects(overlay, "Deployment")["distributed-config-controller"])
    assert environment(overlay, controller["containers"][0])["CONTROLLER_RUN_JOBS"] == "1"
    # Its pod may reach PostgreSQL and Redis, as the controller's.
    policy = objects(overlay, "NetworkPolicy")["distributed-config-periodic-jobs"]
    ports = {rule["port"] for rule in policy["spec"]["egress"][0]["ports"]}
    assert ports == {5432, 6379, 26379}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_and_sized(overlay):
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where


def test_dev_runs_its_own_postgres_and_redis_and_production_does_not():
    dev = objects("dev", "StatefulSet")
    assert {"postgres", "redis", "distributed-config-worker"} == set(dev)
    secrets = secrets_of("dev")
    assert "@postgres:5432/" in secrets["DATABASE_URL"]
    # Redis asks for a password, which REDIS_URL carries and the readiness probe reads.
    assert secrets["REDIS_URL"] == f"redis://:{secrets['REDIS_PASSWORD']}@redis:6379/0"
    assert len(secrets["REDIS_PASSWORD"]) >= 24
    redis = pod_spec(dev["redis"])["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    passwords = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in redis["env"]}
    assert passwords == {"REDIS_PASSWORD": "REDIS_PASSWORD", "REDISCLI_AUTH": "REDIS_PASSWORD"}
    assert set(objects("production", "StatefulSet")) == {"distributed-config-worker"}
    assert not [n for n in objects("production", "Secret") if "secrets" in n]


# Secrets and proxies -------------------------------------------------------------------------


def test_the_dev_overlay_commits_no_secret_and_takes_fresh_ones_from_its_env_file(tmp_path):
    dev = KUSTOMIZE / "overlays" / "dev"
    generators = yaml.safe_load((dev / "kustomization.yaml").read_text())["secretGenerator"]
    assert [(g["name"], g.get("literals"), g["env"]) for g in generators] == [
        ("distributed-config-secrets", None, "secrets.env")
    ]
    assert "deploy/kubernetes/overlays/dev/secrets.env" in (
        (ROOT / ".gitignore").read_text().splitlines()
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(PYTHON) deploy/write_env.py $@.example $@\n" in makefile
    # Without the generated file there is no Secret to fall back on: the overlay does not render.
    bare = Path(shutil.copytree(KUSTOMIZE, tmp_path / "kubernetes"))
    (bare / "overlays" / "dev" / "secrets.env").unlink(missing_ok=True)
    refused = kustomize(bare / "overlays" / "dev")
    assert refused.returncode != 0 and "secrets.env" in refused.stderr
    # With it, every secret is fresh, strong, and made anew on each machine.
    secrets = secrets_of("dev")
    for name in ("SECRET_KEY", "INTERNAL_KEY"):
        assert weakness(name, secrets[name]) is None, name
    assert len(secrets["ADMIN_PASSWORD"]) >= 24
    assert (
        secrets["DATABASE_URL"]
        == f"postgres://dcs:{secrets['POSTGRES_PASSWORD']}@postgres:5432/dcs"
    )
    assert len(secrets["POSTGRES_PASSWORD"]) >= 24
    for value in secrets.values():
        assert not value.startswith(("dev-only", "change-me")), value
    other = write_dev_secrets(bare)
    for name in (
        "SECRET_KEY",
        "INTERNAL_KEY",
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "ADMIN_PASSWORD",
    ):
        assert other[name] != secrets[name], name


FORMER_STAND_INS = [
    *FORMER_DEV_SECRETS.items(),
    # The Makefile's test key and the benchmarks' key, before each run made its own.
    ("SECRET_KEY", "test-only-not-secret-key-0123456789abcdefghijklmnop"),
    ("SECRET_KEY", "bench-only-not-secret-key-0123456789abcdefghijklmnop"),
    ("INTERNAL_KEY", "dev-only-" + "x" * 40),
]


@pytest.mark.parametrize(("name", "value"), FORMER_STAND_INS)
def test_the_secret_check_refuses_every_dev_only_and_test_only_key(name, value):
    assert "published in this repository" in weakness(name, value)


def test_the_controller_refuses_to_start_with_the_former_dev_overlay_key(tmp_path):
    env = base_env(DEBUG="0", VAR_DIR=str(tmp_path), SECRET_KEY=FORMER_DEV_SECRETS["SECRET_KEY"])
    result = subprocess.run(
        manage("run_controller", "--bind", "127.0.0.1:1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "SECRET_KEY is a value published in this repository" in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_uvicorn_believes_forwarded_headers_only_from_the_pod_network(overlay):
    deployment = objects(overlay, "Deployment")["distributed-config-controller"]
    value = environment(overlay, pod_spec(deployment)["containers"][0])["FORWARDED_ALLOW_IPS"]
    assert "*" not in value
    networks = [ipaddress.ip_network(item.strip()) for item in value.split(",")]
    assert networks and all(n.is_private and n.prefixlen >= 8 for n in networks), value
    if overlay == "production":
        # The overlay's own value, which its comment asks the operator to set to their range.
        assert value == "10.244.0.0/16"


# Network policies ------------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, and matchExpressions with In) picks `labels`."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _peer_matches(peer: dict, other: dict, namespace: str) -> bool:
    if "ipBlock" in peer:
        if "ip" not in other:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other["ip"])
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if "ip" in other:
        return False
    if "namespaceSelector" in peer:
        in_namespace = _selects(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": other["namespace"]}
        )
    else:
        in_namespace = other["namespace"] == namespace
    return in_namespace and _selects(peer.get("podSelector", {}), other.get("labels", {}))


def _allowed(policies: list[dict], pod: dict, other: dict, port: int, direction: str) -> bool:
    """Whether traffic between `pod` (our namespace's) and `other` on TCP or UDP `port` is let
    through in `direction` (Ingress: other to pod; Egress: pod to other), by the NetworkPolicy
    rules (a pod selected by no policy of that direction is open)."""
    namespace = pod["namespace"]
    applying = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"]
        and _selects(p["spec"]["podSelector"], pod["labels"])
    ]
    if not applying:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applying:
        for rule in policy["spec"].get(key, []):
            ports = rule.get("ports")
            if ports is not None and port not in [p["port"] for p in ports]:
                continue
            peers = rule.get(peers_key)
            if peers is None or any(_peer_matches(peer, other, namespace) for peer in peers):
                return True
    return False


def _pod(overlay: str, **labels: str) -> dict:
    namespace = {"dev": "distributed-config-dev", "production": "distributed-config"}[overlay]
    return {
        "namespace": namespace,
        "labels": {"app.kubernetes.io/name": "distributed-config", **labels},
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_through_only_the_listed_paths(overlay):
    policies = list(objects(overlay, "NetworkPolicy").values())
    controller = _pod(overlay, **{"app.kubernetes.io/component": "controller"})
    worker = _pod(overlay, **{"app.kubernetes.io/component": "worker"})
    migrate = _pod(overlay, **{"app.kubernetes.io/component": "migrate"})
    ingress_nginx = {"namespace": "ingress-nginx", "labels": {"app.kubernetes.io/name": "x"}}
    stranger = {"namespace": controller["namespace"], "labels": {"app": "something-else"}}
    elsewhere = {"namespace": "default", "labels": {"app": "something-else"}}
    dns = {"namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    postgres = {
        "namespace": controller["namespace"],
        "labels": {"app.kubernetes.io/name": "postgres"},
    }
    redis = {"namespace": controller["namespace"], "labels": {"app.kubernetes.io/name": "redis"}}

    # Ingress and agents reach the controller; nothing else does, on any port.
    assert _allowed(policies, controller, ingress_nginx, 8080, "Ingress")
    assert _allowed(policies, controller, worker, 8080, "Ingress")
    for intruder in (stranger, elsewhere, migrate):
        assert not _allowed(policies, controller, intruder, 8080, "Ingress"), intruder
    assert not _allowed(policies, controller, ingress_nginx, 9000, "Ingress")
    # The controller reaches PostgreSQL and Redis, and the DNS; not the worker, not the world.
    for port in (5432, 6379):
        assert _allowed(policies, controller, {"ip": "10.1.2.3"}, port, "Egress"), port
    assert _allowed(policies, controller, dns, 53, "Egress")
    assert not _allowed(policies, controller, worker, 8082, "Egress")
    assert not _allowed(policies, controller, {"ip": "203.0.113.5"}, 443, "Egress")
    # The agents reach the controller, the workers public upstreams only.
    assert _allowed(policies, worker, controller, 8080, "Egress")
    assert _allowed(policies, worker, {"ip": "203.0.113.5"}, 443, "Egress")
    assert not _allowed(policies, worker, {"ip": "10.1.2.3"}, 5432, "Egress")
    assert not _allowed(policies, worker, redis, 6379, "Egress")
    # The Jobs reach PostgreSQL only.
    assert _allowed(policies, migrate, {"ip": "10.1.2.3"}, 5432, "Egress")
    assert not _allowed(policies, migrate, controller, 8080, "Egress")
    # Every pod may ask the cluster DNS, and nothing else is open by default.
    for pod in (controller, worker, migrate, stranger):
        assert _allowed(policies, pod, dns, 53, "Egress"), pod
    assert not _allowed(policies, stranger, elsewhere, 80, "Ingress")
    if overlay == "dev":
        # The dev overlay's own PostgreSQL and Redis answer the controller (and the Jobs) only.
        assert _allowed(policies, postgres, controller, 5432, "Ingress")
        assert _allowed(policies, postgres, migrate, 5432, "Ingress")
        assert _allowed(policies, redis, controller, 6379, "Ingress")
        for intruder in (worker, stranger, migrate):
            assert not _allowed(policies, redis, intruder, 6379, "Ingress"), intruder
        assert not _allowed(policies, postgres, worker, 5432, "Ingress")


def test_the_webhooks_egress_component_opens_public_https_to_the_controller_and_jobs_only():
    # An overlay of the operator's: production with the component added.
    overlay = rendered_tree() / "overlays" / "production-with-webhooks"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(
        "resources:\n  - ../production\ncomponents:\n  - ../../components/webhooks-egress\n"
    )
    result = kustomize(overlay)
    assert result.returncode == 0, result.stderr
    policies = [
        doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "NetworkPolicy"
    ]
    controller = _pod("production", **{"app.kubernetes.io/component": "controller"})
    jobs = _pod("production", **{"app.kubernetes.io/component": "periodic-jobs"})
    migrate = _pod("production", **{"app.kubernetes.io/component": "migrate"})
    public, private = {"ip": "203.0.113.5"}, {"ip": "10.1.2.3"}
    for pod in (controller, jobs):
        assert _allowed(policies, pod, public, 443, "Egress"), pod
        assert not _allowed(policies, pod, private, 443, "Egress"), pod
        assert not _allowed(policies, pod, public, 80, "Egress"), pod
    assert not _allowed(policies, migrate, public, 443, "Egress")
    # Without the component, the production overlay keeps the controller off the internet.
    assert not _allowed(
        list(objects("production", "NetworkPolicy").values()), controller, public, 443, "Egress"
    )
