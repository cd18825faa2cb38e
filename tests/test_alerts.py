"""The alert rules (deploy/prometheus/alerts.yml): valid, unit-tested by promtool against series
shaped as the controller exposes them, naming only metrics the processes export, and loaded by
the Prometheus of the compose stack."""

import shutil
import subprocess

import yaml

from tests.conftest import unavailable
from tests.support.metrics import ROOT, unexported

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(
        ["promtool", *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_pass_their_unit_tests():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_names_exported_metrics_and_says_what_to_do():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "RolloutHalted",
        "RolloutPausedTooLong",
        "RolloutStuckInWave",
        "AgentsStale",
        "NoWatchesHeld",
        "ControllerDatabaseDown",
        "WebhookDeliveriesFailing",
        "WebhookOutboxBacklog",
    }
    for rule in rules:
        assert not unexported(rule["expr"]), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["labels"]["severity"] == "page"


def test_the_compose_prometheus_loads_the_rules():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
